"""Parse the multipart 'new project' form (the admin page and POST /api/projects share it)."""

from __future__ import annotations

from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile

from alignloop.errors import AlignloopError
from alignloop.feedback.importers import MAX_UPLOAD_BYTES
from alignloop.feedback.jobs import GenerationParams, Upload
from alignloop.feedback.models import DEFAULT_CRITERIA
from alignloop.feedback.store import ProjectOptions

# Two files at the limit plus the text fields: anything bigger is refused before parsing.
MAX_BODY_BYTES = 2 * MAX_UPLOAD_BYTES + 1024 * 1024


def check_body_size(request: Request) -> None:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise HTTPException(413, f"request body is {length} bytes, over the {MAX_BODY_BYTES} byte limit")


async def _upload(form, field: str) -> Upload | None:  # type: ignore[no-untyped-def]
    value = form.get(field)
    if not isinstance(value, UploadFile) or not value.filename:
        return None
    data = await value.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise HTTPException(413, f"{value.filename}: file is over the {MAX_UPLOAD_BYTES} byte limit")
    return Upload(value.filename, data)


def _number(form, field: str, default: float, kind: type = int):  # type: ignore[no-untyped-def]
    raw = str(form.get(field) or "").strip()
    if not raw:
        return default
    try:
        if len(raw) > 64:
            raise ValueError
        value = kind(raw)
    except ValueError:
        raise AlignloopError(f"{field}: {raw[:64]!r} is not a number") from None
    if not -(2**31) < value < 2**31:  # also refuses nan and inf
        raise AlignloopError(f"{field}: {raw[:64]} is out of range")
    return value


async def parse_project_form(
    request: Request,
) -> tuple[ProjectOptions, Upload | None, Upload | None, GenerationParams | None]:
    check_body_size(request)
    form = await request.form()
    criteria = [c.strip() for c in str(form.get("criteria") or ",".join(DEFAULT_CRITERIA)).split(",") if c.strip()]
    opts = ProjectOptions(
        name=str(form.get("name") or "").strip(),
        task_type=str(form.get("task_type") or "pairwise"),
        guidelines=str(form.get("guidelines") or ""),
        overlap=_number(form, "overlap", 1),
        gold_rate=_number(form, "gold_rate", 0.0, float),
        allow_rationale=form.get("allow_rationale") in ("on", "true", "1"),
        allow_edit=form.get("allow_edit") in ("on", "true", "1"),
        criteria=tuple(criteria),
        access=str(form.get("access") or "members"),
        members=tuple(m for m in str(form.get("members") or "").replace(",", " ").split() if m),
    )
    prompts, candidates = await _upload(form, "prompts"), await _upload(form, "candidates")
    models = [m.strip() for m in str(form.get("models") or "").split(",") if m.strip()]
    generation = None
    if candidates is None and models:
        generation = GenerationParams(
            models=models, k=_number(form, "k", 2), temperature=_number(form, "temperature", 0.8, float),
            max_new_tokens=_number(form, "max_new_tokens", 128), seed=_number(form, "seed", 0))
    return opts, prompts, candidates, generation
