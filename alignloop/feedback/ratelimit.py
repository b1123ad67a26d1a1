"""Login throttling that holds under concurrency and cannot lock the real user out from everywhere.

Every attempt is counted *before* its password is checked: ``begin`` reserves a slot under a lock (a
reservation counts as a failure until ``finish`` says otherwise), so 20 parallel guesses cannot all
slip past a limit of 5. Three counters, each over a sliding window:

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

The state is in memory, per server process (``alignloop annotate serve`` runs one).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field


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
class _Counter:
    failures: deque[float] = field(default_factory=deque)
    in_flight: int = 0
    last_attempt: float = 0.0

    def recent(self, now: float, window_s: float) -> int:
        while self.failures and now - self.failures[0] > window_s:
            self.failures.popleft()
        return len(self.failures)


@dataclass
class Attempt:
    keys: tuple[str, ...]


class LoginRateLimiter:
    def __init__(self, policy: LoginPolicy | None = None, clock=time.monotonic):  # type: ignore[no-untyped-def]
        self.policy = policy or LoginPolicy()
        self._clock = clock
        self._counters: dict[str, _Counter] = {}
        self._lock = threading.Lock()
        self._calls = 0

    def _get(self, key: str) -> _Counter:
        c = self._counters.get(key)
        if c is None:
            c = self._counters[key] = _Counter()
        return c

    def begin(self, address: str, account: str, trusted_device: bool = False) -> Attempt | float:
        """Reserve an attempt, or return the seconds to wait (> 0) when a limit holds."""
        p = self.policy
        account = account.strip().lower()[:64]
        keys = (f"ip:{address}", f"pair:{account}|{address}", f"user:{account}")
        now = self._clock()
        with self._lock:
            self._prune(now)
            ip, pair, user = (self._get(k) for k in keys)
            waits = []
            n_ip = ip.recent(now, p.window_s) + ip.in_flight
            if n_ip >= p.address_max:
                waits.append(ip.failures[0] + p.window_s - now if ip.failures else 1.0)
            n_pair = pair.recent(now, p.window_s)
            if n_pair + pair.in_flight >= p.pair_free:
                if pair.in_flight:
                    waits.append(1.0)
                else:
                    backoff = min(p.pair_backoff_max_s, p.pair_backoff_s * 2 ** (n_pair - p.pair_free))
                    waits.append(pair.failures[-1] + backoff - now)
            n_user = user.recent(now, p.window_s)
            if not trusted_device and n_user >= p.account_slow_after:
                if user.in_flight:
                    waits.append(1.0)
                else:
                    delay = min(p.account_delay_max_s, 1.0 + n_user - p.account_slow_after)
                    waits.append(user.last_attempt + delay - now)
            wait = max(waits, default=0.0)
            if wait > 0:
                return math.ceil(wait)
            for c in (ip, pair, user):
                c.in_flight += 1
            user.last_attempt = now
            return Attempt(keys)

    def finish(self, attempt: Attempt, success: bool) -> None:
        now = self._clock()
        with self._lock:
            ip, pair, user = (self._get(k) for k in attempt.keys)
            for c in (ip, pair, user):
                c.in_flight = max(0, c.in_flight - 1)
                if not success:
                    c.failures.append(now)
            if success:
                pair.failures.clear()

    def _prune(self, now: float) -> None:
        """Forget idle keys now and then, so guessed usernames do not pile up in memory."""
        self._calls += 1
        if self._calls % 1000:
            return
        idle = [k for k, c in self._counters.items()
                if not c.in_flight and not c.recent(now, self.policy.window_s)
                and now - c.last_attempt > self.policy.window_s]
        for k in idle:
            del self._counters[k]
