"""Admin pages for people: one user's page (deactivate, exclude, set a password, sessions, tokens,
projects) and project membership."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from alignloop.errors import AlignloopError
from alignloop.feedback import access, auth, store
from alignloop.feedback.models import Project, ProjectMember, User
from alignloop.feedback.security import MAX_PASSWORD_CHARS
from alignloop.feedback.web import MAX_ID, Id, csrf_protect, page_admin, render, state

router = APIRouter(prefix="/admin", dependencies=[Depends(page_admin), Depends(csrf_protect)], include_in_schema=False)


def _back(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _user_page(request: Request, admin: User, user_id: int, status_code: int = 200,
               **extra) -> Response:  # type: ignore[no-untyped-def]
    def load(s: Session) -> dict:
        u = access.get_user(s, user_id)
        member_of = set(s.scalars(select(ProjectMember.project_id).where(ProjectMember.user_id == u.id)))
        projects = [{"id": p.id, "name": p.name, "access": p.access, "member": p.id in member_of}
                    for p in s.scalars(select(Project).order_by(Project.id))]
        return {"person": access.user_view(u), "projects": projects,
                "sessions": [access.session_view(r) for r in access.sessions_of(s, u.id)],
                "tokens": [access.token_view(t) for t in access.tokens_of(s, u.id)]}

    return render(request, "admin_user.html", status_code=status_code, user=admin,
                  **state(request).read(load), **{"error": None, "notice": None, **extra})


@router.get("/users/{user_id}")
def user_page(user_id: Id, request: Request, admin: User = Depends(page_admin)) -> Response:
    return _user_page(request, admin, user_id)


@router.post("/users/{user_id}/active")
def set_active(user_id: Id, request: Request, active: str = Form(..., max_length=1),
               admin: User = Depends(page_admin)) -> Response:
    state(request).tx(lambda s: access.set_active(s, user_id, active == "1", admin))
    return _back(f"/admin/users/{user_id}")


@router.post("/users/{user_id}/password")
def set_password(user_id: Id, request: Request, password: str = Form(..., max_length=MAX_PASSWORD_CHARS),
                 must_change: str = Form("", max_length=8), admin: User = Depends(page_admin)) -> Response:
    """The admin tells the user the password out of band; with "must change" (the default on the page)
    the user has to pick their own at the next login."""
    st = state(request)
    st.read(lambda s: access.get_user(s, user_id))
    try:
        auth.admin_set_password(st, user_id, password, must_change in ("on", "1", "true"))
    except AlignloopError as err:
        return _user_page(request, admin, user_id, status_code=400, error=str(err))
    return _user_page(request, admin, user_id, notice="Password set; the user's sessions were ended.")


@router.post("/users/{user_id}/end-sessions")
def end_sessions(user_id: Id, request: Request) -> Response:
    state(request).tx(lambda s: access.end_sessions(s, access.get_user(s, user_id).id))
    return _back(f"/admin/users/{user_id}")


@router.post("/tokens/{token_id}/revoke")
def revoke_token(token_id: Id, request: Request, back: int = Form(0, ge=0, le=MAX_ID),
                 admin: User = Depends(page_admin)) -> Response:
    state(request).tx(lambda s: access.revoke_token(s, token_id, admin))
    return _back(f"/admin/users/{back}" if back else "/admin")


@router.post("/projects/{project_id}/members")
def add_members(project_id: Id, request: Request, usernames: str = Form(..., max_length=10_000),
                back: int = Form(0, ge=0, le=MAX_ID)) -> Response:
    """Add members by name (comma or space separated), from the project page or a user's page."""
    names = [n for n in usernames.replace(",", " ").split() if n]

    def apply(s: Session) -> None:
        project = store.get_project(s, project_id)
        for name in names:
            access.add_member(s, project, access.user_by_name(s, name))

    state(request).tx(apply)
    return _back(f"/admin/users/{back}" if back else f"/admin/projects/{project_id}")


@router.post("/projects/{project_id}/members/{user_id}/remove")
def remove_member(project_id: Id, user_id: Id, request: Request, back: int = Form(0, ge=0, le=MAX_ID)) -> Response:
    state(request).tx(lambda s: access.remove_member(s, store.get_project(s, project_id), access.get_user(s, user_id)))
    return _back(f"/admin/users/{back}" if back else f"/admin/projects/{project_id}")


@router.post("/projects/{project_id}/access")
def set_access(project_id: Id, request: Request,
               access_mode: str = Form(..., alias="access", max_length=16)) -> Response:
    state(request).tx(lambda s: access.set_access(s, store.get_project(s, project_id), access_mode))
    return _back(f"/admin/projects/{project_id}")
