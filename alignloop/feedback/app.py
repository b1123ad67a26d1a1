"""The FastAPI application: ``create_app(db_url)`` wires state, security headers, errors and routes."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from anyio import to_thread
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from alignloop.errors import AlignloopError, DataError
from alignloop.feedback.answers import AnswerError
from alignloop.feedback.db import make_engine, migrate, normalise_url, session_factory
from alignloop.feedback.jobs import resume_jobs
from alignloop.feedback.limits import BodyLimitMiddleware, error_lines, short_errors
from alignloop.feedback.routes_account import router as account_router
from alignloop.feedback.routes_admin import router as admin_router
from alignloop.feedback.routes_admin_users import router as admin_users_router
from alignloop.feedback.routes_api import router as api_router
from alignloop.feedback.routes_labels import router as labels_router
from alignloop.feedback.routes_pages import router as pages_router
from alignloop.feedback.routes_users import router as users_router
from alignloop.feedback.security import Signer, get_or_create_secret
from alignloop.feedback.store import Conflict, Forbidden, NotFound
from alignloop.feedback.web import STATIC_DIR, AppState, LoginRequired, PasswordChangeRequired, render

REQUEST_THREADS = 128  # threads for sync routes (see lifespan)
SECURITY_HEADERS = {
    # No inline script anywhere: even if escaping failed, injected script would not run.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def default_data_dir(db_url: str) -> Path:
    """Uploads and server-side exports live beside a SQLite file, else in ./alignloop-annotate-data."""
    url = normalise_url(db_url)
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///"):]).resolve().parent / "alignloop-annotate-data"
    return Path("alignloop-annotate-data").resolve()


def create_app(db_url: str, data_dir: str | Path | None = None, run_migrations: bool = True) -> FastAPI:
    engine = make_engine(db_url)
    if run_migrations:
        migrate(engine)
    factory = session_factory(engine)
    with factory() as session:
        secret = get_or_create_secret(session)
        session.commit()
    st = AppState(engine=engine, factory=factory, signer=Signer(secret),
                  data_dir=Path(data_dir) if data_dir else default_data_dir(db_url))

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
        # Sync routes run in anyio's thread pool (40 threads by default). Writers waiting for the SQLite
        # writer lock hold their threads, so with 40+ busy annotators reads would queue behind them.
        limiter = to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, REQUEST_THREADS)
        resume_jobs(st)
        yield
        engine.dispose()

    # Swagger UI would load scripts from a CDN, which the CSP forbids; the schema itself is served.
    app = FastAPI(title="alignloop annotate", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.alignloop = st
    app.add_middleware(BodyLimitMiddleware)  # added first: it runs inside the security headers below

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        response: Response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    def error(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": message}, status_code=status)
        return render(request, "error.html", status_code=status, status=status, message=message)

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, _exc: LoginRequired) -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(PasswordChangeRequired)
    async def to_password(request: Request, _exc: PasswordChangeRequired) -> Response:
        return RedirectResponse("/account/password", status_code=303)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = short_errors(list(exc.errors()))
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": errors}, status_code=422)
        return render(request, "error.html", status_code=422, status=422, message=error_lines(errors))

    @app.exception_handler(UnicodeEncodeError)
    async def bad_text(request: Request, _exc: UnicodeEncodeError) -> Response:
        return error(request, 400, "text contains a lone surrogate (for example \\ud800), which is not valid Unicode")

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, _exc: RecursionError) -> Response:
        return error(request, 400, "JSON is nested too deeply")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        response = error(request, exc.status_code, str(exc.detail))
        for k, v in (exc.headers or {}).items():
            response.headers[k] = v
        return response

    for exc_type, status in ((NotFound, 404), (Conflict, 409), (Forbidden, 403), (AnswerError, 422),
                             (DataError, 400), (AlignloopError, 400)):
        app.add_exception_handler(exc_type, lambda request, exc, status=status: error(request, status, str(exc)))

    app.include_router(api_router)
    app.include_router(users_router)
    app.include_router(pages_router)
    app.include_router(labels_router)
    app.include_router(account_router)
    app.include_router(admin_router)
    app.include_router(admin_users_router)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    return app
