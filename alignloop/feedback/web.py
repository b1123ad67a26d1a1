"""Shared web plumbing: app state, authentication and CSRF dependencies, safe Markdown, templates."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from markupsafe import Markup
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from alignloop.feedback.db import run_read, run_tx
from alignloop.feedback.models import User
from alignloop.feedback.ratelimit import LoginRateLimiter
from alignloop.feedback.security import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    Signer,
    token_auth,
    user_for_session,
)

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# Ids are 32-bit integers in every supported database; anything outside answers 422, never a 500.
MAX_ID = 2**31 - 1
Id = Annotated[int, PathParam(ge=1, le=MAX_ID)]
# Where a user who must change their password may still go.
PASSWORD_CHANGE_PATHS = ("/account/password", "/logout", "/api/me", "/api/me/password")
TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"

# Raw HTML off (model text is untrusted: it is escaped, never executed); images off so a
# response cannot make the annotator's browser fetch a remote URL. markdown-it also refuses
# javascript:/vbscript:/data: link targets.
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).disable("image")


def render_markdown(text: str) -> Markup:
    return Markup(_markdown.render(text or ""))


@dataclass
class AppState:
    engine: Engine
    factory: sessionmaker[Session]
    signer: Signer
    data_dir: Path
    limiter: LoginRateLimiter = None  # type: ignore[assignment]  # set in __post_init__: it needs the factory
    rng: random.Random = field(default_factory=random.SystemRandom)

    def __post_init__(self) -> None:
        if self.limiter is None:
            self.limiter = LoginRateLimiter(self.factory)

    def tx(self, fn):  # type: ignore[no-untyped-def]
        return run_tx(self.factory, fn)

    def read(self, fn):  # type: ignore[no-untyped-def]
        """A read-only transaction: never waits for the SQLite writer lock."""
        return run_read(self.factory, fn)


def state(request: Request) -> AppState:
    return request.app.state.alignloop


def bearer_token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def session_id(request: Request) -> str | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    return state(request).signer.unsign_session(cookie) if cookie else None


def optional_user(request: Request) -> User | None:
    """The caller: an API token (scripts) or a signed session cookie (browsers). Read without the
    writer lock, so authentication never queues behind other users' writes. The token's scope (or
    None for a browser session) is kept in ``request.state.token_scope``."""
    if hasattr(request.state, "user"):
        return request.state.user
    st = state(request)
    token = bearer_token(request)
    user, scope = None, None
    if token is not None:
        found = st.read(lambda s: token_auth(s, token))
        if found is not None:
            user, scope = found
    else:
        sid = session_id(request)
        user = st.read(lambda s: user_for_session(s, sid)) if sid else None
    request.state.user, request.state.token_scope = user, scope
    return user


def token_scope(request: Request) -> str | None:
    return getattr(request.state, "token_scope", None)


class LoginRequired(Exception):
    """Raised by page dependencies; the app turns it into a redirect to /login."""


class PasswordChangeRequired(Exception):
    """Raised by page dependencies for a user whose password an admin set; the app redirects them."""


def _must_change(request: Request, user: User) -> bool:
    return user.must_change_password and request.url.path not in PASSWORD_CHANGE_PATHS


def api_user(request: Request) -> User:
    user = optional_user(request)
    if user is None:
        raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})
    if _must_change(request, user):
        raise HTTPException(403, "password change required: POST /api/me/password first")
    return user


def api_admin(request: Request, user: User = Depends(api_user)) -> User:
    if user.role != "admin":
        raise HTTPException(403, "admin only")
    if token_scope(request) == "annotate":
        raise HTTPException(403, "this API token's scope is 'annotate'; admin routes need an 'admin' token")
    return user


def page_user(request: Request) -> User:
    user = optional_user(request)
    if user is None:
        raise LoginRequired()
    if _must_change(request, user):
        raise PasswordChangeRequired()
    return user


def page_admin(user: User = Depends(page_user)) -> User:
    if user.role != "admin":
        raise HTTPException(403, "admin only")
    return user


async def csrf_protect(request: Request) -> None:
    """Every state-changing request from a browser carries the CSRF token (form field or
    X-CSRF-Token header) matching its signed CSRF cookie. Token-authenticated scripts are exempt:
    browsers never attach an Authorization header on their own."""
    if request.method not in UNSAFE_METHODS or bearer_token(request) is not None:
        return
    submitted = request.headers.get("x-csrf-token")
    if submitted is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        submitted = (await request.form()).get("csrf_token")
    if not state(request).signer.csrf_ok(request.cookies.get(CSRF_COOKIE), submitted, session_id(request)):
        raise HTTPException(403, "CSRF token missing or invalid; reload the page and try again")


def csrf_token(request: Request) -> str:
    """The page's CSRF token: the cookie's when it is bound to this browser's session, else a new one."""
    existing = request.cookies.get(CSRF_COOKIE)
    sid = session_id(request)
    if existing and state(request).signer.csrf_ok(existing, existing, sid):
        return existing
    if not hasattr(request.state, "new_csrf"):
        request.state.new_csrf = state(request).signer.new_csrf(sid)
    return request.state.new_csrf


def set_cookie(response, request: Request, name: str, value: str, max_age: int | None = None) -> None:  # type: ignore[no-untyped-def]
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")


templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
templates.env.filters["markdown"] = render_markdown


def render(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
    token = csrf_token(request)
    response = templates.TemplateResponse(request, name, {"csrf_token": token, **context}, status_code=status_code)
    if request.cookies.get(CSRF_COOKIE) != token:
        set_cookie(response, request, CSRF_COOKIE, token)
    return response
