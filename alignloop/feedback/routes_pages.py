"""Server-rendered pages for annotators: login, project list with progress, the annotation task."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from alignloop.feedback import auth, store
from alignloop.feedback.annotate_form import (
    LONG_RESPONSE_CHARS,
    MARKDOWN_MAX_CHARS,
    for_display,
    form_answer,
    given_values,
    text_field,
)
from alignloop.feedback.answers import AnswerError
from alignloop.feedback.models import User
from alignloop.feedback.security import (
    CSRF_COOKIE,
    DEVICE_COOKIE,
    DEVICE_LIFETIME,
    SESSION_COOKIE,
    SESSION_LIFETIME,
    close_session,
)
from alignloop.feedback.views import assignment_view, project_view
from alignloop.feedback.web import Id, csrf_protect, page_user, render, session_id, set_cookie, state
from alignloop.feedback.workflow import last_finished, progress, undo

router = APIRouter(dependencies=[Depends(csrf_protect)], include_in_schema=False)


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


@router.get("/login")
def login_page(request: Request) -> Response:
    return render(request, "login.html", error=None)


@router.post("/login")
async def login(request: Request, username: str = Form(..., max_length=256),
                password: str = Form(..., max_length=4096)) -> Response:
    """Async: the request waits for the password check (in the hash pool) without holding a thread."""
    st = state(request)
    result = await auth.login(st, request, username, password)
    if result.retry_after is not None:
        response = render(request, "login.html", status_code=429,
                          error=f"Too many failed logins; try again in {result.retry_after} s.")
        response.headers["Retry-After"] = str(result.retry_after)
        return response
    if result.session_id is None:
        return render(request, "login.html", status_code=401, error="Wrong username or password.")
    response = _redirect("/")
    set_cookie(response, request, SESSION_COOKIE, st.signer.sign_session(result.session_id),
               max_age=int(SESSION_LIFETIME.total_seconds()))
    # A CSRF token bound to the new session (the login form's was bound to no session).
    set_cookie(response, request, CSRF_COOKIE, st.signer.new_csrf(result.session_id))
    set_cookie(response, request, DEVICE_COOKIE, st.signer.device_cookie(username.strip()),
               max_age=int(DEVICE_LIFETIME.total_seconds()))
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    sid = session_id(request)
    if sid:
        state(request).tx(lambda s: close_session(s, sid))
    response = _redirect("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


@router.get("/")
def home(request: Request, user: User = Depends(page_user)) -> Response:
    def rows(s: Session) -> list[dict]:
        return [{**project_view(p), "progress": progress(s, user, p)} for p in store.visible_projects(s, user)]

    return render(request, "home.html", user=user, projects=state(request).read(rows))


def _page(request: Request, user: User, ctx: dict, status_code: int = 200, **extra) -> Response:  # type: ignore[no-untyped-def]
    return render(request, "annotate.html", status_code=status_code, user=user, long_chars=LONG_RESPONSE_CHARS,
                  **ctx, **extra)


def _context(s: Session, user: User, project_id: int, rng=None, assignment=None) -> dict:  # type: ignore[no-untyped-def]
    """The page's data; ``assignment`` None means: the user's next item (claimed here if need be)."""
    project = store.visible_project(s, user, project_id)
    a = assignment if assignment is not None else store.next_assignment(s, user, project, rng)
    last = last_finished(s, user, project.id)
    return {"project": project_view(project), "progress": progress(s, user, project),
            "assignment": for_display(assignment_view(s, a)) if a else None,
            "last": {"id": last.id, "status": last.status} if last is not None else None}


@router.get("/projects/{project_id}/annotate")
def annotate(project_id: Id, request: Request, user: User = Depends(page_user)) -> Response:
    st = state(request)
    return _page(request, user, st.tx(lambda s: _context(s, user, project_id, st.rng)))


@router.post("/assignments/{assignment_id}/label")
async def submit(assignment_id: Id, request: Request, user: User = Depends(page_user)) -> Response:
    """Store the answer and go to the next item. A refused answer (a missing value, a text over its
    limit) shows the same item again with the message and everything the annotator entered."""
    form = await request.form()
    st = state(request)

    def save(s: Session) -> int:
        a = store.own_assignment(s, user, assignment_id)
        project = store.get_project(s, a.project_id)
        raw = form_answer(project.task_type, form, len(a.display_order), list(project.criteria))
        rationale, edited = text_field(form, "rationale"), text_field(form, "edited_response")
        store.submit_label(s, user, assignment_id, raw, rationale, edited)
        return project.id

    try:
        project_id = await run_in_threadpool(st.tx, save)
    except AnswerError as err:
        def again(s: Session) -> dict:
            a = store.own_assignment(s, user, assignment_id)
            return _context(s, user, a.project_id, assignment=a)

        ctx = await run_in_threadpool(st.read, again)
        return _page(request, user, ctx, status_code=422, error=str(err), given=given_values(form))
    except store.Conflict as err:
        a = await run_in_threadpool(st.read, lambda s: store.own_assignment(s, user, assignment_id))
        ctx = await run_in_threadpool(st.tx, lambda s: _context(s, user, a.project_id, st.rng))
        return _page(request, user, ctx, status_code=409,
                     error=f"Not saved: {err}. Use Undo to change your last answer, or My labels for an earlier one.")
    return _redirect(f"/projects/{project_id}/annotate")


@router.post("/assignments/{assignment_id}/{action}")
def release(assignment_id: Id, action: str, request: Request, reason: str = Form("", max_length=2000),
            user: User = Depends(page_user)) -> Response:
    """Skip (no confirmation: it can be undone), flag, or undo the last answer or skip."""
    st = state(request)
    if action == "undo":
        a = st.tx(lambda s: undo(s, user, assignment_id))
        return _redirect(f"/projects/{a.project_id}/annotate")
    if action not in ("skip", "flag"):
        raise HTTPException(404, "not found")
    status = "skipped" if action == "skip" else "flagged"
    a = st.tx(lambda s: store.release(s, user, assignment_id, status, reason or None))
    return _redirect(f"/projects/{a.project_id}/annotate")


@router.get("/assignments/{assignment_id}/full/{part}")
def full_text(assignment_id: Id, part: str, request: Request, user: User = Depends(page_user)) -> Response:
    """The whole prompt (``part`` = prompt) or response (``part`` = its letter) of one's own assignment,
    for a text too long to put on the annotate page."""
    view = state(request).read(lambda s: assignment_view(s, store.own_assignment(s, user, assignment_id)))
    if part == "prompt":
        title, text = "Prompt", view["prompt"]
    else:
        found = [r for r in view["responses"] if r["letter"] == part]
        if not found:
            raise HTTPException(404, "not found")
        title, text = f"Response {part}", found[0]["text"]
    return render(request, "full_text.html", user=user, title=title, text=text, chars=len(text),
                  markdown=len(text) <= MARKDOWN_MAX_CHARS, project_id=view["project_id"])
