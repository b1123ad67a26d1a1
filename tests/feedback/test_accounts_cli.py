"""`alignloop annotate` account commands, export by name (or --id), and upgrading a database made
before accounts could be managed."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import text
from typer.testing import CliRunner

from alignloop.feedback.app import create_app
from alignloop.feedback.cli import annotate_app
from alignloop.feedback.db import MIGRATIONS_DIR, make_engine, migrate
from alignloop.feedback.models import utcnow
from alignloop.feedback.security import hash_password, sha256

from .conftest import PASSWORD, csrf, login, make_project

runner = CliRunner()


def cli(*args: str, db: str):  # type: ignore[no-untyped-def]
    r = runner.invoke(annotate_app, [*args, "--db", db])
    return r


def test_account_commands(tmp_path, monkeypatch):
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("ALIGNLOOP_ADMIN_PASSWORD", "s3cret-admin-pw")
    monkeypatch.setenv("ALIGNLOOP_USER_PASSWORD", PASSWORD)
    assert cli("init", db=db).exit_code == 0
    for name in ("ann", "bob"):
        assert cli("add-user", name, db=db).exit_code == 0
    token = cli("token", "ann", "--days", "2", db=db).output.strip()
    assert token.startswith("alt_")
    assert "annotate" in cli("tokens", "ann", db=db).output
    assert cli("token", "ann", "--scope", "admin", db=db).exit_code != 0  # annotators hold annotate tokens only
    cands = tmp_path / "c.jsonl"
    cands.write_text("".join(json.dumps({"prompt": f"p{i}", "responses": ["a", "b"]}) + "\n" for i in range(2)))
    assert cli("create-project", "team", "--candidates", str(cands), db=db).exit_code == 0
    r = cli("members", "team", "--add", "ann", db=db)
    assert r.exit_code == 0 and "members only; members: ann" in r.output
    with TestClient(create_app(db, data_dir=tmp_path / "d")) as client:
        h = {"authorization": f"Bearer {token}"}
        assert [p["name"] for p in client.get("/api/projects", headers=h).json()] == ["team"]
        a = client.post("/api/projects/1/next", headers=h).json()["assignment"]
        assert client.post(f"/api/assignments/{a['id']}/label", json={"answer": {"choice": "A"}},
                           headers=h).status_code == 201
        assert cli("exclude", "ann", db=db).exit_code == 0
        assert client.post("/api/projects/1/next", headers=h).status_code == 403
        assert cli("exclude", "ann", "--undo", db=db).exit_code == 0
        assert "ann" in cli("users", db=db).output
        assert cli("deactivate", "ann", db=db).exit_code == 0
        assert client.get("/api/me", headers=h).status_code == 401
        assert "deactivated" in cli("users", db=db).output
        assert cli("reactivate", "ann", db=db).exit_code == 0
        assert client.get("/api/me", headers=h).status_code == 401  # deactivation revoked the token for good
        monkeypatch.setenv("ALIGNLOOP_USER_PASSWORD", "temporary-pw")
        assert cli("set-password", "bob", db=db).exit_code == 0
        assert "must-change-password" in cli("users", db=db).output
        assert login(client, "bob", "temporary-pw").headers["location"] == "/"
        assert client.get("/", follow_redirects=False).headers["location"] == "/account/password"
        assert "ended 1 session" in cli("end-sessions", "bob", db=db).output
        new = cli("token", "bob", db=db).output.strip()
        token_id = cli("tokens", "bob", db=db).output.split()[0]
        assert cli("revoke-token", token_id, db=db).exit_code == 0
        assert client.get("/api/me", headers={"authorization": f"Bearer {new}"}).status_code == 401
    r = cli("members", "team", "--access", "all", "--remove", "ann", db=db)
    assert "every annotator; members: (none)" in r.output
    assert cli("revoke-token", "99", db=db).exception is not None


def test_rotate_secret_ends_every_session(tmp_path):
    db = f"sqlite:///{tmp_path / 'r.db'}"
    app = create_app(db, data_dir=tmp_path / "d")
    from .conftest import make_users

    make_users(app.state.alignloop.factory, "ann")
    with TestClient(app) as client:
        login(client, "ann")
        cookie = client.cookies.get("alignloop_session")
    r = cli("rotate-secret", db=db)
    assert r.exit_code == 0 and "1 session(s) ended" in r.output
    with TestClient(create_app(db, data_dir=tmp_path / "d")) as client:  # a restarted server
        client.cookies.set("alignloop_session", cookie)
        assert client.get("/api/me").status_code == 401
        assert login(client, "ann").status_code == 303


def test_export_resolves_a_name_and_takes_ids_only_with_id(tmp_path, sqlite_factory):
    db = str(sqlite_factory.kw["bind"].url)
    make_project(sqlite_factory, "first", n_items=1)
    make_project(sqlite_factory, "2", n_items=3)  # a project *named* 2, whose id is 2 as well...
    make_project(sqlite_factory, "third", n_items=1)
    out = tmp_path / "x.jsonl"
    for ref in (["2"], ["--id", "3"]):
        r = cli("export", *ref, "--out", str(out), db=db)
        assert r.exit_code == 0, r.output
    r = cli("export", "3", "--out", str(out), db=db)
    assert "project '3' not found (to give an id, use --id 3)" in str(r.exception)
    r = cli("export", "--id", str(2**40), "--out", str(out), db=db)
    assert "no project with id" in str(r.exception)
    assert "not both" in str(cli("export", "2", "--id", "2", "--out", str(out), db=db).exception)


def test_database_from_before_access_control_upgrades(tmp_path):
    """A database at revision 0001 with users, a token and a project keeps working after the upgrade:
    the project stays open to every annotator, and tokens get scopes and 30 days before they expire."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        now = utcnow()
        for uid, name, role in ((1, "boss", "admin"), (2, "ann", "annotator")):
            conn.execute(text("INSERT INTO users VALUES (:i, :n, :h, :r, 1, 0, :t)"),
                         {"i": uid, "n": name, "h": hash_password(PASSWORD), "r": role, "t": now})
            conn.execute(text("INSERT INTO api_tokens VALUES (:i, :i, 'old', :h, :t)"),
                         {"i": uid, "h": sha256(f"alt_old{uid}"), "t": now})
        conn.execute(text("INSERT INTO projects VALUES (1, 'legacy', 'pairwise', '', 1, 0, 1, 0, '[]', 'ready', :t)"),
                     {"t": now})
    migrate(engine)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT user_id, scope, expires_at FROM api_tokens ORDER BY user_id")).all()
        assert conn.execute(text("SELECT access FROM projects")).scalar() == "all"
    assert [(r[0], r[1]) for r in rows] == [(1, "admin"), (2, "annotate")]
    for r in rows:
        expires = datetime.fromisoformat(r[2]) if isinstance(r[2], str) else r[2]
        assert timedelta(days=29) < expires - utcnow() <= timedelta(days=30)
    engine.dispose()
    with TestClient(create_app(url, data_dir=tmp_path / "d")) as client:
        assert client.get("/api/projects", headers={"authorization": "Bearer alt_old2"}).json()[0]["name"] == "legacy"
        assert client.get("/api/users", headers={"authorization": "Bearer alt_old1"}).status_code == 200
        login(client, "ann")
        assert client.post("/assignments/1/skip", data=csrf(client)).status_code == 404  # and nothing breaks
