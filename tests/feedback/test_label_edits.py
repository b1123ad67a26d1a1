"""Editing one's own earlier labels (issue 22), not only the last one: the API (PUT /api/labels/{id}) and the
pages ("My labels", the edit form filled with the stored answer), within the project's rules."""

from __future__ import annotations

import json
import re

from alignloop.feedback import access
from alignloop.feedback.db import run_tx
from alignloop.feedback.store import get_project

from .conftest import csrf, login, make_project, make_users, new_client


def _label_three(c, h) -> list[dict]:
    """Label three items A, B, tie through the API; returns the labels, oldest first."""
    out = []
    for choice in ("A", "B", "tie"):
        a = c.post("/api/projects/1/next", headers=h).json()["assignment"]
        r = c.post(f"/api/assignments/{a['id']}/label", json={"answer": {"choice": choice}, "rationale": choice},
                   headers=h)
        assert r.status_code == 201
        out.append(r.json())
    return out


def _session(c, name: str = "ann") -> dict:
    login(c, name)
    return {"x-csrf-token": c.cookies.get("alignloop_csrf")}


def test_api_edits_an_older_label_and_keeps_the_earlier_version(app_client):
    c = app_client
    make_users(c.factory, "ann")
    make_project(c.factory, n_items=4)
    h = _session(c)
    first, _second, third = _label_three(c, h)
    r = c.put(f"/api/labels/{first['id']}", json={"answer": {"choice": "B"}}, headers=h)
    assert r.status_code == 200
    edited = r.json()
    order = first["answer"]["display_order"]
    assert edited["answer"]["choice"] == "B" and edited["answer"]["winner"] == order[1]  # same screen order
    assert edited["rationale"] == "A"  # an omitted text stays as it was
    assert edited["updated_at"] and [v["answer"]["choice"] for v in edited["history"]] == ["A"]
    assert edited["assignment_id"] == first["assignment_id"] and edited["created_at"] == first["created_at"]
    # the same answer again is no new version; an empty rationale clears it
    assert len(c.put(f"/api/labels/{first['id']}", json={"answer": {"choice": "B"}}, headers=h).json()["history"]) == 1
    r = c.put(f"/api/labels/{first['id']}", json={"answer": {"choice": "B"}, "rationale": ""}, headers=h)
    assert r.json()["rationale"] is None and len(r.json()["history"]) == 2
    # an edit does not make the label the "last" one: undo still takes back the newest
    r = c.post(f"/api/assignments/{first['assignment_id']}/undo", headers=h)
    assert r.status_code == 409
    assert c.post(f"/api/assignments/{third['assignment_id']}/undo", headers=h).status_code == 200
    # the export uses the edited answer
    prompt = c.get(f"/api/assignments/{first['assignment_id']}").json()["prompt"]
    make_users(c.factory, "boss", role="admin")
    admin = new_client(c)
    login(admin, "boss")
    records = [json.loads(line) for line in admin.get("/api/projects/1/export").text.splitlines()]
    assert [r["chosen"] for r in records if r["prompt"] == prompt] == [f"response {order[1]} to {prompt}"]


