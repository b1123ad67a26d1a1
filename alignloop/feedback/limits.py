"""Request limits: body sizes (413 before anything is parsed), text fields, and short validation errors.

A body over its limit is refused before it is parsed, whether or not it announces a Content-Length."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alignloop.feedback.importers import MAX_UPLOAD_BYTES
from alignloop.feedback.web import render

MAX_BODY_BYTES = 2 * 1024 * 1024  # JSON bodies and plain forms
# The new-project form carries two uploads at the limit plus its text fields.
MAX_UPLOAD_BODY_BYTES = 2 * MAX_UPLOAD_BYTES + 1024 * 1024
UPLOAD_PATHS = ("/admin/projects", "/api/projects")
MAX_RATIONALE_CHARS = 20_000
MAX_EDITED_RESPONSE_CHARS = 100_000
MAX_ERROR_TEXT = 200


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MiB"


def body_limit(scope: Scope) -> int:
    if scope.get("method") == "POST" and scope.get("path") in UPLOAD_PATHS:
        return MAX_UPLOAD_BODY_BYTES
    return MAX_BODY_BYTES


def _refusal(scope: Scope, limit: int) -> Response:
    message = f"request body is over the {_mib(limit)} limit; nothing was saved"
    if str(scope.get("path", "")).startswith("/api/"):
        return JSONResponse({"detail": message}, status_code=413)
    message += ". Go back: your browser still has what you entered."
    return render(Request(scope), "error.html", status_code=413, status=413, message=message)


class BodyLimitMiddleware:
    """Counts request body bytes as they arrive. Past the route's limit the app is told the client went
    away, whatever it answers is dropped, and a short 413 goes out instead (JSON under /api/, else a page)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _refusal(scope, limit)(scope, receive, send)
            return
        seen, over = 0, False

        async def limited_receive() -> Message:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not over:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over:
            await _refusal(scope, limit)(scope, receive, send)


def has_surrogate(text: str) -> bool:
    """A lone UTF-16 surrogate (JSON ``"\\ud800"``) is no Unicode character: no database can store it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _clean(text: str) -> str:
    if has_surrogate(text):
        raise ValueError("contains a lone surrogate (for example \\ud800), which is not valid Unicode")
    return text


# A request string field that any database can store.
CleanStr = Annotated[str, AfterValidator(_clean)]


def short_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validation errors without the offending input: a 10 MB field is never echoed back."""
    out = []
    for e in errors[:20]:
        loc = [x if isinstance(x, int) else str(x)[:100] for x in e.get("loc", ())]
        out.append({"loc": loc, "msg": str(e.get("msg", ""))[:MAX_ERROR_TEXT], "type": e.get("type")})
    return out


def error_lines(errors: list[dict[str, Any]]) -> str:
    return "\n".join(".".join(str(x) for x in e["loc"] if x != "body") + ": " + e["msg"] for e in errors)
