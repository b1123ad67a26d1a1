"""Security: hashing, sessions, CSRF, roles, IDOR, anonymous API, escaping, paths, uploads, binding."""

from __future__ import annotations

import inspect
import re

from sqlalchemy import select

from alignloop.feedback import cli
from alignloop.feedback.models import ApiToken, AppSetting, LoginSession, User
from alignloop.feedback.security import sha256

from .conftest import PASSWORD, csrf, login, make_project, make_users, new_client


def test_passwords_argon2_and_tokens_stored_hashed(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann")
    assert login(c, "ann").status_code == 303
    r = c.post("/api/tokens", json={"name": "t"}, headers={"x-csrf-token": c.cookies.get("alignloop_csrf")})
    token = r.json()["token"]
    with c.factory() as s:
        user = s.scalar(select(User).where(User.username == "ann"))
        assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash
        stored = s.scalars(select(ApiToken.token_hash)).all()
        assert stored == [sha256(token)] and token not in stored
        secret = s.get(AppSetting, "secret_key").value
        assert len(secret) >= 48


def test_session_cookie_flags_and_logout_invalidates(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann")
    r = login(c, "ann")
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    stolen = c.cookies.get("alignloop_session")
    assert c.get("/api/me").status_code == 200
    assert c.post("/logout", data=csrf(c), follow_redirects=False).status_code == 303
    with c.factory() as s:
        assert s.scalars(select(LoginSession)).all() == []
    replay = new_client(c)
    replay.cookies.set("alignloop_session", stolen)
    assert replay.get("/api/me").status_code == 401


def test_login_rate_limited(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann")
    codes = [login(c, "ann", "wrong-password").status_code for _ in range(6)]
    assert codes == [401] * 5 + [429]
    assert login(c, "ann").status_code == 429  # even the right password waits out the window


def test_csrf_required_on_state_changes(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "admin", role="admin")
    login(c, "admin")
    r = c.post("/admin/users", data={"username": "x1", "password": "longenough"})
    assert r.status_code == 403 and "CSRF" in r.text
    r = c.post("/admin/users", data={"username": "x1", "password": "longenough", "csrf_token": "forged"})
    assert r.status_code == 403
    assert c.post("/api/tokens", json={"name": "t"}).status_code == 403
    r = c.post("/admin/users", data={"username": "x1", "password": "longenough", **csrf(c)}, follow_redirects=False)
    assert r.status_code == 303


def test_no_api_route_answers_anonymous_callers(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann")
    make_project(c.factory, n_items=1)
    schema = c.get("/openapi.json").json()
    api_paths = [p for p in schema["paths"] if p.startswith("/api/")]
    assert len(api_paths) >= 15
    for path, methods in schema["paths"].items():
        if not path.startswith("/api/"):
            continue
        url = re.sub(r"\{[^}]+\}", "1", path)
        for method in methods:
            r = c.request(method.upper(), url, json={})
            assert r.status_code == 401, (method, path, r.status_code)
            assert set(r.json()) == {"detail"}
    assert c.get("/api/me", headers={"authorization": "Bearer alt_guessed"}).status_code == 401


def test_roles_enforced(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann")
    make_project(c.factory, n_items=1)
    login(c, "ann")
    assert c.get("/admin").status_code == 403
    assert c.get("/admin/projects/1").status_code == 403
    assert c.get("/api/projects/1/export").status_code == 403
    assert c.get("/api/projects/1/quality").status_code == 403
    r = c.post("/api/users", json={"username": "evil", "password": "longenough", "role": "admin"},
               headers={"x-csrf-token": c.cookies.get("alignloop_csrf")})
    assert r.status_code == 403


def test_no_idor_on_assignments_and_labels(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann1", "ann2")
    make_project(c.factory, n_items=2, overlap=2)
    login(c, "ann1")
    h = {"x-csrf-token": c.cookies.get("alignloop_csrf")}
    a = c.post("/api/projects/1/next", headers=h).json()["assignment"]
    lab = c.post(f"/api/assignments/{a['id']}/label", json={"answer": {"choice": "A"}}, headers=h).json()
    other = new_client(c)
    login(other, "ann2")
    h2 = {"x-csrf-token": other.cookies.get("alignloop_csrf")}
    assert other.get(f"/api/assignments/{a['id']}").status_code == 404
    assert other.post(f"/api/assignments/{a['id']}/label", json={"answer": {"choice": "B"}}, headers=h2).status_code == 404
    assert other.post(f"/api/assignments/{a['id']}/skip", headers=h2).status_code == 404
    assert other.get(f"/api/labels/{lab['id']}").status_code == 404
    assert other.put(f"/api/labels/{lab['id']}", json={"answer": {"choice": "B"}}, headers=h2).status_code == 404
    assert other.get("/api/labels").json() == []
    # blind: ann2's view of the same item carries nothing of ann1's answer
    b = other.post("/api/projects/1/next", headers=h2).json()["assignment"]
    assert set(b) == {"id", "project_id", "item_id", "status", "prompt", "responses"}
    assert all(set(r) == {"position", "letter", "text"} for r in b["responses"])
    # the owner can read and change their own label
    assert c.put(f"/api/labels/{lab['id']}", json={"answer": {"choice": "B"}}, headers=h).json()["answer"]["choice"] == "B"


XSS = '<script>alert("x")</script><img src=x onerror="alert(1)"> [link](javascript:alert(2))'


def test_model_text_escaped_in_pages(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann")
    make_project(c.factory, n_items=1, texts=lambda i, j: XSS, guidelines=XSS)
    login(c, "ann")
    page = c.get("/projects/1/annotate").text
    assert "<script>alert" not in page and "<img src=x" not in page and 'href="javascript:' not in page
    assert "&lt;script&gt;alert" in page and "&lt;img src=x onerror=" in page
    headers = c.get("/projects/1/annotate").headers
    assert "script-src 'self'" in headers["content-security-policy"]


def test_upload_errors_name_the_line_and_size_is_limited(sqlite_client, monkeypatch):
    c = sqlite_client
    make_users(c.factory, "admin", role="admin")
    login(c, "admin")
    bad = b'{"prompt": "ok", "responses": ["a", "b"]}\n{"prompt": "x", "responses": ["only one"]}\n{oops\n'
    r = c.post("/admin/projects", data={"name": "p", **csrf(c)}, files={"candidates": ("cands.jsonl", bad)})
    assert r.status_code == 400
    assert "cands.jsonl:2: responses: need a list of at least 2 responses" in r.text
    assert "cands.jsonl:3: invalid JSON" in r.text
    from alignloop.feedback import forms

    monkeypatch.setattr(forms, "MAX_UPLOAD_BYTES", 100)
    big = b'{"prompt": "p", "responses": ["' + b"a" * 200 + b'", "b"]}\n'
    r = c.post("/api/projects", data={"name": "p"}, files={"candidates": ("big.jsonl", big)},
               headers={"x-csrf-token": c.cookies.get("alignloop_csrf")})
    assert r.status_code == 413 and "over the 100 byte limit" in r.json()["detail"]


def test_export_and_upload_paths_cannot_escape(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "admin", role="admin")
    make_project(c.factory, n_items=1)
    login(c, "admin")
    h = {"x-csrf-token": c.cookies.get("alignloop_csrf")}
    for name in ("../evil.jsonl", "/etc/passwd", "a/../../evil.jsonl"):
        r = c.post("/api/projects/1/export-file", json={"name": name}, headers=h)
        assert r.status_code == 400 and "name:" in r.json()["detail"]
    r = c.post("/api/projects/1/export-file", json={"name": "ok.jsonl"}, headers=h)
    assert r.status_code == 200 and r.json()["path"] == str((c.data_dir / "exports" / "ok.jsonl").resolve())
    good = b'{"prompt": "p", "responses": ["a", "b"]}\n'
    r = c.post("/api/projects", data={"name": "up"}, files={"candidates": ("../../escape.jsonl", good)}, headers=h)
    assert r.status_code == 201
    saved = list((c.data_dir / "uploads").rglob("*.jsonl"))
    assert [p.name for p in saved] == ["escape.jsonl"] and saved[0].parent.name == str(r.json()["id"])


def test_server_binds_loopback_by_default_and_secret_is_generated(tmp_path):
    defaults = {p.name: p.default for p in inspect.signature(cli.serve).parameters.values()}
    assert defaults["host"].default == "127.0.0.1"
    from alignloop.feedback.app import create_app

    secrets = []
    for name in ("a.db", "b.db", "a.db"):  # a.db twice: a restart keeps its key (and sessions)
        app = create_app(f"sqlite:///{tmp_path / name}")
        with app.state.alignloop.factory() as s:
            secrets.append(s.get(AppSetting, "secret_key").value)
        app.state.alignloop.engine.dispose()
    assert secrets[0] != secrets[1] and secrets[0] == secrets[2]
