"""The annotate page without built-in bias (issue 22): nothing pre-filled, a message for every missing
value, the rationale before the choice, undo of the last answer or skip, and "N of M left"."""

from __future__ import annotations

import re

from .conftest import csrf, login, make_project, make_users, new_client


def _aid(page: str) -> str:
    return re.search(r'action="/assignments/(\d+)/label"', page).group(1)


def test_ranking_starts_unplaced_and_every_response_must_be_placed(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann")
    make_project(c.factory, task_type="ranking", n_items=1, k=4)
    login(c, "ann")
    page = c.get("/projects/1/annotate").text
    assert page.count('<option value="" selected>–</option>') == 4  # no order proposed, so none to accept
    assert page.count("required>") >= 4 and 'selected>1<' not in page
    r = c.post(f"/assignments/{_aid(page)}/label", data={**csrf(c), "rank_0": "2", "rank_2": "1"})
    assert r.status_code == 422 and "place every response: B, D have no rank yet" in r.text
    assert '<option value="2" selected>2</option>' in r.text and '<option value="1" selected>1</option>' in r.text
    assert c.get("/api/labels").json() == []
    r = c.post(f"/assignments/{_aid(page)}/label",
               data={**csrf(c), "rank_0": "2", "rank_1": "4", "rank_2": "1", "rank_3": "3"}, follow_redirects=False)
    assert r.status_code == 303
    (label,) = c.get("/api/labels").json()
    order = label["answer"]["display_order"]  # what was on screen, recorded so the order can be undone
    assert label["answer"]["ranking"] == [[order[2]], [order[0]], [order[3]], [order[1]]]


def test_likert_scores_sit_outside_collapsed_text_and_missing_ones_are_named(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann")
    make_project(c.factory, task_type="likert", n_items=1, k=3, texts=lambda i, j: "long " * 1000 if j == 1 else "ok")
    login(c, "ann")
    page = c.get("/projects/1/annotate").text
    assert "<details class=\"text\" >" in page  # a collapsed long response...
    for card in page.split('class="card response"')[1:]:
        assert card.index("</details>") < card.index('class="likert"')  # ...whose score is still in view
    r = c.post(f"/assignments/{_aid(page)}/label", data={**csrf(c), "score_0": "5"})
    assert r.status_code == 422 and "score every response: B, C have no score yet" in r.text
    assert 'value="5" required checked' in r.text


def test_rationale_comes_before_the_choice_buttons(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann")
    make_project(c.factory, n_items=1)
    login(c, "ann")
    page = c.get("/projects/1/annotate").text
    assert page.index('name="rationale"') < page.index('name="choice"')


def test_undo_the_last_label_and_the_last_skip(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann", "bob")
    make_project(c.factory, n_items=3, overlap=1)
    login(c, "ann")
    page = c.get("/projects/1/annotate").text
    assert "3 of 3 left for you" in page and "undo-form" not in page
    first = _aid(page)
    c.post(f"/assignments/{first}/label", data={**csrf(c), "choice": "A"})
    page = c.get("/projects/1/annotate").text
    assert "2 of 3 left for you" in page and "Your last item was labelled" in page
    r = c.post(f"/assignments/{first}/undo", data=csrf(c), follow_redirects=False)
    assert r.status_code == 303 and c.get("/api/labels").json() == []
    page = c.get("/projects/1/annotate").text
    assert _aid(page) == first  # the same item comes back first
    c.post(f"/assignments/{first}/label", data={**csrf(c), "choice": "B"})
    assert [lab["answer"]["choice"] for lab in c.get("/api/labels").json()] == ["B"]
    # an older answer is not undone from the page (the API's PUT edits any of one's labels)
    second = _aid(c.get("/projects/1/annotate").text)
    c.post(f"/assignments/{second}/skip", data=csrf(c))
    assert c.post(f"/assignments/{first}/undo", data=csrf(c)).status_code == 409
    assert "Your last item was skipped" in c.get("/projects/1/annotate").text
    c.post(f"/assignments/{second}/undo", data=csrf(c))
    assert _aid(c.get("/projects/1/annotate").text) == second
    # a skip whose item someone else took meanwhile cannot be undone
    c.post(f"/assignments/{second}/skip", data=csrf(c))
    bob = new_client(c)
    login(bob, "bob")
    h = {"x-csrf-token": bob.cookies.get("alignloop_csrf")}
    taken = {bob.post("/api/projects/1/next", headers=h).json()["assignment"]["item_id"]}
    while (a := bob.post("/api/projects/1/next", headers=h).json()["assignment"]) is not None:
        bob.post(f"/api/assignments/{a['id']}/label", json={"answer": {"choice": "A"}}, headers=h)
        taken.add(a["item_id"])
    r = c.post(f"/assignments/{second}/undo", data=csrf(c))
    assert r.status_code == 409 and "other annotators have taken this item" in r.text


def test_a_changed_answer_gets_a_page_that_points_to_undo(sqlite_client):
    c = sqlite_client
    make_users(c.factory, "ann")
    make_project(c.factory, n_items=2)
    login(c, "ann")
    aid = _aid(c.get("/projects/1/annotate").text)
    c.post(f"/assignments/{aid}/label", data={**csrf(c), "choice": "A"})
    r = c.post(f"/assignments/{aid}/label", data={**csrf(c), "choice": "B"})  # the back button, another choice
    assert r.status_code == 409 and "Use Undo" in r.text and 'id="label-form"' in r.text
