"""Fixtures for the feedback app: a database per test (SQLite file and PostgreSQL), an app client,
users, and small projects."""

from __future__ import annotations

import os
import uuid

import pytest

from alignloop.feedback.db import make_engine, migrate, run_tx, session_factory
from alignloop.feedback.importers import Candidate, ItemSpec
from alignloop.feedback.store import (
    ProjectOptions,
    add_items,
    create_project,
    create_user,
)

PG_ENV = "ALIGNLOOP_TEST_PG_URL"
PASSWORD = "correct-horse-battery"


def missing_service(what: str) -> None:
    """Outside CI a missing service skips (with the reason); in CI (CI=true) it fails."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is required in CI (run .ci/feedback_services.sh)")
    pytest.skip(f"{what} not available; source .ci/feedback_services.sh to run these tests")


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch):
    """Argon2 with its production cost takes ~0.5 s a hash on a busy 2-core box; tests hash many
    passwords, so they use the same algorithm at minimum cost (security tests check the format)."""
    from argon2 import PasswordHasher

    from alignloop.feedback import security

    monkeypatch.setattr(security, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    base = os.environ.get(PG_ENV)
    if not base:
        missing_service(f"PostgreSQL (env {PG_ENV})")
    import psycopg

    name = f"alt_{uuid.uuid4().hex[:12]}"
    admin_url = base.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield admin_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'annotate.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def factory(db_url):
    engine = make_engine(db_url)
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def sqlite_factory(tmp_path):
    """For logic that does not depend on the database engine (export, metrics)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'logic.db'}")
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


def make_users(factory, *names: str, role: str = "annotator"):
    return [run_tx(factory, lambda s, n=n: create_user(s, n, PASSWORD, role)) for n in names]


def make_project(factory, name: str = "demo", task_type: str = "pairwise", n_items: int = 4, k: int = 2,
                 overlap: int = 1, gold: int = 0, gold_rate: float = 0.0, models: list[str] | None = None,
                 texts=None, access: str = "all", **opts):
    """A project with ``n_items`` regular items (and ``gold`` gold items whose best response is 0).
    Open to every annotator unless ``access="members"`` (new projects default to members only)."""
    def build(s):
        p = create_project(s, ProjectOptions(name=name, task_type=task_type, overlap=overlap, gold_rate=gold_rate,
                                          access=access, **opts))
        specs = []
        for i in range(n_items + gold):
            cands = [Candidate(texts(i, j) if texts else f"response {j} to prompt {i}",
                               (models[j % len(models)] if models else None)) for j in range(k)]
            specs.append(ItemSpec(f"prompt {i}", cands, 0 if i >= n_items else None))
        add_items(s, p, specs)
        return p

    return run_tx(factory, build)


def _client(db_url, tmp_path):
    from fastapi.testclient import TestClient

    from alignloop.feedback.app import create_app

    app = create_app(db_url, data_dir=tmp_path / "data")
    with TestClient(app) as client:
        client.factory = app.state.alignloop.factory
        client.data_dir = tmp_path / "data"
        yield client
    app.state.alignloop.engine.dispose()


@pytest.fixture
def app_client(db_url, tmp_path):
    """An in-process client of the app, on SQLite and on PostgreSQL."""
    yield from _client(db_url, tmp_path)


@pytest.fixture
def sqlite_client(tmp_path):
    yield from _client(f"sqlite:///{tmp_path / 'annotate.db'}", tmp_path)


def new_client(client):
    """A second browser/script against the same app."""
    from fastapi.testclient import TestClient

    other = TestClient(client.app)
    other.factory = client.factory
    return other


def login(client, username: str, password: str = PASSWORD):
    client.get("/login")
    return client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": client.cookies.get("alignloop_csrf")}, follow_redirects=False)


def csrf(client) -> dict:
    return {"csrf_token": client.cookies.get("alignloop_csrf")}
