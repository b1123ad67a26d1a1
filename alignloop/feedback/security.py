"""Passwords, API tokens (scoped, expiring), sessions, session-bound CSRF tokens, and the stored secret key."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from datetime import timedelta
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from alignloop.errors import AlignloopError
from alignloop.feedback.models import TOKEN_SCOPES, ApiToken, AppSetting, LoginSession, User, utcnow

SESSION_COOKIE = "alignloop_session"
CSRF_COOKIE = "alignloop_csrf"
DEVICE_COOKIE = "alignloop_device"  # "this browser has logged in as X before" (see ratelimit.py)
SESSION_LIFETIME = timedelta(days=7)
DEVICE_LIFETIME = timedelta(days=180)
TOKEN_PREFIX = "alt_"
DEFAULT_TOKEN_DAYS = 30
MAX_TOKEN_DAYS = 365
MIN_PASSWORD_CHARS = 8
PRIVATE_DIR_MODE = 0o700  # uploads and exports hold prompts, responses and labels: owner only
PRIVATE_FILE_MODE = 0o600
MAX_PASSWORD_CHARS = 1024  # argon2 hashes any length; a cap keeps a 2 MB "password" from being hashed
_hasher = PasswordHasher()
_dummy: dict[int, str] = {}  # id(hasher) -> the hash of a random password, made once


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def check_login_password(password_hash: str | None, password: str) -> bool:
    """Verify ``password``; for an unknown or inactive user (``None``) verify it against a dummy hash
    made with the same parameters, so both cases cost one argon2 verification and timing tells nothing."""
    if password_hash is None:
        dummy = _dummy.get(id(_hasher))
        if dummy is None:
            dummy = _dummy.setdefault(id(_hasher), _hasher.hash(secrets.token_urlsafe(16)))
        verify_password(dummy, password)
        return False
    return verify_password(password_hash, password)


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise AlignloopError(f"password: must be at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise AlignloopError(f"password: must be at most {MAX_PASSWORD_CHARS} characters")


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


def create_api_token(session: Session, user: User, name: str = "cli", scope: str | None = None,
                     days: int = DEFAULT_TOKEN_DAYS) -> str:
    """Return the plain token once; only its hash is stored. ``scope`` is "annotate" (annotation routes
    only) or "admin" (everything the user's role allows; admins only); by default the user's role."""
    scope = scope or ("admin" if user.role == "admin" else "annotate")
    if scope not in TOKEN_SCOPES:
        raise AlignloopError(f"scope: must be one of {', '.join(TOKEN_SCOPES)}")
    if scope == "admin" and user.role != "admin":
        raise AlignloopError("scope: only admins can hold admin tokens")
    if not 1 <= days <= MAX_TOKEN_DAYS:
        raise AlignloopError(f"days: a token lives 1 to {MAX_TOKEN_DAYS} days")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, name=name[:64], token_hash=sha256(token), scope=scope,
                         expires_at=utcnow() + timedelta(days=days)))
    session.flush()
    return token


def token_auth(session: Session, token: str) -> tuple[User, str] | None:
    """``(user, scope)`` for a valid token of an active user; expired tokens are refused."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == sha256(token)))
    if row is None or row.expires_at is None or row.expires_at < utcnow():
        return None
    user = session.get(User, row.user_id)
    return (user, row.scope) if user is not None and user.active else None


def user_for_token(session: Session, token: str) -> User | None:
    found = token_auth(session, token)
    return found[0] if found else None


def _csrf_binding(session_id: str | None) -> str:
    return sha256("csrf:" + session_id)[:32] if session_id else "anonymous"


class Signer:
    """Signs session ids, CSRF tokens and device cookies with the stored secret (itsdangerous)."""

    def __init__(self, secret: str):
        self._sessions = URLSafeTimedSerializer(secret, salt="alignloop-session")
        self._csrf = URLSafeTimedSerializer(secret, salt="alignloop-csrf")
        self._devices = URLSafeTimedSerializer(secret, salt="alignloop-device")

    def sign_session(self, session_id: str) -> str:
        return self._sessions.dumps(session_id)

    def unsign_session(self, cookie: str) -> str | None:
        try:
            return self._sessions.loads(cookie, max_age=int(SESSION_LIFETIME.total_seconds()))
        except BadSignature:
            return None

    def new_csrf(self, session_id: str | None) -> str:
        """A CSRF token bound to the browser's session (or to no session, for the login form)."""
        return self._csrf.dumps([secrets.token_urlsafe(16), _csrf_binding(session_id)])

    def csrf_ok(self, cookie: str | None, submitted: str | None, session_id: str | None) -> bool:
        """Signed double-submit: the form/header copy must equal the cookie, be ours, and be bound to the
        session the request carries (a pair fetched anonymously or by another user is refused)."""
        if not cookie or not submitted or not hmac.compare_digest(cookie, submitted):
            return False
        try:
            payload = self._csrf.loads(cookie)
        except BadSignature:
            return False
        return (isinstance(payload, list) and len(payload) == 2 and isinstance(payload[1], str)
                and hmac.compare_digest(payload[1], _csrf_binding(session_id)))

    def device_cookie(self, username: str) -> str:
        return self._devices.dumps(username.lower())

    def device_is(self, cookie: str | None, username: str) -> bool:
        """Has this browser logged in as ``username`` before (a signed cookie set at a successful login)?"""
        if not cookie:
            return False
        try:
            return self._devices.loads(cookie, max_age=int(DEVICE_LIFETIME.total_seconds())) == username.lower()
        except BadSignature:
            return False


def open_session(session: Session, user: User, client: str | None = None) -> str:
    session_id = secrets.token_urlsafe(32)
    session.add(LoginSession(user_id=user.id, session_hash=sha256(session_id), client=(client or "")[:64] or None,
                             expires_at=utcnow() + SESSION_LIFETIME))
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


def session_row(session: Session, session_id: str) -> LoginSession | None:
    return session.scalar(select(LoginSession).where(LoginSession.session_hash == sha256(session_id)))


def safe_path(base_dir: str | Path, name: str) -> Path:
    """``base_dir/name``, refusing any name that would land outside ``base_dir``."""
    base = Path(base_dir).resolve()
    if not name or "\x00" in name or Path(name).is_absolute():
        raise ValueError(f"invalid file name {name!r}")
    target = (base / name).resolve()
    if target == base or not target.is_relative_to(base):
        raise ValueError(f"file name {name!r} escapes {base}")
    return target


def private_dir(base_dir: str | Path, *parts: str) -> Path:
    """``base_dir/parts...``, with ``base_dir`` and every folder below it created owner-only (0700), and
    tightened to 0700 when they already exist with group or other access."""
    path = Path(base_dir)
    for part in ("", *parts):
        path = path / part if part else path
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        _tighten(path, PRIVATE_DIR_MODE)
    return path


def write_private(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a file only its owner can read (0600), whatever the umask or an older file's mode."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    _tighten(path, PRIVATE_FILE_MODE)
    return path


def _tighten(path: Path, mode: int) -> None:
    try:
        if path.stat().st_mode & 0o077:
            os.chmod(path, mode)
    except PermissionError:  # not ours (a shared folder): leave it as its owner set it
        pass
