"""JSON API under /api/: everything the pages do, for scripts (Bearer token) and the browser.

Every route depends on an authenticated user; admin routes on the admin role. Annotators only
reach their own assignments and labels: another user's id answers 404, like a missing one."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from alignloop.errors import AlignloopError
from alignloop.feedback import store
from alignloop.feedback.export import export_records, to_jsonl, write_jsonl
from alignloop.feedback.forms import parse_project_form
from alignloop.feedback.jobs import create_from_uploads, project_jobs
from alignloop.feedback.leaderboard import leaderboard
from alignloop.feedback.limits import MAX_EDITED_RESPONSE_CHARS, MAX_RATIONALE_CHARS, CleanStr
from alignloop.feedback.models import Label, User
from alignloop.feedback.quality import project_quality
from alignloop.feedback.security import private_dir, safe_path
from alignloop.feedback.views import (
    assignment_view,
    flagged_view,
    job_view,
    label_view,
    project_admin_view,
    project_view,
)
from alignloop.feedback.web import MAX_ID, Id, api_admin, api_user, csrf_protect, state
from alignloop.feedback.workflow import edit_label, own_label, progress, undo

router = APIRouter(prefix="/api", dependencies=[Depends(api_user), Depends(csrf_protect)], tags=["api"])


class LabelIn(BaseModel):
    answer: dict[str, Any]
    rationale: CleanStr | None = Field(None, max_length=MAX_RATIONALE_CHARS)
    edited_response: CleanStr | None = Field(None, max_length=MAX_EDITED_RESPONSE_CHARS)


class FlagIn(BaseModel):
    reason: CleanStr = Field("unsafe or broken", max_length=2000)


class ExportFileIn(BaseModel):
    name: CleanStr = Field(..., max_length=255)
    format: Literal["pair", "ranking", "sft"] = "pair"
    aggregate: Literal["all", "majority"] = "all"
    min_agreement: float | None = Field(None, ge=0, le=1)
    include_excluded: bool = False
    include_deactivated: bool = True


@router.get("/me")
async def me(user: User = Depends(api_user)) -> dict:
    """Async: the user was read by the dependency, so this answers without a second trip to a thread."""
    return {"id": user.id, "username": user.username, "role": user.role,
            "must_change_password": user.must_change_password}


@router.get("/projects")
def list_projects(request: Request, user: User = Depends(api_user)) -> list[dict]:
    """Admins see every project; annotators the projects open to all and those they are members of."""
    return state(request).read(lambda s: [project_view(p) for p in store.visible_projects(s, user)])


@router.post("/projects", dependencies=[Depends(api_admin)], status_code=201)
async def new_project(request: Request) -> dict:
    opts, prompts, candidates, generation = await parse_project_form(request)
    st = state(request)
    project_id, _job = await run_in_threadpool(create_from_uploads, st, opts, prompts, candidates, generation)
    return st.tx(lambda s: project_admin_view(s, store.get_project(s, project_id)))


@router.get("/projects/{project_id}")
def get_project(project_id: Id, request: Request, user: User = Depends(api_user)) -> dict:
    def view(s: Session) -> dict:
        p = store.visible_project(s, user, project_id)
        return project_admin_view(s, p) if user.role == "admin" else project_view(p)

    return state(request).read(view)


@router.post("/projects/{project_id}/next")
def next_item(project_id: Id, request: Request, user: User = Depends(api_user)) -> dict:
    """403 for an excluded annotator; 404 for a project the caller is not a member of."""
    st = state(request)

    def pick(s: Session) -> dict:
        a = store.next_assignment(s, user, store.visible_project(s, user, project_id), st.rng)
        return {"assignment": assignment_view(s, a) if a else None}

    return st.tx(pick)


@router.get("/projects/{project_id}/progress")
def my_progress(project_id: Id, request: Request, user: User = Depends(api_user)) -> dict:
    return state(request).read(lambda s: progress(s, user, store.visible_project(s, user, project_id)))


@router.get("/assignments/{assignment_id}")
def get_assignment(assignment_id: Id, request: Request, user: User = Depends(api_user)) -> dict:
    return state(request).read(lambda s: assignment_view(s, store.own_assignment(s, user, assignment_id)))


@router.post("/assignments/{assignment_id}/undo")
def undo_answer(assignment_id: Id, request: Request, user: User = Depends(api_user)) -> dict:
    """Take back the caller's last answer, skip or flag in the project (its label is deleted)."""
    return state(request).tx(lambda s: assignment_view(s, undo(s, user, assignment_id)))


@router.post("/assignments/{assignment_id}/label")
def post_label(assignment_id: Id, body: LabelIn, request: Request, response: Response,
               user: User = Depends(api_user)) -> dict:
    """Idempotent per assignment: a repeated identical submit answers 200 with the stored label."""
    def submit(s: Session) -> tuple[dict, bool]:
        label, created = store.submit_label(s, user, assignment_id, body.answer, body.rationale, body.edited_response)
        return label_view(label), created

    view, created = state(request).tx(submit)
    response.status_code = 201 if created else 200
    return view


