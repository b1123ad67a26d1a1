"""``alignloop annotate ...``: create the database, serve the app, manage users and projects, export."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Optional

import typer
from sqlalchemy import make_url, select

from alignloop.errors import AlignloopError
from alignloop.feedback import cli_admin
from alignloop.feedback.cli_common import DB_OPT, PROJECT_ID_OPT, find_project
from alignloop.feedback.cli_common import ask_password as _password
from alignloop.feedback.cli_common import open_factory as _factory
from alignloop.feedback.db import normalise_url, run_tx
from alignloop.feedback.models import Project, User

annotate_app = typer.Typer(help="Human feedback web app.", no_args_is_help=True, add_completion=False,
                           pretty_exceptions_enable=False)


@annotate_app.command()
def init(db: str = DB_OPT, admin: str = typer.Option("admin", help="Username of the first admin.")) -> None:
    """Create (or upgrade) the database and the first admin account."""
    from alignloop.feedback.security import get_or_create_secret, hash_password
    from alignloop.feedback.store import check_new_user, create_user

    factory = _factory(db)

    def setup(s) -> bool:  # type: ignore[no-untyped-def]
        get_or_create_secret(s)
        return s.scalar(select(User).where(User.role == "admin")) is not None

    if run_tx(factory, setup):
        typer.echo("database is up to date; an admin account already exists")
        return
    password = _password("ALIGNLOOP_ADMIN_PASSWORD", f"Password for {admin}")
    check_new_user(admin, password, "admin")
    password_hash = hash_password(password)  # outside the transaction: argon2 is slow on purpose
    run_tx(factory, lambda s: create_user(s, admin, password, "admin", password_hash=password_hash))
    typer.echo(f"database ready; admin account {admin!r} created")


@annotate_app.command()
def serve(db: str = DB_OPT, host: str = typer.Option("127.0.0.1", help="Interface to bind (loopback by default)."),
          port: int = typer.Option(8000),
          data_dir: Optional[Path] = typer.Option(None, help="Uploads and exports.")) -> None:
    """Run the web app."""
    import uvicorn

    from alignloop.feedback.app import create_app

    shown = make_url(normalise_url(db)).render_as_string(hide_password=True)
    typer.echo(f"serving http://{host}:{port}/ (database: {shown})")
    uvicorn.run(create_app(db, data_dir), host=host, port=port, log_level="warning")


@annotate_app.command("add-user")
def add_user(username: str, role: str = typer.Option("annotator"), db: str = DB_OPT) -> None:
    """Create a user (password from ALIGNLOOP_USER_PASSWORD or a prompt)."""
    from alignloop.feedback.security import hash_password
    from alignloop.feedback.store import check_new_user, create_user

    password = _password("ALIGNLOOP_USER_PASSWORD", f"Password for {username}")
    check_new_user(username, password, role)
    password_hash = hash_password(password)
    run_tx(_factory(db), lambda s: create_user(s, username, password, role, password_hash=password_hash))
    typer.echo(f"user {username!r} ({role}) created")


@annotate_app.command()
def token(username: str, name: str = typer.Option("cli"),
          days: int = typer.Option(30, help="Days until the token expires (1-365)."),
          scope: Optional[str] = typer.Option(None, help="annotate | admin (admins only); default: the user's role."),
          db: str = DB_OPT) -> None:
    """Create an API token for a user; it is printed once and only its hash is stored."""
    from alignloop.feedback.security import create_api_token

    def make(s) -> str:  # type: ignore[no-untyped-def]
        user = s.scalar(select(User).where(User.username == username))
        if user is None:
            raise AlignloopError(f"user {username!r} not found")
        return create_api_token(s, user, name, scope, days)

    typer.echo(run_tx(_factory(db), make))


@annotate_app.command("create-project")
def create_project_cmd(
    name: str,
    candidates: Optional[Path] = typer.Option(None, help="JSONL of {prompt, responses[, gold]}."),
    prompts: Optional[Path] = typer.Option(None, help="Prompts (.jsonl or .txt) to generate responses for."),
    models: str = typer.Option("", help="Comma-separated models to generate with (with --prompts)."),
    task: str = typer.Option("pairwise", help="pairwise | ranking | likert | criteria"),
    access: str = typer.Option("members", help="members (only the annotators you add) | all (every annotator)"),
    members: str = typer.Option("", help="Usernames that may annotate, comma-separated (see also `members`)."),
    overlap: int = typer.Option(1), gold_rate: float = typer.Option(0.0),
    guidelines: Optional[Path] = typer.Option(None, help="Markdown file shown beside the task."),
    allow_edit: bool = typer.Option(False), k: int = typer.Option(2), temperature: float = typer.Option(0.8),
    max_new_tokens: int = typer.Option(128), seed: int = typer.Option(0), db: str = DB_OPT,
) -> None:
    """Create a project; with --models the candidates are generated here before it returns."""
    from alignloop.feedback.app import default_data_dir
    from alignloop.feedback.jobs import GenerationParams, Upload, create_from_uploads, run_generation
    from alignloop.feedback.models import Job
    from alignloop.feedback.security import Signer
    from alignloop.feedback.store import ProjectOptions
    from alignloop.feedback.web import AppState

    def upload(path: Path | None) -> Upload | None:
        if path is None:
            return None
        if not path.is_file():
            raise AlignloopError(f"{path}: no such file")
        return Upload(path.name, path.read_bytes())

    factory = _factory(db)
    # The signer is only used by web requests, which this command never serves.
    st = AppState(engine=factory.kw["bind"], factory=factory, signer=Signer(secrets.token_urlsafe(16)),
                  data_dir=default_data_dir(db))
    opts = ProjectOptions(name=name, task_type=task, overlap=overlap, gold_rate=gold_rate, allow_edit=allow_edit,
                          guidelines=guidelines.read_text(encoding="utf-8-sig") if guidelines else "", access=access,
                          members=tuple(m.strip() for m in members.split(",") if m.strip()))
    generation = GenerationParams([m.strip() for m in models.split(",") if m.strip()], k, temperature,
                                  max_new_tokens, seed) if models else None
    project_id, job_id = create_from_uploads(st, opts, upload(prompts), upload(candidates), generation,
                                             background=False)
    if job_id is not None:
        typer.echo(f"generating candidates with {models} ...")
        run_generation(st, job_id)
        job = run_tx(factory, lambda s: s.get(Job, job_id))
        if job.status != "done":
            # Nothing was labelled yet: remove the empty project so the same command can be rerun.
            run_tx(factory, lambda s: s.delete(s.get(Project, project_id)))
            raise AlignloopError(f"generation failed: {job.message}")
    typer.echo(f"project {name!r} created (id {project_id})")


@annotate_app.command()
def export(
    project: Optional[str] = typer.Argument(None, help="Project name (use --id for an id)."),
    project_id: Optional[int] = PROJECT_ID_OPT,
    out: Path = typer.Option(..., "--out", "-o", help="Output JSONL file."),
    format: str = typer.Option("pair", help="pair | ranking | sft"),
    aggregate: str = typer.Option("all", help="all (every annotator's label) | majority (consensus per item)"),
    min_agreement: Optional[float] = typer.Option(None, help="Drop items whose annotator agreement is below this."),
    include_excluded: bool = typer.Option(False, help="Keep the labels of excluded annotators (dropped by default)."),
    include_deactivated: bool = typer.Option(True, "--include-deactivated/--drop-deactivated",
                                             help="Keep (default) or drop the labels of deactivated annotators."),
    db: str = DB_OPT,
) -> None:
    """Export labels as training records (pairs for `alignloop rm` / `alignloop dpo`)."""
    from alignloop.feedback.export import export_records, write_jsonl

    factory = _factory(db)

    def collect(s):  # type: ignore[no-untyped-def]
        try:
            return export_records(s, find_project(s, project, project_id), format, aggregate, min_agreement,
                                  include_excluded, include_deactivated)
        except ValueError as err:
            raise AlignloopError(str(err)) from None

    records = run_tx(factory, collect)
    write_jsonl(records, out)
    typer.echo(f"wrote {len(records)} {format} records to {out}")


cli_admin.register(annotate_app)
