"""Login hardening (issue 22): the rate limit holds under concurrency and is counted before the hash,
the hash is checked outside the SQLite writer lock, unknown users cost the same hash, and a lockout
never keeps the right password out from a new address."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from alignloop.feedback import security
from alignloop.feedback.ratelimit import Attempt, LoginPolicy, LoginRateLimiter

from .conftest import PASSWORD, login, make_users, new_client


def _client_from(c, address: str) -> TestClient:
    other = TestClient(c.app, client=(address, 50000))
    other.factory = c.factory
    return other


class _Hasher:
    """Wraps the (cheap, test) argon2 hasher the app uses, to watch or hold its verifications."""

    def __init__(self, real, on_verify):  # type: ignore[no-untyped-def]
        self.real, self.on_verify = real, on_verify

    def hash(self, password: str) -> str:
        return self.real.hash(password)

    def verify(self, password_hash: str, password: str) -> bool:
        self.on_verify(password)
        return self.real.verify(password_hash, password)


def _counting_verify(monkeypatch, delay: float = 0.0) -> list[str]:
    """Count (and optionally slow down) every argon2 verification the app makes."""
    calls: list[str] = []

    def watch(password: str) -> None:
        calls.append(password)
        time.sleep(delay)

    monkeypatch.setattr(security, "_hasher", _Hasher(security._hasher, watch))
    return calls


def test_parallel_wrong_passwords_are_not_all_checked(sqlite_client, monkeypatch):
    c = sqlite_client
    make_users(c.factory, "ann")
    calls = _counting_verify(monkeypatch, delay=0.3)  # keep all 20 in flight together
    codes: list[int] = []
    clients = [new_client(c) for _ in range(20)]
    for cl in clients:
        cl.get("/login")
    barrier = threading.Barrier(20)

    def guess(cl) -> None:  # type: ignore[no-untyped-def]
        barrier.wait()
        codes.append(cl.post("/login", data={"username": "ann", "password": "wrong-password",
                                             "csrf_token": cl.cookies.get("alignloop_csrf")}).status_code)

    threads = [threading.Thread(target=guess, args=(cl,)) for cl in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(codes) == [401] * 5 + [429] * 15
    assert len(calls) == 5  # counted before the hash: the other 15 were never checked


def test_password_check_holds_no_database_lock(sqlite_client, monkeypatch):
    c = sqlite_client
    make_users(c.factory, "ann", "bob")
    bob = new_client(c)
    assert login(bob, "bob").status_code == 303
    entered, release = threading.Event(), threading.Event()

    def stuck(_password: str) -> None:
        entered.set()
        release.wait(timeout=30)

    monkeypatch.setattr(security, "_hasher", _Hasher(security._hasher, stuck))
    attacker = new_client(c)
    attacker.get("/login")
    guess = threading.Thread(target=lambda: attacker.post("/login", data={
        "username": "ann", "password": "wrong-password", "csrf_token": attacker.cookies.get("alignloop_csrf")}))
    guess.start()
    try:
        assert entered.wait(timeout=10)
        result: list[int] = []
        me = threading.Thread(target=lambda: result.append(bob.get("/api/me").status_code))
        me.start()
        me.join(timeout=10)  # with the hash inside the writer lock this waits until `release`
        assert result == [200], "another user's request waited for a password check"
        # a write by another user does not wait either
        h = {"x-csrf-token": bob.cookies.get("alignloop_csrf")}
        wrote: list[int] = []
        token = threading.Thread(target=lambda: wrote.append(bob.post("/api/tokens", json={}, headers=h).status_code))
        token.start()
        token.join(timeout=10)
        assert wrote == [201]
    finally:
        release.set()
        guess.join(timeout=30)


def test_unknown_and_inactive_users_cost_one_hash_too(sqlite_client, monkeypatch):
    c = sqlite_client
    make_users(c.factory, "ann", "gone")
    from alignloop.feedback import access
    from alignloop.feedback.db import run_tx

    run_tx(c.factory, lambda s: access.set_active(s, access.user_by_name(s, "gone").id, False))
    calls = _counting_verify(monkeypatch)
    for name in ("nobody-here", "gone", "ann"):
        assert login(c, name, "wrong-password").status_code == 401
    assert calls == ["wrong-password"] * 3  # unknown, inactive and real user: one verification each
    assert login(c, "gone").status_code == 401  # a deactivated user's right password does not log in


def test_lockout_is_per_address_and_the_right_password_works_elsewhere(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann")
    home, cafe = _client_from(c, "10.0.0.1"), _client_from(c, "10.0.0.2")
    assert [login(home, "ann", "wrong-password").status_code for _ in range(5)] == [401] * 5
    r = login(home, "ann")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "try again in" in r.text
    assert login(cafe, "ann").status_code == 303  # the owner, from another address


def test_many_addresses_slow_the_account_but_its_browser_gets_in(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann")
    owner = _client_from(c, "10.0.0.9")
    assert login(owner, "ann").status_code == 303  # this browser now holds ann's device cookie
    owner.post("/logout", data={"csrf_token": owner.cookies.get("alignloop_csrf")})
    c.app.state.alignloop.limiter.policy = LoginPolicy(account_slow_after=6, account_delay_max_s=30)
    for i in range(6):  # a distributed guesser: 2 tries from each of 3 addresses
        assert login(_client_from(c, f"10.1.0.{i // 2}"), "ann", "wrong-password").status_code == 401
    assert login(_client_from(c, "10.2.0.1"), "ann").status_code == 429  # a stranger waits, even with it right
    moved = _client_from(c, "10.3.0.1")
    moved.cookies.set("alignloop_device", owner.cookies.get("alignloop_device"))
    assert login(moved, "ann").status_code == 303  # the owner's browser, on a new network, is not locked out


def test_backoff_doubles_and_success_clears_it(sqlite_factory):
    now = [1000.0]
    limiter = LoginRateLimiter(sqlite_factory, LoginPolicy(pair_free=2, pair_backoff_s=10, pair_backoff_max_s=35),
                               clock=lambda: now[0])

    def fail() -> None:
        a = limiter.begin("1.1.1.1", "ann")
        assert isinstance(a, Attempt)
        limiter.finish(a, False)

    fail(), fail()
    assert limiter.begin("1.1.1.1", "ann") == 10
    now[0] += 10.5
    fail()
    assert limiter.begin("1.1.1.1", "ANN") == 20  # the account name is case-insensitive
    now[0] += 21
    fail()
    assert limiter.begin("1.1.1.1", "ann") == 35  # capped
    assert isinstance(limiter.begin("2.2.2.2", "ann"), Attempt)  # another address is not affected
    now[0] += 36
    ok = limiter.begin("1.1.1.1", "ann")
    limiter.finish(ok, True)
    assert isinstance(limiter.begin("1.1.1.1", "ann"), Attempt)


@pytest.mark.parametrize("password", ["wrong-password", PASSWORD])
def test_address_spraying_many_accounts_is_limited(sqlite_client, password):
    c = sqlite_client
    make_users(c.factory, "ann")
    c.app.state.alignloop.limiter.policy = LoginPolicy(address_max=4)
    sprayer = _client_from(c, "10.9.9.9")
    assert [login(sprayer, f"user{i}", "wrong-password").status_code for i in range(4)] == [401] * 4
    assert login(sprayer, "ann", password).status_code == 429
