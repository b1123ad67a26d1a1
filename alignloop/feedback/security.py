"""Passwords, API tokens, sessions, CSRF tokens, login rate limiting, and the stored secret key."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from datetime import timedelta
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from alignloop.feedback.models import ApiToken, AppSetting, LoginSession, User, utcnow

SESSION_COOKIE = "alignloop_session"
CSRF_COOKIE = "alignloop_csrf"
SESSION_LIFETIME = timedelta(days=7)
TOKEN_PREFIX = "alt_"
_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def sha256(text: str) -> str:
    # Tokens and session ids are 256-bit random strings, so a fast hash is enough to store them.
    return hashlib.sha256(text.encode()).hexdigest()


def get_or_create_secret(session: Session) -> str:
    """The signing key: generated once per database and stored there, never a built-in default."""
    row = session.get(AppSetting, "secret_key")
    if row is None:
        row = AppSetting(key="secret_key", value=secrets.token_urlsafe(48))
        session.add(row)
        session.flush()
    return row.value


def create_api_token(session: Session, user: User, name: str = "cli") -> str:
    """Return the plain token once; only its hash is stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, name=name[:64], token_hash=sha256(token)))
    session.flush()
    return token


def user_for_token(session: Session, token: str) -> User | None:
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == sha256(token)))
    if row is None:
        return None
    user = session.get(User, row.user_id)
    return user if user is not None and user.active else None


class Signer:
    """Signs session ids and CSRF nonces with the stored secret (itsdangerous)."""

    def __init__(self, secret: str):
        self._sessions = URLSafeTimedSerializer(secret, salt="alignloop-session")
        self._csrf = URLSafeTimedSerializer(secret, salt="alignloop-csrf")

    def sign_session(self, session_id: str) -> str:
        return self._sessions.dumps(session_id)

    def unsign_session(self, cookie: str) -> str | None:
        try:
            return self._sessions.loads(cookie, max_age=int(SESSION_LIFETIME.total_seconds()))
        except BadSignature:
            return None

    def new_csrf(self) -> str:
        return self._csrf.dumps(secrets.token_urlsafe(16))

    def csrf_ok(self, cookie: str | None, submitted: str | None) -> bool:
        """Signed double-submit: the form/header copy must equal the cookie, and be ours."""
        if not cookie or not submitted or not hmac.compare_digest(cookie, submitted):
            return False
        try:
            self._csrf.loads(cookie)
        except BadSignature:
            return False
        return True


def open_session(session: Session, user: User) -> str:
    session_id = secrets.token_urlsafe(32)
    session.add(
        LoginSession(user_id=user.id, session_hash=sha256(session_id), expires_at=utcnow() + SESSION_LIFETIME)
    )
    session.flush()
    return session_id


def user_for_session(session: Session, session_id: str) -> User | None:
    row = session.scalar(select(LoginSession).where(LoginSession.session_hash == sha256(session_id)))
    if row is None or row.expires_at < utcnow():
        return None
    user = session.get(User, row.user_id)
    return user if user is not None and user.active else None


def close_session(session: Session, session_id: str) -> None:
    session.execute(delete(LoginSession).where(LoginSession.session_hash == sha256(session_id)))


class LoginRateLimiter:
    """At most ``max_failures`` failed logins per key (client address, and username) per window."""

    def __init__(self, max_failures: int = 5, window_s: float = 60.0):
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures[key]
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(len(self._recent(k, now)) >= self.max_failures for k in keys)

    def record_failure(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for k in keys:
                self._recent(k, now).append(now)


def safe_path(base_dir: str | Path, name: str) -> Path:
    """``base_dir/name``, refusing any name that would land outside ``base_dir``."""
    base = Path(base_dir).resolve()
    if not name or "\x00" in name or Path(name).is_absolute():
        raise ValueError(f"invalid file name {name!r}")
    target = (base / name).resolve()
    if target == base or not target.is_relative_to(base):
        raise ValueError(f"file name {name!r} escapes {base}")
    return target
