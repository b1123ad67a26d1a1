"""Faults found in issue 22, each reproduced: out-of-range ids, hostile uploads, body and field limits,
session-bound CSRF tokens, private database files, and huge responses."""

from __future__ import annotations

import json
import os
import stat

import pytest

from .conftest import csrf, login, make_project, make_users, new_client

BIG_IDS = [2**63, 2**64, 2**31, 0, -1]


@pytest.mark.parametrize("bad", BIG_IDS)
def test_out_of_range_ids_answer_404_or_422(app_client, bad):
    c = app_client
    make_users(c.factory, "admin", role="admin")
    make_project(c.factory, n_items=1)
    login(c, "admin")
    h = {"x-csrf-token": c.cookies.get("alignloop_csrf")}
    calls = [("GET", f"/api/assignments/{bad}", {}), ("GET", f"/api/projects/{bad}", {}),
             ("GET", f"/api/labels?project_id={bad}", {}), ("GET", f"/api/labels/{bad}", {}),
             ("POST", f"/api/assignments/{bad}/label", {"json": {"answer": {"choice": "A"}}}),
             ("PUT", f"/api/labels/{bad}", {"json": {"answer": {"choice": "A"}}}),
             ("POST", f"/api/projects/{bad}/next", {}), ("GET", f"/api/projects/{bad}/export", {}),
             ("POST", f"/api/users/{bad}/exclude", {"json": {"excluded": True}}),
             ("GET", f"/projects/{bad}/annotate", {}), ("GET", f"/admin/projects/{bad}", {}),
             ("POST", f"/assignments/{bad}/skip", {"data": csrf(c)})]
    if bad:  # back=0 means "no page to go back to"
        calls.append(("POST", "/admin/users/1/exclude", {"data": {**csrf(c), "excluded": "0", "back": str(bad)}}))
    for method, url, kw in calls:
        r = c.request(method, url, headers=h, follow_redirects=False, **kw)
        assert r.status_code in (404, 422), (method, url, r.status_code)
        assert len(r.content) < 10_000


def _upload(c, data: bytes, name: str = "cands.jsonl"):
    return c.post("/api/projects", data={"name": "up", "access": "all"}, files={"candidates": (name, data)},
                  headers={"x-csrf-token": c.cookies.get("alignloop_csrf")})


def test_hostile_candidate_files_give_a_clear_error(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "admin", role="admin")
    login(c, "admin")
    deep = b'{"prompt": "p", "responses": ["a", "b"], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    r = _upload(c, deep)
    assert r.status_code == 400 and r.json()["detail"] == "cands.jsonl:1: invalid JSON (nested too deeply)"
    lone = b'{"prompt": "p \\ud800", "responses": ["a", "b"]}\n'
    r = _upload(c, lone)
    assert r.status_code == 400 and r.json()["detail"].startswith("cands.jsonl:1: text holds a lone surrogate")
    assert c.get("/api/projects").json() == []


def test_cli_reports_hostile_files_in_one_line(tmp_path):
    import subprocess
    import sys

    db = f"sqlite:///{tmp_path / 'cli.db'}"
    for name, data in (("deep.jsonl", b'{"prompt": ' + b"[" * 50_000 + b"]" * 50_000 + b"}\n"),
                       ("lone.jsonl", b'{"prompt": "p", "responses": ["\\udc80 x", "b"]}\n')):
        path = tmp_path / name
        path.write_bytes(data)
        r = subprocess.run([sys.executable, "-m", "alignloop.cli", "annotate", "create-project", "p", "--candidates",
                            str(path), "--db", db], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "COLUMNS": "200"})
        out = (r.stdout + r.stderr).strip()
        assert r.returncode != 0 and "Traceback" not in out, out
        assert len(out.splitlines()) == 1 and f"{name}:1:" in out, out


def test_utf8_bom_is_accepted(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "admin", role="admin")
    login(c, "admin")
    data = "\ufeff".encode() + json.dumps({"prompt": "p", "responses": ["a", "b"]}).encode() + b"\n"
    r = _upload(c, data)
    assert r.status_code == 201, r.text
    assert r.json()["item_count"] == 1


