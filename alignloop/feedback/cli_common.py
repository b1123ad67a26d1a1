"""Helpers shared by the ``alignloop annotate`` commands: the --db option, sessions, prompts, projects."""

from __future__ import annotations

import os

import typer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from alignloop.errors import AlignloopError
from alignloop.feedback.db import DEFAULT_DB_URL, make_engine, migrate, session_factory
from alignloop.feedback.models import Project

DB_OPT = typer.Option(DEFAULT_DB_URL, "--db", envvar="ALIGNLOOP_DB",
                      help="Database URL: sqlite:///path.db (default) or postgresql://user:pass@host/db.")
PROJECT_ID_OPT = typer.Option(None, "--id", help="Give the project by its id instead of its name.")


def open_factory(db: str, run_migrations: bool = True) -> sessionmaker[Session]:
    engine = make_engine(db)
    if run_migrations:
        migrate(engine)
    return session_factory(engine)


def ask_password(env: str, prompt: str) -> str:
    """From the environment when set (scripts, CI), else an interactive hidden prompt. Never echoed."""
    value = os.environ.get(env)
    if value:
        return value
    return typer.prompt(prompt, hide_input=True, confirmation_prompt=True)


def find_project(session: Session, name: str | None, project_id: int | None) -> Project:
    """A project by NAME, or by ``--id``; never a guess between the two (a project may be named "2")."""
    if (name is None) == (project_id is None):
        raise AlignloopError("give the project's name, or its id with --id (not both)")
    if project_id is not None:
        project = session.get(Project, project_id) if 1 <= project_id < 2**31 else None
        if project is None:
            raise AlignloopError(f"no project with id {project_id}")
        return project
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        hint = f" (to give an id, use --id {name})" if name.isdigit() else ""
        raise AlignloopError(f"project {name!r} not found{hint}")
    return project
