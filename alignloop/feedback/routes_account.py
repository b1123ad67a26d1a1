"""Every user's own account page: change the password, see and end sessions, create and revoke API tokens."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from alignloop.errors import AlignloopError
from alignloop.feedback import access, auth
from alignloop.feedback.models import TOKEN_SCOPES, User
from alignloop.feedback.security import DEFAULT_TOKEN_DAYS, MAX_PASSWORD_CHARS, MAX_TOKEN_DAYS, create_api_token
from alignloop.feedback.web import Id, LoginRequired, csrf_protect, optional_user, page_user, render, session_id, state

router = APIRouter(prefix="/account", dependencies=[Depends(csrf_protect)], include_in_schema=False)


def _account(request: Request, user: User, status_code: int = 200, **extra) -> Response:  # type: ignore[no-untyped-def]
    sid = session_id(request)

    def load(s: Session) -> dict:
        return {"sessions": [access.session_view(r, sid) for r in access.sessions_of(s, user.id)],
                "tokens": [access.token_view(t) for t in access.tokens_of(s, user.id)]}

    scopes = TOKEN_SCOPES if user.role == "admin" else ("annotate",)
    return render(request, "account.html", status_code=status_code, user=user, scopes=scopes,
                  default_days=DEFAULT_TOKEN_DAYS, max_days=MAX_TOKEN_DAYS, **state(request).read(load),
                  **{"error": None, "notice": None, "new_token": None, **extra})


def password_user(request: Request) -> User:
    """Logged in, and allowed here even when the password must be changed first."""
    user = optional_user(request)
    if user is None:
        raise LoginRequired()
    return user


@router.get("")
def account(request: Request, user: User = Depends(page_user)) -> Response:
    changed = request.query_params.get("changed") == "1"
    return _account(request, user, notice="Password changed; your other sessions were ended." if changed else None)


@router.get("/password")
def password_page(request: Request, user: User = Depends(password_user)) -> Response:
    return render(request, "password.html", user=user, error=None)


@router.post("/password")
def change_password(request: Request, current: str = Form(..., max_length=MAX_PASSWORD_CHARS),
                    new: str = Form(..., max_length=MAX_PASSWORD_CHARS),
                    confirm: str = Form(..., max_length=MAX_PASSWORD_CHARS),
                    user: User = Depends(password_user)) -> Response:
    """Every other session of the user ends; this one stays."""
    try:
        if new != confirm:
            raise AlignloopError("the two new passwords differ")
        auth.change_own_password(state(request), request, user, current, new)
    except (AlignloopError, HTTPException) as err:
        message = err.detail if isinstance(err, HTTPException) else str(err)
        status = err.status_code if isinstance(err, HTTPException) else 400
        return render(request, "password.html", status_code=status, user=user, error=message)
    return RedirectResponse("/account?changed=1", status_code=303)


@router.post("/sessions/{row_id}/end")
def end_session(row_id: Id, request: Request, user: User = Depends(page_user)) -> Response:
    state(request).tx(lambda s: access.end_session(s, row_id, user))
    return RedirectResponse("/account", status_code=303)


@router.post("/tokens")
def new_token(request: Request, name: str = Form("api", max_length=64), scope: str = Form("annotate", max_length=16),
              days: int = Form(DEFAULT_TOKEN_DAYS, ge=1, le=MAX_TOKEN_DAYS),
              user: User = Depends(page_user)) -> Response:
    try:
        token = state(request).tx(lambda s: create_api_token(s, user, name, scope, days))
    except AlignloopError as err:
        return _account(request, user, status_code=400, error=str(err))
    # Rendered once, never stored in plain text: only its hash is kept.
    return _account(request, user, new_token=token)


@router.post("/tokens/{token_id}/revoke")
def revoke_token(token_id: Id, request: Request, user: User = Depends(page_user)) -> Response:
    state(request).tx(lambda s: access.revoke_token(s, token_id, user))
    return RedirectResponse("/account", status_code=303)
