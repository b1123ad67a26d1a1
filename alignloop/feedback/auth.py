"""Password checks done right: rate limited before the hash, hashed outside every database lock, and
the same work for a known and an unknown user. Shared by the pages and the JSON API.

Argon2 is slow on purpose (about 0.2 s of CPU and 64 MiB a check at its default cost). Every check and every
new hash runs in one small pool of ``HASH_WORKERS`` threads, half the CPU cores (at least one), at a lower CPU
priority (nice +``HASH_NICE`` for those threads only, on Linux): a burst of logins then queues there instead of
taking every core and every request thread of the server, and other users' requests (``/api/me``, labels) are
scheduled first, so they keep their latency. A login waits in that queue without holding a request thread.
Its database steps (the throttle's reservation and outcome, reading the hash) run in a second small pool of
``LOGIN_WORKERS`` threads at normal priority (they take the SQLite writer lock, which must never wait for a
low-priority thread), so a storm of thousands of logins keeps at most a handful of threads busy."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from fastapi import HTTPException, Request
from sqlalchemy import select

from alignloop.errors import AlignloopError
from alignloop.feedback import access, security
from alignloop.feedback.models import User
from alignloop.feedback.ratelimit import Attempt
from alignloop.feedback.security import DEVICE_COOKIE, check_new_password, hash_password, open_session
from alignloop.feedback.store import check_new_user, create_user
from alignloop.feedback.web import AppState, session_id

HASH_WORKERS = max(1, (os.cpu_count() or 1) // 2)
HASH_NICE = 10  # argon2's own lane threads inherit it


def _lower_priority() -> None:
    """Runs in each hash-pool thread: on Linux, nice applies to the calling thread alone."""
    if sys.platform == "linux":
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICE)
        except OSError:  # not allowed here: hash at normal priority
            pass


_hash_pool = ThreadPoolExecutor(max_workers=HASH_WORKERS, thread_name_prefix="alignloop-argon2",
                                initializer=_lower_priority)
LOGIN_WORKERS = 2
_login_pool = ThreadPoolExecutor(max_workers=LOGIN_WORKERS, thread_name_prefix="alignloop-login")
T = TypeVar("T")


def hashed(fn: Callable[..., T], *args) -> T:  # type: ignore[no-untyped-def]
    """Run an argon2 operation in the hash pool (from a request thread or the CLI), waiting for it."""
    return _hash_pool.submit(fn, *args).result()


async def hashed_async(fn: Callable[..., T], *args) -> T:  # type: ignore[no-untyped-def]
    """The same from the event loop: the caller waits without holding a request thread."""
    return await asyncio.get_running_loop().run_in_executor(_hash_pool, fn, *args)


async def _login_step(fn: Callable[..., T], *args) -> T:  # type: ignore[no-untyped-def]
    return await asyncio.get_running_loop().run_in_executor(_login_pool, fn, *args)


@dataclass
class LoginResult:
    session_id: str | None = None
    retry_after: int | None = None  # set when rate limited (nothing was checked)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _throttled(st: AppState, request: Request, username: str) -> Attempt | int:
    trusted = st.signer.device_is(request.cookies.get(DEVICE_COOKIE), username)
    return st.limiter.begin(client_address(request), username, trusted)


async def login(st: AppState, request: Request, username: str, password: str) -> LoginResult:
    """Count the attempt first (a short write), read the hash without any lock, verify it in the hash
    pool with no transaction open (a dummy hash for unknown or inactive users), and only then open the
    session in a short write."""
    username = username.strip()
    attempt = await _login_step(_throttled, st, request, username)
    if not isinstance(attempt, Attempt):
        return LoginResult(retry_after=int(attempt))
    ok = False
    try:
        row = await _login_step(st.read, lambda s: s.execute(
            select(User.id, User.password_hash, User.active).where(User.username == username)).first())
        known_hash = row.password_hash if row is not None and row.active else None
        ok = await hashed_async(security.check_login_password, known_hash, password)
        if not ok:
            return LoginResult()

        def start(s) -> str | None:  # type: ignore[no-untyped-def]
            user = s.get(User, row.id)
            if user is None or not user.active or user.password_hash != known_hash:
                return None  # deactivated or re-keyed while we were hashing
            return open_session(s, user, client_address(request))

        sid = await _login_step(st.tx, start)
        ok = sid is not None
        return LoginResult(session_id=sid)
    finally:  # if the client went away and this is cancelled, the reservation later counts as a failure
        await _login_step(st.limiter.finish, attempt, ok)


def change_own_password(st: AppState, request: Request, user: User, current: str, new: str) -> None:
    """Check the current password (rate limited like a login), then store the new one and end every
    other session of the user; the caller's own session stays."""
    attempt = _throttled(st, request, user.username)
    if not isinstance(attempt, Attempt):
        raise HTTPException(429, f"too many wrong passwords; try again in {int(attempt)} s",
                            headers={"Retry-After": str(int(attempt))})
    ok = False
    try:
        old_hash = st.read(lambda s: access.get_user(s, user.id).password_hash)
        ok = hashed(security.check_login_password, old_hash, current)
        if not ok:
            raise HTTPException(403, "the current password is wrong")
    finally:
        st.limiter.finish(attempt, ok)
    check_new_password(new)
    if new == current:
        raise AlignloopError("password: the new password must differ from the current one")
    new_hash = hashed(hash_password, new)
    st.tx(lambda s: access.set_password_hash(s, user.id, new_hash, must_change=False,
                                             keep_session_id=session_id(request), expected_old_hash=old_hash))


def admin_set_password(st: AppState, user_id: int, password: str, must_change: bool = True) -> User:
    """An admin sets (resets) a password: every session of the user ends and, when the user must
    change it at the next login, their API tokens are revoked too."""
    check_new_password(password)
    new_hash = hashed(hash_password, password)
    return st.tx(lambda s: access.set_password_hash(s, user_id, new_hash, must_change=must_change))


def new_user(st: AppState, username: str, password: str, role: str) -> User:
    check_new_user(username, password, role)
    password_hash = hashed(hash_password, password)  # outside the transaction
    return st.tx(lambda s: create_user(s, username, password, role, password_hash=password_hash))
