"""Server-rendered pages for annotators: login, project list with progress, the annotation task."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from alignloop.feedback import store
from alignloop.feedback.answers import AnswerError
from alignloop.feedback.models import Project, User
from alignloop.feedback.security import (
    SESSION_COOKIE,
    SESSION_LIFETIME,
    close_session,
    open_session,
    verify_password,
)
from alignloop.feedback.views import assignment_view, project_view
from alignloop.feedback.web import csrf_protect, page_user, render, session_id, set_cookie, state

router = APIRouter(dependencies=[Depends(csrf_protect)], include_in_schema=False)
LONG_RESPONSE_CHARS = 1500  # longer responses start collapsed (phones)


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


@router.get("/login")
def login_page(request: Request) -> Response:
    return render(request, "login.html", error=None)


@router.post("/login")
def login(request: Request, username: str = Form(...), password: str = Form(...)) -> Response:
    st = state(request)
    client = request.client.host if request.client else "unknown"
    keys = (f"ip:{client}", f"user:{username.lower()}")
    if st.limiter.blocked(*keys):
        return render(request, "login.html", status_code=429, error="Too many failed logins; wait a minute.")

    def check(s: Session) -> str | None:
        user = s.scalar(select(User).where(User.username == username))
        if user is None or not user.active or not verify_password(user.password_hash, password):
            return None
        return open_session(s, user)

    sid = st.tx(check)
    if sid is None:
        st.limiter.record_failure(*keys)
        return render(request, "login.html", status_code=401, error="Wrong username or password.")
    response = _redirect("/")
    set_cookie(response, request, SESSION_COOKIE, st.signer.sign_session(sid),
               max_age=int(SESSION_LIFETIME.total_seconds()))
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    sid = session_id(request)
    if sid:
        state(request).tx(lambda s: close_session(s, sid))
    response = _redirect("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/")
def home(request: Request, user: User = Depends(page_user)) -> Response:
    def rows(s: Session) -> list[dict]:
        out = []
        for p in s.scalars(select(Project).order_by(Project.id)):
            out.append({**project_view(p), "progress": store.progress(s, user, p)})
        return out

    return render(request, "home.html", user=user, projects=state(request).tx(rows))


@router.get("/projects/{project_id}/annotate")
def annotate(project_id: int, request: Request, user: User = Depends(page_user)) -> Response:
    st = state(request)

    def load(s: Session) -> dict:
        project = store.get_project(s, project_id)
        a = store.next_assignment(s, user, project, st.rng)
        return {"project": project_view(project), "progress": store.progress(s, user, project),
                "assignment": assignment_view(s, a) if a else None}

    ctx = st.tx(load)
    return render(request, "annotate.html", user=user, long_chars=LONG_RESPONSE_CHARS, **ctx)


def form_answer(task_type: str, form: FormData, k: int, criteria: list[str]) -> dict:
    """Turn the page's form fields into the API's answer object."""
    if task_type == "pairwise":
        return {"choice": form.get("choice")}
    if task_type == "criteria":
        return {"criteria": {c: form.get(f"crit_{c}") for c in criteria}}
    try:
        values = [int(str(form.get(f"{'rank' if task_type == 'ranking' else 'score'}_{pos}"))) for pos in range(k)]
    except ValueError:
        raise AnswerError("every response needs a value") from None
    if task_type == "likert":
        return {"scores": values}
    # Equal rank numbers are a tie: group positions by their rank, best (lowest number) first.
    return {"ranking": [[p for p in range(k) if values[p] == r] for r in sorted(set(values))]}


@router.post("/assignments/{assignment_id}/label")
async def submit(assignment_id: int, request: Request, user: User = Depends(page_user)) -> Response:
    form = await request.form()
    st = state(request)

    def save(s: Session) -> int:
        a = store.own_assignment(s, user, assignment_id)
        project = store.get_project(s, a.project_id)
        raw = form_answer(project.task_type, form, len(a.display_order), list(project.criteria))
        store.submit_label(s, user, assignment_id, raw, str(form.get("rationale") or "")[:20_000],
                           str(form.get("edited_response") or "")[:100_000])
        return project.id

    project_id = await run_in_threadpool(st.tx, save)
    return _redirect(f"/projects/{project_id}/annotate")


@router.post("/assignments/{assignment_id}/{action}")
def release(assignment_id: int, action: str, request: Request, reason: str = Form(""),
            user: User = Depends(page_user)) -> Response:
    if action not in ("skip", "flag"):
        raise HTTPException(404, "not found")
    status = "skipped" if action == "skip" else "flagged"
    a = state(request).tx(lambda s: store.release(s, user, assignment_id, status, reason[:2000] or None))
    return _redirect(f"/projects/{a.project_id}/annotate")
