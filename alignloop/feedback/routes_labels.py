"""Pages for an annotator's own labels: the list ("My labels") and the edit form for any of them."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from alignloop.feedback import store
from alignloop.feedback.annotate_form import (
    LONG_RESPONSE_CHARS,
    answer_form_values,
    answer_summary,
    for_display,
    form_answer,
    given_values,
    text_field,
)
from alignloop.feedback.answers import AnswerError
from alignloop.feedback.models import Assignment, Item, Label, User
from alignloop.feedback.views import assignment_view, project_view
from alignloop.feedback.web import Id, csrf_protect, page_user, render, state
from alignloop.feedback.workflow import edit_label, own_label, progress

router = APIRouter(dependencies=[Depends(csrf_protect)], include_in_schema=False)
PAGE_SIZE = 50
PROMPT_PREVIEW_CHARS = 160


@router.get("/projects/{project_id}/labels")
def my_labels(project_id: Id, request: Request, page: int = Query(1, ge=1, le=100_000), edited: int = Query(0, ge=0),
              user: User = Depends(page_user)) -> Response:
    """The caller's labels in a project, newest first, each with a link to change it."""
    def load(s: Session) -> dict:
        project = store.visible_project(s, user, project_id)
        mine = (Label.user_id == user.id, Label.project_id == project.id)
        total = s.scalar(select(func.count()).select_from(Label).where(*mine)) or 0
        rows = s.execute(select(Label, func.substr(Item.prompt, 1, PROMPT_PREVIEW_CHARS))
                         .join(Item, Item.id == Label.item_id).where(*mine)
                         .order_by(Label.created_at.desc(), Label.id.desc())
                         .offset((page - 1) * PAGE_SIZE).limit(PAGE_SIZE)).all()
        labels = [{"id": lab.id, "number": total - (page - 1) * PAGE_SIZE - i, "prompt": prompt,
                   "summary": answer_summary(project.task_type, lab.answer), "rationale": lab.rationale,
                   "created_at": lab.created_at, "updated_at": lab.updated_at} for i, (lab, prompt) in enumerate(rows)]
        return {"project": project_view(project), "labels": labels, "total": total, "page": page,
                "pages": max(1, -(-total // PAGE_SIZE))}

    return render(request, "labels.html", user=user, edited=edited, **state(request).read(load))


def _edit_context(s: Session, user: User, label_id: int) -> tuple[dict, dict]:
    label = own_label(s, user, label_id)
    project = store.visible_project(s, user, label.project_id)
    a = s.get(Assignment, label.assignment_id)
    ctx = {"project": project_view(project), "progress": progress(s, user, project),
           "assignment": for_display(assignment_view(s, a)), "last": None,
           "editing": {"id": label.id, "created_at": label.created_at, "updated_at": label.updated_at},
           "form_action": f"/labels/{label.id}/edit"}
    return ctx, answer_form_values(project.task_type, label.answer, label.rationale, label.edited_response)


def _page(request: Request, user: User, ctx: dict, status_code: int = 200, **extra) -> Response:  # type: ignore[no-untyped-def]
    return render(request, "annotate.html", status_code=status_code, user=user, long_chars=LONG_RESPONSE_CHARS,
                  **ctx, **extra)


@router.get("/labels/{label_id}/edit")
def edit_page(label_id: Id, request: Request, user: User = Depends(page_user)) -> Response:
    """The task as it was shown (same response order), filled with the stored answer."""
    ctx, values = state(request).read(lambda s: _edit_context(s, user, label_id))
    return _page(request, user, ctx, given=values)


@router.post("/labels/{label_id}/edit")
async def edit_submit(label_id: Id, request: Request, user: User = Depends(page_user)) -> Response:
    """Store the changed answer; a refused one shows the form again with the message and what was entered."""
    form = await request.form()
    st = state(request)

    def save(s: Session) -> int:
        label = own_label(s, user, label_id)
        project = store.get_project(s, label.project_id)
        a = s.get(Assignment, label.assignment_id)
        raw = form_answer(project.task_type, form, len(a.display_order), list(project.criteria))
        edit_label(s, user, label_id, raw, text_field(form, "rationale"), text_field(form, "edited_response"))
        return project.id

    try:
        project_id = await run_in_threadpool(st.tx, save)
    except AnswerError as err:
        ctx, _values = await run_in_threadpool(st.read, lambda s: _edit_context(s, user, label_id))
        return _page(request, user, ctx, status_code=422, error=str(err), given=given_values(form))
    return RedirectResponse(f"/projects/{project_id}/labels?edited={label_id}", status_code=303)
