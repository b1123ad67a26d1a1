"""JSON API for accounts: users (admin), one's own password, sessions and API tokens, project membership."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from alignloop.feedback import access, auth, store
from alignloop.feedback.limits import CleanStr
from alignloop.feedback.models import User
from alignloop.feedback.security import DEFAULT_TOKEN_DAYS, MAX_PASSWORD_CHARS, MAX_TOKEN_DAYS, create_api_token
from alignloop.feedback.web import Id, api_admin, api_user, csrf_protect, session_id, state, token_scope

router = APIRouter(prefix="/api", dependencies=[Depends(api_user), Depends(csrf_protect)], tags=["accounts"])
admin_only = [Depends(api_admin)]
Password = Field(..., max_length=MAX_PASSWORD_CHARS)


class UserIn(BaseModel):
    username: CleanStr = Field(..., max_length=64)
    password: CleanStr = Password
    role: CleanStr = Field("annotator", max_length=16)


class ExcludeIn(BaseModel):
    excluded: bool


class ActiveIn(BaseModel):
    active: bool


class SetPasswordIn(BaseModel):
    password: CleanStr = Password
    must_change: bool = True


class ChangePasswordIn(BaseModel):
    current: CleanStr = Password
    new: CleanStr = Password


class TokenIn(BaseModel):
    name: CleanStr = Field("api", max_length=64)
    scope: CleanStr | None = Field(None, max_length=16)
    days: int = Field(DEFAULT_TOKEN_DAYS, ge=1, le=MAX_TOKEN_DAYS)


class MembersIn(BaseModel):
    usernames: list[CleanStr] = Field(..., max_length=1000)


class AccessIn(BaseModel):
    access: CleanStr = Field(..., max_length=16)


@router.get("/users", dependencies=admin_only)
def users(request: Request) -> list[dict]:
    return state(request).read(lambda s: [access.user_view(u) for u in s.scalars(select(User).order_by(User.id))])


@router.post("/users", dependencies=admin_only, status_code=201)
def add_user(body: UserIn, request: Request) -> dict:
    return access.user_view(auth.new_user(state(request), body.username, body.password, body.role))


@router.post("/users/{user_id}/exclude", dependencies=admin_only)
def exclude(user_id: Id, body: ExcludeIn, request: Request) -> dict:
    """Excluding stops the annotator at once and returns their items to the pool (see access.set_excluded)."""
    u = state(request).tx(lambda s: access.set_excluded(s, user_id, body.excluded))
    return {"id": u.id, "excluded": u.excluded}


@router.post("/users/{user_id}/active")
def set_active(user_id: Id, body: ActiveIn, request: Request, admin: User = Depends(api_admin)) -> dict:
    """Deactivate (ends sessions, revokes tokens, returns open items to the pool) or reactivate a user."""
    return access.user_view(state(request).tx(lambda s: access.set_active(s, user_id, body.active, admin)))


@router.post("/users/{user_id}/password", dependencies=admin_only)
def set_password(user_id: Id, body: SetPasswordIn, request: Request) -> dict:
    state(request).read(lambda s: access.get_user(s, user_id))  # 404 before hashing
    return access.user_view(auth.admin_set_password(state(request), user_id, body.password, body.must_change))


@router.get("/users/{user_id}/sessions", dependencies=admin_only)
def user_sessions(user_id: Id, request: Request) -> list[dict]:
    def rows(s: Session) -> list[dict]:
        access.get_user(s, user_id)
        return [access.session_view(r) for r in access.sessions_of(s, user_id)]

    return state(request).read(rows)


@router.post("/users/{user_id}/end-sessions", dependencies=admin_only)
def end_user_sessions(user_id: Id, request: Request) -> dict:
    def apply(s: Session) -> int:
        access.get_user(s, user_id)
        return access.end_sessions(s, user_id)

    return {"ended": state(request).tx(apply)}


@router.get("/users/{user_id}/tokens", dependencies=admin_only)
def user_tokens(user_id: Id, request: Request) -> list[dict]:
    def rows(s: Session) -> list[dict]:
        access.get_user(s, user_id)
        return [access.token_view(t) for t in access.tokens_of(s, user_id)]

    return state(request).read(rows)


@router.post("/me/password")
def change_password(body: ChangePasswordIn, request: Request, user: User = Depends(api_user)) -> dict:
    """Needs the current password; ends every other session of the caller."""
    auth.change_own_password(state(request), request, user, body.current, body.new)
    return {"changed": True}


@router.get("/sessions")
def my_sessions(request: Request, user: User = Depends(api_user)) -> list[dict]:
    sid = session_id(request)
    return state(request).read(lambda s: [access.session_view(r, sid) for r in access.sessions_of(s, user.id)])


@router.delete("/sessions/{row_id}")
def end_session(row_id: Id, request: Request, user: User = Depends(api_user)) -> dict:
    """End one of one's own sessions (an admin may end anyone's)."""
    state(request).tx(lambda s: access.end_session(s, row_id, user))
    return {"ended": row_id}


@router.get("/tokens")
def my_tokens(request: Request, user: User = Depends(api_user)) -> list[dict]:
    return state(request).read(lambda s: [access.token_view(t) for t in access.tokens_of(s, user.id)])


@router.post("/tokens", status_code=201)
def new_token(body: TokenIn, request: Request, user: User = Depends(api_user)) -> dict:
    """The token is shown in this response only; the server keeps its hash. An 'annotate' token cannot
    mint tokens (a leaked one must not outlive its expiry)."""
    if token_scope(request) == "annotate":
        raise HTTPException(403, "an 'annotate' token cannot create tokens; log in or use an 'admin' token")
    token = state(request).tx(lambda s: create_api_token(s, user, body.name, body.scope, body.days))
    return {"token": token, "name": body.name}


@router.delete("/tokens/{token_id}")
def revoke_token(token_id: Id, request: Request, user: User = Depends(api_user)) -> dict:
    """Revoke one of one's own tokens (an admin may revoke anyone's)."""
    state(request).tx(lambda s: access.revoke_token(s, token_id, user))
    return {"revoked": token_id}


@router.get("/projects/{project_id}/members", dependencies=admin_only)
def members(project_id: Id, request: Request) -> dict:
    def view(s: Session) -> dict:
        p = store.get_project(s, project_id)
        return {"access": p.access, "members": [u.username for u in access.members_of(s, p)]}

    return state(request).read(view)


@router.post("/projects/{project_id}/members", dependencies=admin_only)
def add_members(project_id: Id, body: MembersIn, request: Request) -> dict:
    def apply(s: Session) -> dict:
        p = store.get_project(s, project_id)
        added = [name for name in body.usernames if access.add_member(s, p, access.user_by_name(s, name))]
        return {"added": added, "members": [u.username for u in access.members_of(s, p)]}

    return state(request).tx(apply)


@router.delete("/projects/{project_id}/members/{user_id}", dependencies=admin_only)
def remove_member(project_id: Id, user_id: Id, request: Request) -> dict:
    def apply(s: Session) -> dict:
        p = store.get_project(s, project_id)
        if not access.remove_member(s, p, access.get_user(s, user_id)):
            raise store.NotFound("not a member of this project")
        return {"members": [u.username for u in access.members_of(s, p)]}

    return state(request).tx(apply)


@router.put("/projects/{project_id}/access", dependencies=admin_only)
def set_access(project_id: Id, body: AccessIn, request: Request) -> dict:
    p = state(request).tx(lambda s: access.set_access(s, store.get_project(s, project_id), body.access))
    return {"id": p.id, "access": p.access}
