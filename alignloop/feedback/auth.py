"""Password checks done right: rate limited before the hash, hashed outside every database lock, and
the same work for a known and an unknown user. Shared by the pages and the JSON API."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException, Request
from sqlalchemy import select

from alignloop.errors import AlignloopError
from alignloop.feedback import access, security
from alignloop.feedback.models import User
from alignloop.feedback.ratelimit import Attempt
from alignloop.feedback.security import DEVICE_COOKIE, check_new_password, hash_password, open_session
from alignloop.feedback.store import check_new_user, create_user
from alignloop.feedback.web import AppState, session_id


@dataclass
class LoginResult:
    session_id: str | None = None
    retry_after: int | None = None  # set when rate limited (nothing was checked)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _throttled(st: AppState, request: Request, username: str) -> Attempt | int:
    trusted = st.signer.device_is(request.cookies.get(DEVICE_COOKIE), username)
    return st.limiter.begin(client_address(request), username, trusted)


def login(st: AppState, request: Request, username: str, password: str) -> LoginResult:
    """Count the attempt first, read the hash without any lock, verify it with no transaction open
    (a dummy hash for unknown or inactive users), and only then open the session in a short write."""
    username = username.strip()
    attempt = _throttled(st, request, username)
    if not isinstance(attempt, Attempt):
        return LoginResult(retry_after=int(attempt))
    ok = False
    try:
        row = st.read(lambda s: s.execute(select(User.id, User.password_hash, User.active)
                                          .where(User.username == username)).first())
        known_hash = row.password_hash if row is not None and row.active else None
        ok = security.check_login_password(known_hash, password)
        if not ok:
            return LoginResult()

        def start(s) -> str | None:  # type: ignore[no-untyped-def]
            user = s.get(User, row.id)
            if user is None or not user.active or user.password_hash != known_hash:
                return None  # deactivated or re-keyed while we were hashing
            return open_session(s, user, client_address(request))

        sid = st.tx(start)
        ok = sid is not None
        return LoginResult(session_id=sid)
    finally:
        st.limiter.finish(attempt, ok)


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
        ok = security.check_login_password(old_hash, current)
        if not ok:
            raise HTTPException(403, "the current password is wrong")
    finally:
        st.limiter.finish(attempt, ok)
    check_new_password(new)
    if new == current:
        raise AlignloopError("password: the new password must differ from the current one")
    new_hash = hash_password(new)
    st.tx(lambda s: access.set_password_hash(s, user.id, new_hash, must_change=False,
                                             keep_session_id=session_id(request), expected_old_hash=old_hash))


def admin_set_password(st: AppState, user_id: int, password: str, must_change: bool = True) -> User:
    """An admin sets (resets) a password: every session of the user ends and, when the user must
    change it at the next login, their API tokens are revoked too."""
    check_new_password(password)
    new_hash = hash_password(password)
    return st.tx(lambda s: access.set_password_hash(s, user_id, new_hash, must_change=must_change))


def new_user(st: AppState, username: str, password: str, role: str) -> User:
    check_new_user(username, password, role)
    password_hash = hash_password(password)  # outside the transaction
    return st.tx(lambda s: create_user(s, username, password, role, password_hash=password_hash))
