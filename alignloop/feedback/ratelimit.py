"""Login throttling that holds under concurrency and across server processes, and cannot lock the real user
out from everywhere.

Every attempt is counted *before* its password is checked: ``begin`` decides and records the attempt in one
short write transaction (a reservation counts as a failure until ``finish`` says otherwise), so 20 parallel
guesses cannot all slip past a limit of 5. Three counters, each over a sliding window:

* **address + account** (one client guessing one account): ``pair_free`` failures are free, then each
  further attempt waits a backoff that doubles (``pair_backoff_s`` … ``pair_backoff_max_s``). This is
  the counter a typing user meets; a success clears it.
* **address** (one client spraying many accounts): ``address_max`` failures, then 429 until the
  window moves on.
* **account** (many addresses guessing one account): past ``account_slow_after`` failures, attempts on
  the account are serialised and spaced by a delay that grows by a second per further failure (at
  most ``account_delay_max_s``). A browser that has logged in to the account before (it carries the
  signed device cookie) is exempt, so a distributed attack slows the account down but does not lock
  its owner out; the right password from a new address still works while the counters above allow it.

The counters are rows of ``login_attempts`` in the app's own database, so every server process on the same
database (several ``serve`` processes behind one proxy, a restart) counts the same attempts. ``begin`` is
serialised across processes: by SQLite's ``BEGIN IMMEDIATE`` writer lock, and on PostgreSQL by a
transaction-scoped advisory lock. Both are held for a few milliseconds, never across the password hash.
A reservation whose process died before ``finish`` counts as a failure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from alignloop.feedback.db import run_tx
from alignloop.feedback.models import LoginAttempt

PENDING_TTL_S = 120.0  # a reservation older than this was left by a process that died: a failure
PRUNE_EVERY_S = 60.0
ADVISORY_LOCK_KEY = 0x616C6F67  # "alog": serialises begin() across PostgreSQL connections


@dataclass
class LoginPolicy:
    window_s: float = 900.0
    pair_free: int = 5
    pair_backoff_s: float = 60.0
    pair_backoff_max_s: float = 900.0
    address_max: int = 30
    account_slow_after: int = 50
    account_delay_max_s: float = 30.0


@dataclass
class Attempt:
    id: int
    address: str
    account: str


@dataclass
class Counter:
    """One key's recent attempts: failure times (oldest first), reservations in flight, last attempt start."""

    failures: list[float]
    in_flight: int
    last_attempt: float


FAILED = ("failed", "cleared")  # cleared: a failure the owner's later success forgave on its address+account


def count(rows: list[tuple[str, float, float | None]], now: float, window_s: float,
          failed: tuple[str, ...] = FAILED) -> Counter:
    """``rows``: (state, started_at, finished_at) of one key's attempts; ``failed``: the states that count."""
    failures, in_flight, last = [], 0, 0.0
    for state, started, finished in rows:
        last = max(last, started)
        if state == "pending" and now - started <= PENDING_TTL_S:
            in_flight += 1
        elif state in failed or state == "pending":
            at = finished if state != "pending" and finished is not None else started
            if now - at <= window_s:
                failures.append(at)
    return Counter(sorted(failures), in_flight, last)


def wait_seconds(p: LoginPolicy, now: float, ip: Counter, pair: Counter, user: Counter, trusted: bool) -> float:
    """How long this attempt must wait (<= 0: it may go ahead)."""
    waits = []
    if len(ip.failures) + ip.in_flight >= p.address_max:
        waits.append(ip.failures[0] + p.window_s - now if ip.failures else 1.0)
    n_pair = len(pair.failures)
    if n_pair + pair.in_flight >= p.pair_free:
        if pair.in_flight:
            waits.append(1.0)
        else:
            backoff = min(p.pair_backoff_max_s, p.pair_backoff_s * 2 ** (n_pair - p.pair_free))
            waits.append(pair.failures[-1] + backoff - now)
    n_user = len(user.failures)
    if not trusted and n_user >= p.account_slow_after:
        if user.in_flight:
            waits.append(1.0)
        else:
            delay = min(p.account_delay_max_s, 1.0 + n_user - p.account_slow_after)
            waits.append(user.last_attempt + delay - now)
    return max(waits, default=0.0)


class LoginRateLimiter:
    def __init__(self, factory: sessionmaker[Session], policy: LoginPolicy | None = None,
                 clock: Callable[[], float] = time.time):
        self.factory = factory
        self.policy = policy or LoginPolicy()
        self._clock = clock  # wall time: it is compared across processes
        self._last_prune = -math.inf

    def begin(self, address: str, account: str, trusted_device: bool = False) -> Attempt | int:
        """Reserve an attempt, or return the seconds to wait (> 0) when a limit holds."""
        address, account = address[:64], account.strip().lower()[:64]

        def reserve(s: Session) -> Attempt | int:
            now = self._clock()  # read under the lock, so reservations are in commit order
            if s.get_bind().dialect.name == "postgresql":
                s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
            if now - self._last_prune > PRUNE_EVERY_S:
                s.execute(delete(LoginAttempt).where(
                    LoginAttempt.started_at < now - self.policy.window_s - PENDING_TTL_S))
                self._last_prune = now
            rows = s.execute(select(LoginAttempt.address, LoginAttempt.account, LoginAttempt.state,
                                    LoginAttempt.started_at, LoginAttempt.finished_at)
                             .where(or_(LoginAttempt.address == address, LoginAttempt.account == account),
                                    LoginAttempt.started_at > now - self.policy.window_s - PENDING_TTL_S)).all()
            w = self.policy.window_s
            ip = count([(r.state, r.started_at, r.finished_at) for r in rows if r.address == address], now, w)
            pair = count([(r.state, r.started_at, r.finished_at) for r in rows
                          if r.address == address and r.account == account], now, w, failed=("failed",))
            user = count([(r.state, r.started_at, r.finished_at) for r in rows if r.account == account], now, w)
            wait = wait_seconds(self.policy, now, ip, pair, user, trusted_device)
            if wait > 0:
                return math.ceil(wait)
            row = LoginAttempt(address=address, account=account, started_at=now, state="pending")
            s.add(row)
            s.flush()
            return Attempt(row.id, address, account)

        return run_tx(self.factory, reserve)

    def finish(self, attempt: Attempt, success: bool) -> None:
        now = self._clock()

        def record(s: Session) -> None:
            s.execute(update(LoginAttempt).where(LoginAttempt.id == attempt.id)
                      .values(state="ok" if success else "failed", finished_at=now))
            if success:  # the owner got in from here: this address's backoff on the account ends (the
                # failures still count against the address and the account)
                s.execute(update(LoginAttempt).where(LoginAttempt.address == attempt.address,
                                                     LoginAttempt.account == attempt.account,
                                                     LoginAttempt.state == "failed").values(state="cleared"))

        run_tx(self.factory, record)
