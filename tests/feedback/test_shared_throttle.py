"""The login throttle holds across server processes (issue 22): its counters live in the database, so two
app instances on one database share them, and a reservation is counted before the password hash."""

from __future__ import annotations

import threading

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from alignloop.feedback.app import create_app
from alignloop.feedback.models import LoginAttempt
from alignloop.feedback.ratelimit import PENDING_TTL_S, Attempt, LoginPolicy, LoginRateLimiter

from .conftest import PASSWORD, login, make_users
from .test_load import free_port, start_server
from .test_login_limits import _counting_verify


def _guess_in_parallel(clients, password: str = "wrong-password") -> list[int]:
    codes: list[int] = []
    barrier = threading.Barrier(len(clients))

    def guess(cl) -> None:  # type: ignore[no-untyped-def]
        barrier.wait()
        codes.append(cl.post("/login", data={"username": "ann", "password": password,
                                             "csrf_token": cl.cookies.get("alignloop_csrf")}).status_code)

    threads = [threading.Thread(target=guess, args=(cl,)) for cl in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return sorted(codes)


def test_two_app_instances_share_the_limit(db_url, factory, tmp_path, monkeypatch):
    make_users(factory, "ann")
    apps = [create_app(db_url, data_dir=tmp_path / "data") for _ in range(2)]
    assert apps[0].state.alignloop.limiter is not apps[1].state.alignloop.limiter
    calls = _counting_verify(monkeypatch, delay=0.3)  # keep the guesses in flight together
    try:
        clients = [TestClient(apps[i % 2]) for i in range(20)]
        for cl in clients:
            cl.get("/login")
        # one address, one account, 20 guesses split over both instances: 5 in all are checked, not 5 each
        assert _guess_in_parallel(clients) == [401] * 5 + [429] * 15
        assert len(calls) == 5
        # the backoff earned on one instance holds on the other, for the right password too
        r = login(clients[1], "ann")
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 1
    finally:
        for app in apps:
            app.state.alignloop.engine.dispose()


def test_a_success_ends_the_backoff_on_every_instance(sqlite_factory):
    now = [5000.0]
    policy = LoginPolicy(pair_free=1, pair_backoff_s=10)
    one, two = (LoginRateLimiter(sqlite_factory, policy, clock=lambda: now[0]) for _ in range(2))
    one.finish(one.begin("1.1.1.1", "ann"), False)
    assert two.begin("1.1.1.1", "ann") == 10  # counted by the other instance
    assert isinstance(two.begin("2.2.2.2", "ann"), Attempt)  # another address is not held back
    now[0] += 11
    two.finish(two.begin("1.1.1.1", "ann"), True)
    assert isinstance(one.begin("1.1.1.1", "ann"), Attempt)


def test_a_reservation_left_by_a_dead_process_counts_as_a_failure(sqlite_factory):
    now = [100.0]
    limiter = LoginRateLimiter(sqlite_factory, LoginPolicy(pair_free=2, pair_backoff_s=300), clock=lambda: now[0])
    assert isinstance(limiter.begin("1.1.1.1", "ann"), Attempt)
    assert isinstance(limiter.begin("1.1.1.1", "ann"), Attempt)  # neither ever finishes (the process died)
    assert limiter.begin("1.1.1.1", "ann") == 1  # both in flight: wait a moment
    now[0] += PENDING_TTL_S + 1
    # past the reservation lifetime both count as failures at their start: a 300 s backoff from t=100
    assert limiter.begin("1.1.1.1", "ann") == 100 + 300 - now[0]
    now[0] = 401
    assert isinstance(limiter.begin("1.1.1.1", "ann"), Attempt)


def test_old_attempts_are_pruned(sqlite_factory):
    now = [0.0]
    limiter = LoginRateLimiter(sqlite_factory, LoginPolicy(window_s=60), clock=lambda: now[0])
    for i in range(10):
        limiter.finish(limiter.begin(f"10.0.0.{i}", f"user{i}"), False)
    now[0] += 60 + PENDING_TTL_S + 61
    limiter.finish(limiter.begin("10.0.0.99", "someone"), False)
    with sqlite_factory() as s:
        assert s.scalar(select(func.count()).select_from(LoginAttempt)) == 1


@pytest.mark.slow
def test_two_server_processes_share_the_limit(db_url, factory, tmp_path):
    """Two `alignloop annotate serve` processes on one database (production argon2): 20 parallel guesses
    at one account from one address, 10 to each process, are checked 5 times in all."""
    make_users(factory, "ann")
    ports = [free_port(), free_port()]
    procs = [start_server(db_url, port, tmp_path / f"server{port}.log") for port in ports]
    try:
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{ports[i % 2]}", timeout=120) for i in range(20)]
        for cl in clients:
            cl.get("/login")
        assert _guess_in_parallel(clients) == [401] * 5 + [429] * 15
        r = clients[1].post("/login", data={"username": "ann", "password": PASSWORD,
                                            "csrf_token": clients[1].cookies.get("alignloop_csrf")})
        assert r.status_code == 429  # the backoff earned on the first process holds on the second
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
