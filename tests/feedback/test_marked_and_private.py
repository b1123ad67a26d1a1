"""Issue 22: an excluded or deactivated annotator's labels stay in the database, marked, and every export (CLI,
API, page) can include or drop them; uploads and exports are written owner-only (0700 folders, 0600 files)."""

from __future__ import annotations

import json
import os
import stat

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from alignloop.data import load_records
from alignloop.feedback import access
from alignloop.feedback.app import create_app
from alignloop.feedback.cli import annotate_app
from alignloop.feedback.db import run_tx
from alignloop.feedback.export import export_records
from alignloop.feedback.store import get_project

from .conftest import login, make_project, make_users
from .test_export import label


def _three_annotators(factory):
    """ann (active), bob (excluded), cat (deactivated) each label both items of a project; A always wins."""
    users = make_users(factory, "ann", "bob", "cat")
    project = make_project(factory, n_items=2, overlap=3)
    for user in users:
        for _ in range(2):
            label(factory, user, project, 0)
    run_tx(factory, lambda s: access.set_excluded(s, users[1].id, True))
    run_tx(factory, lambda s: access.set_active(s, users[2].id, False))
    return users, project


def _sources(records) -> dict[str, set]:
    out: dict[str, set] = {}
    for r in records:
        out.setdefault(r["source"], set()).add(r.get("annotator_status"))
    return out


def test_export_includes_or_drops_excluded_and_deactivated_labels(sqlite_factory, tmp_path):
    (ann, bob, cat), project = _three_annotators(sqlite_factory)

    def export(**kw):
        return run_tx(sqlite_factory, lambda s: export_records(s, get_project(s, project.id), **kw))

    default = export()
    assert _sources(default) == {f"human:{ann.id}": {None}, f"human:{cat.id}": {"deactivated"}}
    assert _sources(export(include_excluded=True, include_deactivated=False)) == {
        f"human:{ann.id}": {None}, f"human:{bob.id}": {"excluded"}}
    assert _sources(export(include_deactivated=False)) == {f"human:{ann.id}": {None}}
    assert len(export(include_excluded=True)) == 6
    # marked records still load as training data
    out = tmp_path / "pairs.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in default))
    assert len(load_records(out, "pair")) == 4


def test_cli_api_and_page_offer_the_choice(tmp_path):
    db = f"sqlite:///{tmp_path / 'a.db'}"
    runner = CliRunner()
    assert runner.invoke(annotate_app, ["init", "--db", db], env={"ALIGNLOOP_ADMIN_PASSWORD": "admin-password-1"}
                         ).exit_code == 0
    app = create_app(db, data_dir=tmp_path / "data")
    (ann, _bob, cat), _project = _three_annotators(app.state.alignloop.factory)
    for flags, n in (([], 4), (["--drop-deactivated"], 2), (["--include-excluded", "--include-deactivated"], 6)):
        out = tmp_path / "x.jsonl"
        r = runner.invoke(annotate_app, ["export", "demo", "--out", str(out), "--db", db, *flags])
        assert r.exit_code == 0, r.output
        assert len(out.read_text().splitlines()) == n, flags
    with TestClient(app) as c:
        login(c, "admin", "admin-password-1")
        assert len(c.get("/api/projects/1/export").text.splitlines()) == 4
        lines = c.get("/api/projects/1/export?include_deactivated=false").text.splitlines()
        assert {json.loads(x)["source"] for x in lines} == {f"human:{ann.id}"}
        h = {"x-csrf-token": c.cookies.get("alignloop_csrf")}
        r = c.post("/api/projects/1/export-file", json={"name": "d.jsonl", "include_deactivated": False}, headers=h)
        assert r.json()["records"] == 2
        page = c.get("/admin/projects/1").text
        assert "2 labels by excluded annotators" in page and "2 by deactivated annotators" in page
        assert 'name="deactivated"' in page
        assert len(c.get("/admin/projects/1/export?deactivated=drop").text.splitlines()) == 2
        marked = [json.loads(x) for x in c.get("/admin/projects/1/export").text.splitlines()]
        assert {r.get("annotator_status") for r in marked if r["source"] == f"human:{cat.id}"} == {"deactivated"}
        assert c.get("/api/projects/1").json()["labels_deactivated"] == 2
    app.state.alignloop.engine.dispose()


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_uploads_and_exports_are_private(sqlite_client):
    c = sqlite_client
    old = os.umask(0o022)  # the usual umask: without care, folders would be 0755 and files 0644
    try:
        c.data_dir.mkdir(mode=0o755, exist_ok=True)  # an existing data folder others could read is tightened
        os.chmod(c.data_dir, 0o755)
        make_users(c.factory, "admin", role="admin")
        login(c, "admin")
        h = {"x-csrf-token": c.cookies.get("alignloop_csrf")}
        good = b'{"prompt": "p", "responses": ["a", "b"]}\n'
        r = c.post("/api/projects", data={"name": "up"}, files={"candidates": ("cands.jsonl", good)}, headers=h)
        assert r.status_code == 201
        pid, uploads = r.json()["id"], c.data_dir / "uploads"
        for folder in (c.data_dir, uploads, uploads / str(pid)):
            assert _mode(folder) == 0o700, folder
        assert _mode(uploads / str(pid) / "cands.jsonl") == 0o600
        for name in ("x.jsonl", "sub/deeper/y.jsonl"):
            r = c.post(f"/api/projects/{pid}/export-file", json={"name": name}, headers=h)
            assert r.status_code == 200, r.text
            assert _mode(r.json()["path"]) == 0o600
        exports = c.data_dir / "exports"
        for folder in (exports, exports / "sub", exports / "sub" / "deeper"):
            assert _mode(folder) == 0o700, folder
    finally:
        os.umask(old)