@router.post("/assignments/{assignment_id}/skip")
def skip(assignment_id: Id, request: Request, user: User = Depends(api_user)) -> dict:
    return state(request).tx(lambda s: {"status": store.release(s, user, assignment_id, "skipped").status})


@router.post("/assignments/{assignment_id}/flag")
def flag(assignment_id: Id, body: FlagIn, request: Request, user: User = Depends(api_user)) -> dict:
    return state(request).tx(lambda s: {"status": store.release(s, user, assignment_id, "flagged", body.reason).status})


@router.get("/labels")
def my_labels(request: Request, project_id: int | None = Query(None, ge=1, le=MAX_ID),
              user: User = Depends(api_user)) -> list[dict]:
    def rows(s: Session) -> list[dict]:
        q = select(Label).where(Label.user_id == user.id)
        if project_id is not None:
            q = q.where(Label.project_id == project_id)
        return [label_view(lab) for lab in s.scalars(q.order_by(Label.id))]

    return state(request).read(rows)


@router.get("/labels/{label_id}")
def get_label(label_id: Id, request: Request, user: User = Depends(api_user)) -> dict:
    return state(request).read(lambda s: label_view(own_label(s, user, label_id)))


@router.put("/labels/{label_id}")
def put_label(label_id: Id, body: LabelIn, request: Request, user: User = Depends(api_user)) -> dict:
    """Change one of the caller's labels, however old, within the project's rules (see workflow.edit_label).
    An omitted ``rationale`` or ``edited_response`` stays as it was; an empty one is cleared."""
    return state(request).tx(lambda s: label_view(edit_label(s, user, label_id, body.answer, body.rationale,
                                                             body.edited_response)))


@router.get("/projects/{project_id}/quality", dependencies=[Depends(api_admin)])
def quality(project_id: Id, request: Request) -> dict:
    return state(request).tx(lambda s: project_quality(s, store.get_project(s, project_id)))


@router.get("/projects/{project_id}/leaderboard", dependencies=[Depends(api_admin)])
def get_leaderboard(project_id: Id, request: Request, rounds: int = Query(200, ge=10, le=2000)) -> list[dict]:
    return state(request).tx(lambda s: leaderboard(s, store.get_project(s, project_id), rounds))


@router.get("/projects/{project_id}/export", dependencies=[Depends(api_admin)])
def export(project_id: Id, request: Request, format: Literal["pair", "ranking", "sft"] = "pair",
           aggregate: Literal["all", "majority"] = "all",
           min_agreement: float | None = Query(None, ge=0, le=1), include_excluded: bool = False,
           include_deactivated: bool = True) -> Response:
    """``include_excluded=true`` keeps the labels of excluded annotators (dropped by default);
    ``include_deactivated=false`` drops those of deactivated annotators (kept by default). Records kept from
    either carry ``annotator_status``."""
    records = state(request).read(lambda s: export_records(s, store.get_project(s, project_id), format, aggregate,
                                                           min_agreement, include_excluded, include_deactivated))
    return Response(to_jsonl(records), media_type="application/x-ndjson",
                    headers={"Content-Disposition": f'attachment; filename="project-{project_id}-{format}.jsonl"'})


@router.post("/projects/{project_id}/export-file", dependencies=[Depends(api_admin)])
def export_file(project_id: Id, body: ExportFileIn, request: Request) -> dict:
    """Write the export on the server, inside its exports folder (names cannot climb out)."""
    st = state(request)
    exports = private_dir(st.data_dir, "exports")  # 0700, and so is the data folder above it
    try:
        target = safe_path(exports, body.name)
    except ValueError as err:
        raise AlignloopError(f"name: {err}") from None
    records = st.read(lambda s: export_records(s, store.get_project(s, project_id), body.format, body.aggregate,
                                               body.min_agreement, body.include_excluded, body.include_deactivated))
    private_dir(exports, *target.parent.relative_to(exports.resolve()).parts)
    write_jsonl(records, target)  # written to a mkstemp file (0600), then renamed over the target
    return {"path": str(target), "records": len(records)}


@router.get("/projects/{project_id}/jobs", dependencies=[Depends(api_admin)])
def jobs(project_id: Id, request: Request) -> list[dict]:
    return state(request).tx(lambda s: [job_view(j) for j in project_jobs(s, project_id)])


@router.get("/projects/{project_id}/flags", dependencies=[Depends(api_admin)])
def flags(project_id: Id, request: Request) -> list[dict]:
    return state(request).tx(lambda s: flagged_view(s, store.get_project(s, project_id).id))