def test_validation_errors_never_echo_the_body(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann")
    make_project(c.factory, n_items=1)
    login(c, "ann")
    h = {"x-csrf-token": c.cookies.get("alignloop_csrf")}
    a = c.post("/api/projects/1/next", headers=h).json()["assignment"]
    r = c.post(f"/api/assignments/{a['id']}/label", headers=h,
               json={"answer": {"choice": "A"}, "rationale": "x" * 1_000_000})
    assert r.status_code == 422 and len(r.content) < 1000
    assert r.json()["detail"][0]["loc"] == ["body", "rationale"] and "20000" in r.json()["detail"][0]["msg"]
    r = c.post(f"/api/assignments/{a['id']}/label", headers={**h, "content-type": "application/json"},
               content=b'{"answer": {"choice": "A"}, "rationale": "\\ud800"}')
    assert r.status_code == 422 and "surrogate" in r.text
    r = c.post(f"/api/assignments/{a['id']}/label", headers={**h, "content-type": "application/json"},
               content=b'{"answer": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")
    assert r.status_code == 400 and len(r.content) < 200


def test_json_and_form_bodies_are_size_limited(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann")
    make_project(c.factory, n_items=1)
    login(c, "ann")
    h = {"x-csrf-token": c.cookies.get("alignloop_csrf")}
    a = c.post("/api/projects/1/next", headers=h).json()["assignment"]
    junk = {"choice": "A", **{f"k{i}": "v" * 100 for i in range(200_000)}}  # ~20 MB of junk keys
    r = c.post(f"/api/assignments/{a['id']}/label", headers=h, json={"answer": junk})
    assert r.status_code == 413 and len(r.content) < 300 and "2 MiB" in r.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"answer": {"choice": "A", "junk": "'
        for _ in range(30):
            yield b"x" * 100_000
        yield b'"}}'

    r = c.post(f"/api/assignments/{a['id']}/label", headers={**h, "content-type": "application/json"},
               content=chunks())
    assert r.status_code == 413
    r = c.post(f"/assignments/{a['id']}/label", data={**csrf(c), "choice": "A", "rationale": "x" * 3_000_000})
    assert r.status_code == 413 and r.headers["content-type"].startswith("text/html") and "nothing was saved" in r.text
    assert c.get("/api/labels").json() == []


def test_long_rationale_on_the_page_is_refused_and_the_choice_kept(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann")
    make_project(c.factory, n_items=1)
    login(c, "ann")
    page = c.get("/projects/1/annotate").text
    assert 'maxlength="20000"' in page and "up to 20,000 characters" in page
    aid = page.split('action="/assignments/')[1].split("/")[0]
    long = "why " * 25_000  # 100,000 characters
    r = c.post(f"/assignments/{aid}/label", data={**csrf(c), "choice": "B", "rationale": long})
    assert r.status_code == 422 and r.headers["content-type"].startswith("text/html")
    assert "100,000 characters; the limit is 20,000" in r.text
    assert 'value="B" data-key="2 b" class="chosen" aria-pressed="true"' in r.text  # the choice is kept
    assert long.strip() in r.text  # and so is the text, to shorten it
    assert c.get("/api/labels").json() == []  # nothing silently cut and stored
    r = c.post(f"/assignments/{aid}/label", data={**csrf(c), "choice": "B", "rationale": long[:20_000]},
               follow_redirects=False)
    assert r.status_code == 303
    assert len(c.get("/api/labels").json()[0]["rationale"]) == 20_000


def test_csrf_token_is_bound_to_the_session(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "admin", role="admin")
    make_users(c.factory, "ann")
    anon = new_client(c)
    anon.get("/login")
    anon_token = anon.cookies.get("alignloop_csrf")
    login(c, "admin")
    ann = new_client(c)
    login(ann, "ann")
    data = {"username": "mallory", "password": "longenough1"}
    for token in (anon_token, ann.cookies.get("alignloop_csrf")):  # fetched anonymously / by another user
        forged = new_client(c)
        forged.cookies.set("alignloop_session", c.cookies.get("alignloop_session"))
        forged.cookies.set("alignloop_csrf", token)
        r = forged.post("/admin/users", data={**data, "csrf_token": token}, follow_redirects=False)
        assert r.status_code == 403 and "CSRF" in r.text
        r = forged.post("/api/tokens", json={}, headers={"x-csrf-token": token})
        assert r.status_code == 403
    r = c.post("/admin/users", data={**data, **csrf(c)}, follow_redirects=False)
    assert r.status_code == 303
    # after logout the old pair no longer works with a new session either
    old = c.cookies.get("alignloop_csrf")
    c.post("/logout", data=csrf(c))
    login(c, "admin")
    assert c.cookies.get("alignloop_csrf") != old


def test_database_files_are_private(tmp_path):
    from alignloop.feedback.app import create_app

    path = tmp_path / "new.db"
    app = create_app(f"sqlite:///{path}")
    app.state.alignloop.engine.dispose()
    files = [p for p in tmp_path.iterdir() if p.name.startswith("new.db")]
    assert path in files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), \
        [(p.name, oct(p.stat().st_mode)) for p in files]
    shared = tmp_path / "old.db"
    shared.touch()
    os.chmod(shared, 0o644)
    create_app(f"sqlite:///{shared}").state.alignloop.engine.dispose()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o600


def test_huge_response_is_cut_on_the_page_and_shown_in_full_on_demand(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann")
    huge = "word " * 2_000_000  # 10 MB
    make_project(c.factory, n_items=1, texts=lambda i, j: huge if j == 0 else "short answer")
    login(c, "ann")
    page = c.get("/projects/1/annotate").text
    assert len(page) < 100_000
    assert "Cut at 20,000 of 10,000,000 characters" in page
    letter = "A" if page.index("Cut at") < page.index("short answer") else "B"
    aid = page.split('action="/assignments/')[1].split("/")[0]
    full = c.get(f"/assignments/{aid}/full/{letter}")
    assert full.status_code == 200 and full.text.count("word") == 2_000_000 and '<pre class="card plain"' in full.text
    other = new_client(c)
    make_users(c.factory, "bob")
    login(other, "bob")
    assert other.get(f"/assignments/{aid}/full/{letter}").status_code == 404  # only one's own assignment
