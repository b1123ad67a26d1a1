"""Admin pages: users and tokens, new projects (import or live generation), quality, leaderboard, export."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from alignloop.errors import AlignloopError
from alignloop.feedback import store
from alignloop.feedback.export import AGGREGATES, FORMATS, export_records, to_jsonl
from alignloop.feedback.forms import parse_project_form
from alignloop.feedback.jobs import create_from_uploads, project_jobs
from alignloop.feedback.leaderboard import leaderboard
from alignloop.feedback.models import TASK_TYPES, Project, User
from alignloop.feedback.quality import project_quality
from alignloop.feedback.security import create_api_token
from alignloop.feedback.views import flagged_view, job_view, project_admin_view
from alignloop.feedback.web import csrf_protect, page_admin, render, state

router = APIRouter(prefix="/admin", dependencies=[Depends(page_admin), Depends(csrf_protect)], include_in_schema=False)


def _users(s: Session) -> list[User]:
    return list(s.scalars(select(User).order_by(User.id)))


@router.get("")
def admin_home(request: Request, user: User = Depends(page_admin)) -> Response:
    def load(s: Session) -> dict:
        return {"projects": [project_admin_view(s, p) for p in s.scalars(select(Project).order_by(Project.id))],
                "users": _users(s)}

    return render(request, "admin.html", user=user, new_token=None, **state(request).tx(load))


@router.post("/users")
def add_user(request: Request, username: str = Form(...), password: str = Form(...),
             role: str = Form("annotator")) -> Response:
    state(request).tx(lambda s: store.create_user(s, username.strip(), password, role))
    return RedirectResponse("/admin", status_code=303)


@router.post("/users/{user_id}/exclude")
def exclude(user_id: int, request: Request, excluded: str = Form(...), back: int = Form(0)) -> Response:
    def apply(s: Session) -> None:
        u = s.get(User, user_id)
        if u is None:
            raise store.NotFound("user not found")
        u.excluded = excluded == "1"

    state(request).tx(apply)
    return RedirectResponse(f"/admin/projects/{back}" if back else "/admin", status_code=303)


@router.post("/tokens")
def new_token(request: Request, name: str = Form("api"), user: User = Depends(page_admin)) -> Response:
    st = state(request)
    token = st.tx(lambda s: create_api_token(s, user, name))

    def load(s: Session) -> dict:
        return {"projects": [project_admin_view(s, p) for p in s.scalars(select(Project).order_by(Project.id))],
                "users": _users(s)}

    # Rendered once, never stored in plain text: only its hash is kept.
    return render(request, "admin.html", user=user, new_token=token, **st.tx(load))


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
def project_page(project_id: int, request: Request, user: User = Depends(page_admin)) -> Response:
    def load(s: Session) -> dict:
        project = store.get_project(s, project_id)
        return {"project": project_admin_view(s, project), "quality": project_quality(s, project),
                "board": leaderboard(s, project, rounds=100),
                "jobs": [job_view(j) for j in project_jobs(s, project_id)],
                "flags": flagged_view(s, project_id)}

    return render(request, "project_admin.html", user=user, formats=FORMATS, aggregates=AGGREGATES,
                  **state(request).tx(load))


@router.get("/projects/{project_id}/export")
def export(project_id: int, request: Request, format: str = Query("pair"), aggregate: str = Query("all"),
           min_agreement: str = Query("")) -> Response:
    try:
        threshold = float(min_agreement) if min_agreement.strip() else None
        records = state(request).tx(
            lambda s: export_records(s, store.get_project(s, project_id), format, aggregate, threshold))
    except ValueError as err:
        raise AlignloopError(str(err)) from None
    return Response(to_jsonl(records), media_type="application/x-ndjson",
                    headers={"Content-Disposition": f'attachment; filename="project-{project_id}-{format}.jsonl"'})
