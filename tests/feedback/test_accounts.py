"""Accounts an organisation can run (issue 22): deactivate, passwords, sessions, expiring scoped tokens,
exclusion that really stops an annotator, and per-project membership. HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import update

from alignloop.feedback.db import run_tx
from alignloop.feedback.models import ApiToken, utcnow

from .conftest import PASSWORD, csrf, login, make_project, make_users, new_client


def _h(c) -> dict:  # type: ignore[no-untyped-def]
    return {"x-csrf-token": c.cookies.get("alignloop_csrf")}


def _bearer(token: str) -> dict:
    return {"authorization": f"Bearer {token}"}


def _admin(c):  # type: ignore[no-untyped-def]
    make_users(c.factory, "admin", role="admin")
    login(c, "admin")
    return c


def test_deactivate_ends_access_at_once_and_returns_items(app_client):
    c = _admin(app_client)
    ann_id, _bob = (u.id for u in make_users(c.factory, "ann", "bob"))
    make_project(c.factory, n_items=1, overlap=1)
    ann = new_client(c)
    login(ann, "ann")
    token = ann.post("/api/tokens", json={"name": "script"}, headers=_h(ann)).json()["token"]
    assert ann.post("/api/projects/1/next", headers=_h(ann)).json()["assignment"] is not None
    bob = new_client(c)
    login(bob, "bob")
    assert bob.post("/api/projects/1/next", headers=_h(bob)).json() == {"assignment": None}  # ann holds the item
    r = c.post(f"/api/users/{ann_id}/active", json={"active": False}, headers=_h(c))
    assert r.status_code == 200 and r.json()["active"] is False
    assert ann.get("/api/me").status_code == 401
    assert c.get("/api/me", headers=_bearer(token)).status_code == 401
    assert login(new_client(c), "ann").status_code == 401
    assert bob.post("/api/projects/1/next", headers=_h(bob)).json()["assignment"] is not None  # back in the pool
    assert c.get(f"/api/users/{ann_id}/tokens").json() == []  # revoked, not merely refused
    assert c.post(f"/api/users/{ann_id}/active", json={"active": True}, headers=_h(c)).json()["active"] is True
    assert login(new_client(c), "ann").status_code == 303
    # an admin cannot lock themselves out, nor remove the last admin
    admin_id = c.get("/api/me").json()["id"]
    assert c.post(f"/api/users/{admin_id}/active", json={"active": False}, headers=_h(c)).status_code == 409


def test_change_own_password_and_admin_reset(app_client):
    c = _admin(app_client)
    (ann_user,) = make_users(c.factory, "ann")
    ann, ann_phone = new_client(c), new_client(c)
    login(ann, "ann"), login(ann_phone, "ann")
    r = ann.post("/api/me/password", json={"current": "not-it-at-all", "new": "a-new-password"}, headers=_h(ann))
    assert r.status_code == 403
    r = ann.post("/api/me/password", json={"current": PASSWORD, "new": "a-new-password"}, headers=_h(ann))
    assert r.status_code == 200
    assert ann.get("/api/me").status_code == 200 and ann_phone.get("/api/me").status_code == 401
    assert login(new_client(c), "ann").status_code == 401
    assert login(new_client(c), "ann", "a-new-password").status_code == 303
    # the admin sets a temporary password: sessions end, the user must pick their own
    r = c.post(f"/api/users/{ann_user.id}/password", json={"password": "temporary-pw"}, headers=_h(c))
    assert r.status_code == 200 and r.json()["must_change_password"] is True
    assert ann.get("/api/me").status_code == 401
    fresh = new_client(c)
    assert login(fresh, "ann", "temporary-pw").status_code == 303
    assert fresh.get("/", follow_redirects=False).headers["location"] == "/account/password"
    assert fresh.get("/api/projects").status_code == 403
    page = fresh.get("/account/password").text
    assert "An admin set your password" in page
    r = fresh.post("/account/password", data={**csrf(fresh), "current": "temporary-pw", "new": "mine-again-pw",
                                              "confirm": "mine-again-pw"}, follow_redirects=False)
    assert r.status_code == 303
    assert fresh.get("/api/projects").status_code == 200 and fresh.get("/", follow_redirects=False).status_code == 200


def test_tokens_expire_are_listed_revoked_and_scoped(app_client):
    c = _admin(app_client)
    make_users(c.factory, "ann")
    make_project(c.factory, n_items=2)
    ann = new_client(c)
    login(ann, "ann")
    r = ann.post("/api/tokens", json={"name": "labeler", "days": 7}, headers=_h(ann))
    token = r.json()["token"]
    listed = ann.get("/api/tokens").json()
    assert [(t["name"], t["scope"], t["expired"]) for t in listed] == [("labeler", "annotate", False)]
    assert c.get("/api/projects/1/progress", headers=_bearer(token)).status_code == 200
    assert ann.post("/api/tokens", json={"scope": "admin"}, headers=_h(ann)).status_code == 400
    assert ann.post("/api/tokens", json={"days": 0}, headers=_h(ann)).status_code == 422
    # an annotate token cannot mint tokens that would outlive it
    assert c.post("/api/tokens", json={}, headers=_bearer(token)).status_code == 403
    run_tx(c.factory, lambda s: s.execute(update(ApiToken).values(expires_at=utcnow() - timedelta(seconds=1))))
    assert c.get("/api/me", headers=_bearer(token)).status_code == 401
    assert ann.get("/api/tokens").json()[0]["expired"] is True
    fresh = ann.post("/api/tokens", json={}, headers=_h(ann)).json()["token"]
    fresh_id = ann.get("/api/tokens").json()[-1]["id"]
    assert c.get("/api/me", headers=_bearer(fresh)).status_code == 200
    assert ann.delete(f"/api/tokens/{fresh_id}", headers=_h(ann)).status_code == 200
    assert c.get("/api/me", headers=_bearer(fresh)).status_code == 401
    # an admin's 'annotate' token reaches annotation routes only
    narrow = c.post("/api/tokens", json={"scope": "annotate"}, headers=_h(c)).json()["token"]
    assert c.get("/api/projects", headers=_bearer(narrow)).status_code == 200
    r = new_client(c).get("/api/users", headers=_bearer(narrow))
    assert r.status_code == 403 and "scope" in r.json()["detail"]
    wide = c.post("/api/tokens", json={}, headers=_h(c)).json()["token"]
    assert new_client(c).get("/api/users", headers=_bearer(wide)).status_code == 200


def test_sessions_are_listed_and_ended(app_client):
    c = _admin(app_client)
    (ann_user,) = make_users(c.factory, "ann")
    laptop, phone = new_client(c), new_client(c)
    login(laptop, "ann"), login(phone, "ann")
    sessions = laptop.get("/api/sessions").json()
    assert len(sessions) == 2 and [s["current"] for s in sessions].count(True) == 1
    other = next(s for s in sessions if not s["current"])
    assert laptop.delete(f"/api/sessions/{other['id']}", headers=_h(laptop)).status_code == 200
    assert phone.get("/api/me").status_code == 401 and laptop.get("/api/me").status_code == 200
    assert len(c.get(f"/api/users/{ann_user.id}/sessions").json()) == 1
    assert c.post(f"/api/users/{ann_user.id}/end-sessions", headers=_h(c)).json() == {"ended": 1}
    assert laptop.get("/api/me").status_code == 401


def test_exclude_stops_the_annotator_and_frees_their_items(app_client):
    c = _admin(app_client)
    ann_user, _ = make_users(c.factory, "ann", "bob")
    make_project(c.factory, n_items=3, overlap=1)
    ann = new_client(c)
    login(ann, "ann")
    a1 = ann.post("/api/projects/1/next", headers=_h(ann)).json()["assignment"]
    ann.post(f"/api/assignments/{a1['id']}/label", json={"answer": {"choice": "A"}}, headers=_h(ann))
    a2 = ann.post("/api/projects/1/next", headers=_h(ann)).json()["assignment"]
    assert c.post(f"/api/users/{ann_user.id}/exclude", json={"excluded": True}, headers=_h(c)).status_code == 200
    r = ann.post("/api/projects/1/next", headers=_h(ann))
    assert r.status_code == 403 and "excluded" in r.json()["detail"]
    r = ann.post(f"/api/assignments/{a2['id']}/label", json={"answer": {"choice": "A"}}, headers=_h(ann))
    assert r.status_code == 403
    assert "excluded you" in ann.get("/projects/1/annotate").text
    bob = new_client(c)
    login(bob, "bob")
    got = []
    while (a := bob.post("/api/projects/1/next", headers=_h(bob)).json()["assignment"]) is not None:
        got.append(a["item_id"])
        bob.post(f"/api/assignments/{a['id']}/label", json={"answer": {"choice": "B"}}, headers=_h(bob))
    assert sorted(got) == [1, 2, 3]  # ann's open item and the item she labelled came back to the pool
    exported = c.get("/api/projects/1/export").text.splitlines()
    assert len(exported) == 3 and {json.loads(x)["source"] for x in exported} == {"human:3"}
    assert len(c.get("/api/projects/1/export?include_excluded=true").text.splitlines()) == 4


def test_annotators_see_only_their_projects(app_client):
    c = _admin(app_client)
    ann_user, bob_user = make_users(c.factory, "ann", "bob")
    make_project(c.factory, "secret", n_items=2, access="members")
    make_project(c.factory, "open", n_items=2, access="all")
    assert c.post("/api/projects/1/members", json={"usernames": ["ann"]}, headers=_h(c)).json()["members"] == ["ann"]
    ann, bob = new_client(c), new_client(c)
    login(ann, "ann"), login(bob, "bob")
    assert [p["name"] for p in ann.get("/api/projects").json()] == ["secret", "open"]
    assert [p["name"] for p in bob.get("/api/projects").json()] == ["open"]
    assert "secret" not in bob.get("/").text and "secret" in ann.get("/").text
    for method, url in (("GET", "/api/projects/1"), ("POST", "/api/projects/1/next"),
                        ("GET", "/api/projects/1/progress"), ("GET", "/projects/1/annotate")):
        assert bob.request(method, url, headers=_h(bob)).status_code == 404, url
    a = ann.post("/api/projects/1/next", headers=_h(ann)).json()["assignment"]
    # removing ann gives her open item back; her labels would stay
    assert c.delete(f"/api/projects/1/members/{ann_user.id}", headers=_h(c)).json() == {"members": []}
    assert ann.get(f"/api/assignments/{a['id']}").json()["status"] == "released"
    assert ann.post("/api/projects/1/next", headers=_h(ann)).status_code == 404
    assert c.put("/api/projects/1/access", json={"access": "all"}, headers=_h(c)).json()["access"] == "all"
    assert bob.post("/api/projects/1/next", headers=_h(bob)).json()["assignment"] is not None
    assert c.put("/api/projects/1/access", json={"access": "everyone"}, headers=_h(c)).status_code == 400
    # admin pages: add a member from the project page and from the user's page
    c.put("/api/projects/1/access", json={"access": "members"}, headers=_h(c))
    r = c.post("/admin/projects/1/members", data={**csrf(c), "usernames": "bob"}, follow_redirects=False)
    assert r.status_code == 303 and "bob" in c.get("/admin/projects/1").text
    c.post(f"/admin/projects/1/members/{bob_user.id}/remove", data={**csrf(c), "back": str(bob_user.id)})
    assert c.get("/api/projects/1/members").json() == {"access": "members", "members": []}
    assert bob.post("/api/projects/1/next", headers=_h(bob)).status_code == 404


def test_admin_user_page_controls(sqlite_client):
    c = _admin(sqlite_client)
    (ann_user,) = make_users(c.factory, "ann")
    make_project(c.factory, "secret", n_items=1, access="members")
    page = c.get(f"/admin/users/{ann_user.id}").text
    for text in ("Deactivate", "Exclude from annotation", "Set a password", "End all sessions", "secret"):
        assert text in page
    c.post("/admin/projects/1/members", data={**csrf(c), "usernames": "ann", "back": str(ann_user.id)})
    assert c.get("/api/projects/1/members").json()["members"] == ["ann"]
    r = c.post(f"/admin/users/{ann_user.id}/password", data={**csrf(c), "password": "short"})
    assert r.status_code == 400 and "at least 8 characters" in r.text
    r = c.post(f"/admin/users/{ann_user.id}/password",
               data={**csrf(c), "password": "temp-password", "must_change": "on"})
    assert r.status_code == 200 and "Password set" in r.text
    c.post(f"/admin/users/{ann_user.id}/active", data={**csrf(c), "active": "0"})
    assert "deactivated" in c.get(f"/admin/users/{ann_user.id}").text
    assert login(new_client(c), "ann", "temp-password").status_code == 401
    r = c.post("/admin/users", data={**csrf(c), "username": "ann", "password": "long-enough-pw"})
    assert r.status_code == 409 and "already exists" in r.text  # an error on the page, not a bare JSON body


def test_account_page_lists_and_revokes(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann")
    login(c, "ann")
    r = c.post("/account/tokens", data={**csrf(c), "name": "nightly", "scope": "annotate", "days": "3"})
    assert r.status_code == 200 and "alt_" in r.text and "nightly" in r.text
    token_id = c.get("/api/tokens").json()[0]["id"]
    c.post(f"/account/tokens/{token_id}/revoke", data=csrf(c))
    assert c.get("/api/tokens").json() == []
    assert "this browser" in c.get("/account").text