def test_edits_follow_the_project_rules(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann")
    make_project(c.factory, n_items=3, allow_rationale=False)
    h = _session(c)
    a = c.post("/api/projects/1/next", headers=h).json()["assignment"]
    lab = c.post(f"/api/assignments/{a['id']}/label", json={"answer": {"choice": "A"}}, headers=h).json()
    # the answer is checked like a new one
    r = c.put(f"/api/labels/{lab['id']}", json={"answer": {"choice": "C"}}, headers=h)
    assert r.status_code == 422 and "choice: must be one of" in r.text
    # no rationale and no ideal response where the project takes none
    r = c.put(f"/api/labels/{lab['id']}", json={"answer": {"choice": "A"}, "rationale": "x",
                                                "edited_response": "better"}, headers=h)
    assert r.status_code == 200 and r.json()["rationale"] is None and r.json()["edited_response"] is None
    # an over-long text is refused, never cut
    r = c.put(f"/api/labels/{lab['id']}", json={"answer": {"choice": "A"}, "rationale": "x" * 20_001}, headers=h)
    assert r.status_code == 422
    # an excluded annotator can no longer change their labels
    run_tx(c.factory, lambda s: access.set_excluded(s, access.user_by_name(s, "ann").id, True))
    r = c.put(f"/api/labels/{lab['id']}", json={"answer": {"choice": "B"}}, headers=h)
    assert r.status_code == 403 and "excluded" in r.text
    run_tx(c.factory, lambda s: access.set_excluded(s, access.user_by_name(s, "ann").id, False))
    # nor can one who lost access to the project (404, as for a project they never saw)
    run_tx(c.factory, lambda s: access.set_access(s, get_project(s, 1), "members"))
    assert c.put(f"/api/labels/{lab['id']}", json={"answer": {"choice": "B"}}, headers=h).status_code == 404
    assert c.get(f"/api/labels/{lab['id']}").json()["answer"]["choice"] == "A"


def test_ideal_response_can_be_edited_where_the_project_allows_it(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann")
    make_project(c.factory, n_items=2, allow_edit=True)
    h = _session(c)
    a = c.post("/api/projects/1/next", headers=h).json()["assignment"]
    lab = c.post(f"/api/assignments/{a['id']}/label", json={"answer": {"choice": "A"}, "edited_response": "v1"},
                 headers=h).json()
    r = c.put(f"/api/labels/{lab['id']}", json={"answer": {"choice": "A"}, "edited_response": "v2"}, headers=h)
    assert r.json()["edited_response"] == "v2" and r.json()["history"][0]["edited_response"] == "v1"


def test_my_labels_page_and_the_edit_form(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann")
    make_project(c.factory, task_type="ranking", n_items=3, k=3)
    h = _session(c)
    ids = []
    for ranking in ([0, 1, 2], [2, [0, 1]]):
        a = c.post("/api/projects/1/next", headers=h).json()["assignment"]
        ids.append(c.post(f"/api/assignments/{a['id']}/label", json={"answer": {"ranking": ranking}},
                          headers=h).json()["id"])
    page = c.get("/projects/1/labels").text
    assert "2 labels" in page and page.index("C &gt; A = B") < page.index("A &gt; B &gt; C")  # newest first
    assert f'href="/labels/{ids[0]}/edit"' in page
    assert 'href="/projects/1/labels"' in c.get("/projects/1/annotate").text  # reachable while annotating
    form = c.get(f"/labels/{ids[0]}/edit").text
    assert f'action="/labels/{ids[0]}/edit"' in form and 'id="skip-form"' not in form
    for pos, rank in ((0, 1), (1, 2), (2, 3)):  # filled with the stored answer, in the order shown
        assert re.search(rf'name="rank_{pos}"(?:(?!</select>).)*<option value="{rank}" selected>', form, re.S)
    # a missing rank is named and what was entered stays
    r = c.post(f"/labels/{ids[0]}/edit", data={**csrf(c), "rank_0": "3", "rank_1": "1"})
    assert r.status_code == 422 and "C has no rank yet" in r.text and '<option value="3" selected>3</option>' in r.text
    r = c.post(f"/labels/{ids[0]}/edit", data={**csrf(c), "rank_0": "3", "rank_1": "1", "rank_2": "2"},
               follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/projects/1/labels?edited={ids[0]}"
    assert c.get(f"/api/labels/{ids[0]}").json()["answer"]["ranking_display"] == [[1], [2], [0]]
    assert f"Label #{ids[0]} changed" in c.get(r.headers["location"]).text
    # someone else's label: 404, and no form
    make_users(c.factory, "bob")
    other = new_client(c)
    login(other, "bob")
    assert other.get(f"/labels/{ids[0]}/edit").status_code == 404
    assert other.post(f"/labels/{ids[0]}/edit", data={**csrf(other), "rank_0": "1", "rank_1": "2",
                                                        "rank_2": "3"}).status_code == 404
    assert c.post(f"/labels/{ids[0]}/edit", data={"rank_0": "1"}).status_code == 403  # no CSRF token
