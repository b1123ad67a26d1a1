"""Admin pages: users and tokens, new projects (import or live generation), quality, leaderboard, export."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from alignloop.errors import AlignloopError
from alignloop.feedback import access, auth, store
from alignloop.feedback.export import AGGREGATES, FORMATS, export_records, to_jsonl
from alignloop.feedback.forms import parse_project_form
from alignloop.feedback.jobs import create_from_uploads, project_jobs
from alignloop.feedback.leaderboard import leaderboard
from alignloop.feedback.models import ACCESS_MODES, TASK_TYPES, TOKEN_SCOPES, Project, User
from alignloop.feedback.quality import project_quality
from alignloop.feedback.security import DEFAULT_TOKEN_DAYS, MAX_PASSWORD_CHARS, MAX_TOKEN_DAYS, create_api_token
from alignloop.feedback.views import flagged_view, job_view, project_admin_view
from alignloop.feedback.web import MAX_ID, Id, csrf_protect, page_admin, render, state

router = APIRouter(prefix="/admin", dependencies=[Depends(page_admin), Depends(csrf_protect)], include_in_schema=False)


def _load(s: Session) -> dict:
    return {"projects": [project_admin_view(s, p) for p in s.scalars(select(Project).order_by(Project.id))],
            "users": [access.user_view(u) for u in s.scalars(select(User).order_by(User.id))]}


def _admin(request: Request, user: User, status_code: int = 200, **extra) -> Response:  # type: ignore[no-untyped-def]
    return render(request, "admin.html", status_code=status_code, user=user, scopes=TOKEN_SCOPES,
                  default_days=DEFAULT_TOKEN_DAYS, max_days=MAX_TOKEN_DAYS, **state(request).read(_load),
                  **{"new_token": None, "error": None, **extra})


@router.get("")
def admin_home(request: Request, user: User = Depends(page_admin)) -> Response:
    return _admin(request, user)


@router.post("/users")
def add_user(request: Request, username: str = Form(..., max_length=64),
             password: str = Form(..., max_length=MAX_PASSWORD_CHARS), role: str = Form("annotator", max_length=16),
             user: User = Depends(page_admin)) -> Response:
    try:
        auth.new_user(state(request), username.strip(), password, role)
    except AlignloopError as err:
        return _admin(request, user, status_code=409 if isinstance(err, store.Conflict) else 400, error=str(err))
    return RedirectResponse("/admin", status_code=303)


@router.post("/users/{user_id}/exclude")
def exclude(user_id: Id, request: Request, excluded: str = Form(..., max_length=1),
            back: int = Form(0, ge=0, le=MAX_ID), back_user: int = Form(0, ge=0, le=MAX_ID)) -> Response:
    """Excluding stops the annotator at once and gives their items back to the pool."""
    state(request).tx(lambda s: access.set_excluded(s, user_id, excluded == "1"))
    target = f"/admin/projects/{back}" if back else (f"/admin/users/{back_user}" if back_user else "/admin")
    return RedirectResponse(target, status_code=303)


@router.post("/tokens")
def new_token(request: Request, name: str = Form("api", max_length=64), scope: str = Form("admin", max_length=16),
              days: int = Form(DEFAULT_TOKEN_DAYS, ge=1, le=MAX_TOKEN_DAYS),
              user: User = Depends(page_admin)) -> Response:
    try:
        token = state(request).tx(lambda s: create_api_token(s, user, name, scope, days))
    except AlignloopError as err:
        return _admin(request, user, status_code=400, error=str(err))
    # Rendered once, never stored in plain text: only its hash is kept.
    return _admin(request, user, new_token=token)


@router.get("/projects/new")
def new_project_page(request: Request, user: User = Depends(page_admin)) -> Response:
    return render(request, "new_project.html", user=user, task_types=TASK_TYPES, error=None)


@router.post("/projects")
async def new_project(request: Request, user: User = Depends(page_admin)) -> Response:
    try:
        opts, prompts, candidates, generation = await parse_project_form(request)
        project_id, _job = await run_in_threadpool(
            create_from_uploads, state(request), opts, prompts, candidates, generation
        )
    except AlignloopError as err:
        return render(request, "new_project.html", status_code=400, user=user, task_types=TASK_TYPES, error=str(err))
    return RedirectResponse(f"/admin/projects/{project_id}", status_code=303)


@router.get("/projects/{project_id}")
def project_page(project_id: Id, request: Request, user: User = Depends(page_admin)) -> Response:
    def load(s: Session) -> dict:
        project = store.get_project(s, project_id)
        return {"project": project_admin_view(s, project), "quality": project_quality(s, project),
                "board": leaderboard(s, project, rounds=100),
                "jobs": [job_view(j) for j in project_jobs(s, project_id)],
                "flags": flagged_view(s, project_id), "members": access.members_of(s, project)}

    return render(request, "project_admin.html", user=user, formats=FORMATS, aggregates=AGGREGATES,
                  access_modes=ACCESS_MODES, **state(request).read(load))


@router.get("/projects/{project_id}/export")
def export(project_id: Id, request: Request, format: str = Query("pair", max_length=16),
           aggregate: str = Query("all", max_length=16), min_agreement: str = Query("", max_length=32),
           include_excluded: str = Query("", max_length=8),
           deactivated: Literal["include", "drop"] = "include") -> Response:
    try:
        threshold = float(min_agreement) if min_agreement.strip() else None
        with_excluded = include_excluded in ("on", "1", "true")
        records = state(request).read(lambda s: export_records(s, store.get_project(s, project_id), format, aggregate,
                                                               threshold, with_excluded, deactivated == "include"))
    except ValueError as err:
        raise AlignloopError(str(err)) from None
    return Response(to_jsonl(records), media_type="application/x-ndjson",
                    headers={"Content-Disposition": f'attachment; filename="project-{project_id}-{format}.jsonl"'})
