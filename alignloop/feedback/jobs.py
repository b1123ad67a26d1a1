"""Projects built from uploads, and live candidate generation as a background job with progress."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from alignloop.errors import AlignloopError
from alignloop.feedback.importers import Candidate, PromptRow, item_specs, parse_candidates, parse_prompts
from alignloop.feedback.models import Job, Project, utcnow
from alignloop.feedback.security import private_dir, safe_path, write_private
from alignloop.feedback.store import ProjectOptions, add_items, create_project, get_project
from alignloop.feedback.web import AppState
from alignloop.models import load_causal_lm, load_tokenizer
from alignloop.rollout.hf import HFSampler

GENERATION_BATCH = 8  # prompts per sampler call: progress moves, memory stays small


@dataclass
class GenerationParams:
    models: list[str]
    k: int = 2
    temperature: float = 0.8
    max_new_tokens: int = 128
    seed: int = 0

    def validate(self) -> None:
        if not self.models or any(not m.strip() for m in self.models):
            raise AlignloopError("models: name at least one model")
        if not 1 <= self.k <= 16:
            raise AlignloopError("k: responses per prompt per model must be between 1 and 16")
        if len(self.models) * self.k < 2:
            raise AlignloopError("k: one model needs k >= 2 so each prompt has two responses to compare")
        if not 0.0 <= self.temperature <= 5.0:
            raise AlignloopError("temperature: must be between 0 and 5")
        if not 1 <= self.max_new_tokens <= 4096:
            raise AlignloopError("max_new_tokens: must be between 1 and 4096")


@dataclass
class Upload:
    filename: str
    data: bytes


def _save_upload(st: AppState, project_id: int, upload: Upload) -> None:
    """Keep the uploaded file for provenance, under the project's own folder only."""
    name = upload.filename.replace("\\", "/").split("/")[-1] or "upload"
    folder = private_dir(st.data_dir, "uploads", str(project_id))  # 0700, like the data folder above it
    write_private(safe_path(folder, name), upload.data)


def create_from_uploads(st: AppState, opts: ProjectOptions, prompts: Upload | None,
                        candidates: Upload | None, generation: GenerationParams | None,
                        background: bool = True) -> tuple[int, int | None]:
    """Candidates come from an uploaded JSONL, or from models (``generation``) given prompts.
    Returns ``(project_id, job_id)``; the generation job runs in a thread unless ``background``
    is off (the CLI then runs it itself)."""
    opts.validate()
    if candidates is not None:
        rows = parse_candidates(candidates.data, candidates.filename)
    elif prompts is not None and generation is not None:
        generation.validate()
        rows = parse_prompts(prompts.data, prompts.filename)
    else:
        raise AlignloopError("candidates: upload a responses JSONL, or prompts plus models to generate from")
    specs = item_specs(rows, opts.task_type) if candidates is not None else []
    if candidates is not None and opts.task_type in ("pairwise", "criteria") and any(
            len(s.candidates) != 2 for s in specs):
        raise AlignloopError("responses: pairwise tasks need two responses per item")

    def build(session: Session) -> tuple[int, int | None]:
        project = create_project(session, opts, status="ready" if generation is None else "generating")
        if generation is None:
            add_items(session, project, specs)
            return project.id, None
        job = Job(project_id=project.id, kind="generate", status="queued", total=len(rows) * len(generation.models),
                  params={"models": generation.models, "k": generation.k, "temperature": generation.temperature,
                          "max_new_tokens": generation.max_new_tokens, "seed": generation.seed,
                          "prompts": [r.prompt for r in rows]})
        session.add(job)
        session.flush()
        return project.id, job.id

    project_id, job_id = st.tx(build)
    for upload in (prompts, candidates):
        if upload is not None:
            _save_upload(st, project_id, upload)
    if job_id is not None and background:
        start_job(st, job_id)
    return project_id, job_id


def start_job(st: AppState, job_id: int) -> threading.Thread:
    thread = threading.Thread(target=run_generation, args=(st, job_id), name=f"alignloop-job-{job_id}", daemon=True)
    thread.start()
    return thread


def resume_jobs(st: AppState) -> None:
    """Jobs cut off by a server stop start again from the beginning (items are only added at the end)."""
    pending = st.tx(lambda s: list(s.scalars(select(Job.id).where(Job.status.in_(("queued", "running"))))))
    for job_id in pending:
        start_job(st, job_id)


def _update_job(st: AppState, job_id: int, **values) -> None:  # type: ignore[no-untyped-def]
    def apply(session: Session) -> None:
        job = session.get(Job, job_id)
        for k, v in values.items():
            setattr(job, k, v)
        job.updated_at = utcnow()

    st.tx(apply)


def run_generation(st: AppState, job_id: int) -> None:
    job = st.tx(lambda s: s.get(Job, job_id))
    p = job.params
    try:
        # Imported here: the app serves imported candidates without torch/transformers loaded.

        prompts: list[str] = p["prompts"]
        rows = [PromptRow(prompt) for prompt in prompts]
        _update_job(st, job_id, status="running", done=0, message="loading models")
        done = 0
        for model_name in p["models"]:
            sampler = HFSampler(load_causal_lm(model_name, trainable=False),
                                load_tokenizer(model_name, padding_side="left"))
            for start in range(0, len(prompts), GENERATION_BATCH):
                batch = prompts[start:start + GENERATION_BATCH]
                rollout = sampler.generate(batch, n=p["k"], max_new_tokens=p["max_new_tokens"],
                                           temperature=p["temperature"], seed=p["seed"] + start)
                for i, text in enumerate(rollout.responses):  # prompt-major: row i is prompt i // k
                    rows[start + i // p["k"]].candidates.append(Candidate(text, model_name))
                done += len(batch)
                _update_job(st, job_id, done=done, message=f"generating with {model_name}")
            del sampler

        def finish(session: Session) -> None:
            project = get_project(session, job.project_id)
            add_items(session, project, item_specs(rows, project.task_type))
            project.status = "ready"

        st.tx(finish)
        _update_job(st, job_id, status="done", message="done")
    except Exception as err:  # a failed job is reported on the admin page, never crashes the server
        _update_job(st, job_id, status="failed", message=f"{type(err).__name__}: {err}")
        st.tx(lambda s: setattr(s.get(Project, job.project_id), "status", "failed"))


def project_jobs(session: Session, project_id: int) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.project_id == project_id).order_by(Job.id)))
