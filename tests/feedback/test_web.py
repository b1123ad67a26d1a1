"""The annotate flow over HTTP for every task type, progress, admin pages, the CLI, live generation."""

from __future__ import annotations

import json
import re
import time

import pytest
from typer.testing import CliRunner

from alignloop.data import load_records
from alignloop.feedback.cli import annotate_app

from .conftest import csrf, login, make_project, make_users, new_client


def _assignment_id(page: str) -> str:
    return re.search(r'action="/assignments/(\d+)/label"', page).group(1)


FORMS = {
    "pairwise": {"choice": "A"},
    "ranking": {"rank_0": "2", "rank_1": "1", "rank_2": "2"},
    "likert": {"score_0": "7", "score_1": "3", "score_2": "5"},
    "criteria": {"crit_helpful": "A", "crit_harmless": "tie", "crit_honest": "B"},
}


@pytest.mark.parametrize("task", list(FORMS))
def test_annotate_pages_for_each_task(app_client, task):
    c = app_client
    make_users(c.factory, "ann")
    make_project(c.factory, task_type=task, n_items=2, k=2 if task in ("pairwise", "criteria") else 3)
    login(c, "ann")
    for n in range(2):
        page = c.get("/projects/1/annotate").text
        assert f"{n} labelled" in page
        aid = _assignment_id(page)
        r = c.post(f"/assignments/{aid}/label", data={**csrf(c), **FORMS[task]}, follow_redirects=False)
        assert r.status_code == 303, r.text
        # a double click posts the same answer again: one label, no error
        assert c.post(f"/assignments/{aid}/label", data={**csrf(c), **FORMS[task]}, follow_redirects=False).status_code == 303
    page = c.get("/projects/1/annotate").text
    assert "2 labelled" in page and "Nothing left for you" in page
    labels = c.get("/api/labels").json()
    assert len(labels) == 2
    if task == "ranking":  # ranks 2,1,2 on screen: position 1 first, positions 0 and 2 tied
        assert labels[0]["answer"]["ranking_display"] == [[1], [0, 2]]


def test_skip_flag_and_progress_over_api(app_client):
    c = app_client
    make_users(c.factory, "ann")
    make_project(c.factory, n_items=3)
    login(c, "ann")
    h = {"x-csrf-token": c.cookies.get("alignloop_csrf")}
    a1 = c.post("/api/projects/1/next", headers=h).json()["assignment"]
    assert c.post(f"/api/assignments/{a1['id']}/skip", headers=h).json() == {"status": "skipped"}
    a2 = c.post("/api/projects/1/next", headers=h).json()["assignment"]
    assert a2["item_id"] != a1["item_id"]
    assert c.post(f"/api/assignments/{a2['id']}/flag", json={"reason": "broken"}, headers=h).json() == {"status": "flagged"}
    a3 = c.post("/api/projects/1/next", headers=h).json()["assignment"]
    r = c.post(f"/api/assignments/{a3['id']}/label", json={"answer": {"choice": "tie"}, "rationale": "same"}, headers=h)
    assert r.status_code == 201 and r.json()["rationale"] == "same"
    assert c.post(f"/api/assignments/{a3['id']}/label", json={"answer": {"choice": "tie"}}, headers=h).status_code == 200
    assert c.post(f"/api/assignments/{a3['id']}/label", json={"answer": {"choice": "A"}}, headers=h).status_code == 409
    bad = c.post("/api/projects/1/next", headers=h)
    assert bad.json() == {"assignment": None}
    assert c.get("/api/projects/1/progress").json() == {
        "done": 1, "skipped": 1, "flagged": 1, "left": 0, "total_items": 3, "target_labels": 3}


def test_admin_pages_quality_export_and_exclude(app_client):
    c = app_client
    make_users(c.factory, "admin", role="admin")
    make_users(c.factory, "ann1", "ann2")
    make_project(c.factory, n_items=2, overlap=2, models=["m-one", "m-two"])
    for name in ("ann1", "ann2"):
        a = new_client(c)
        login(a, name)
        for _ in range(2):
            aid = _assignment_id(a.get("/projects/1/annotate").text)
            a.post(f"/assignments/{aid}/label", data={**csrf(a), "choice": "A"})
    login(c, "admin")
    page = c.get("/admin/projects/1").text
    assert "Krippendorff" in page and "ann1" in page and "Leaderboard" in page and "m-one" in page
    # annotators never see model names
    ann = new_client(c)
    login(ann, "ann1")
    assert "m-one" not in ann.get("/api/assignments/1").text
    exported = c.get("/api/projects/1/export").text.splitlines()
    assert len(exported) == 4
    user_ids = {json.loads(line)["source"] for line in exported}
    excluded_id = sorted(user_ids)[0].split(":")[1]
    r = c.post(f"/admin/users/{excluded_id}/exclude", data={**csrf(c), "excluded": "1", "back": "1"}, follow_redirects=False)
    assert r.status_code == 303
    assert len(c.get("/admin/projects/1/export?format=pair&aggregate=all&min_agreement=").text.splitlines()) == 2
    assert c.get("/api/projects/1/leaderboard?rounds=20").status_code == 200


def test_cli_init_add_user_token_create_project_and_export(tmp_path, monkeypatch):
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    monkeypatch.setenv("ALIGNLOOP_ADMIN_PASSWORD", "s3cret-admin-pw")
    r = runner.invoke(annotate_app, ["init", "--db", db])
    assert r.exit_code == 0, r.output
    assert "s3cret-admin-pw" not in r.output and "admin account 'admin' created" in r.output
    assert "already exists" in runner.invoke(annotate_app, ["init", "--db", db]).output
    monkeypatch.setenv("ALIGNLOOP_USER_PASSWORD", "annotator-pw")
    assert runner.invoke(annotate_app, ["add-user", "ann", "--db", db]).exit_code == 0
    token = runner.invoke(annotate_app, ["token", "ann", "--db", db]).output.strip()
    assert token.startswith("alt_")
    cands = tmp_path / "cands.jsonl"
    cands.write_text("".join(json.dumps({"prompt": f"p{i}", "responses": [f"a{i}", f"b{i}"]}) + "\n" for i in range(3)))
    r = runner.invoke(annotate_app, ["create-project", "demo", "--candidates", str(cands), "--members", "ann",
                                     "--db", db])
    assert r.exit_code == 0, r.output

    from fastapi.testclient import TestClient

    from alignloop.feedback.app import create_app

    with TestClient(create_app(db, data_dir=tmp_path / "data")) as client:
        h = {"authorization": f"Bearer {token}"}
        for _ in range(3):
            a = client.post("/api/projects/1/next", headers=h).json()["assignment"]
            client.post(f"/api/assignments/{a['id']}/label", json={"answer": {"choice": "B"}}, headers=h)
    out = tmp_path / "prefs.jsonl"
    r = runner.invoke(annotate_app, ["export", "demo", "--out", str(out), "--db", db])
    assert r.exit_code == 0 and "wrote 3 pair records" in r.output
    records = load_records(out, "pair")
    assert len(records) == 3
    # annotate -> export -> rm: the exported file trains a reward model as it is
    from alignloop.pipeline.launch import run_stage

    summary = run_stage("rm", None, [
        "model=tiny-llama", f"data.train={out}", f"data.eval={out}", "train.max_steps=2", "train.batch_size=2",
        "train.precision=fp32", "train.save_every=0",
    ], tmp_path / "rm")
    assert summary["steps"] == 2 and 0.0 <= summary["eval_accuracy"] <= 1.0
    assert (tmp_path / "rm" / "summary.json").exists()


@pytest.mark.slow
def test_live_generation_with_tiny_llama(sqlite_client):
    pytest.importorskip("alignloop.rollout.hf")
    c = sqlite_client
    make_users(c.factory, "admin", role="admin")
    login(c, "admin")
    prompts = b"Say hello.\nName a colour.\nCount to three.\n"
    r = c.post("/api/projects", headers={"x-csrf-token": c.cookies.get("alignloop_csrf")},
               data={"name": "live", "task_type": "pairwise", "models": "tiny-llama", "k": "2",
                     "max_new_tokens": "8", "temperature": "1.0"},
               files={"prompts": ("prompts.txt", prompts)})
    assert r.status_code == 201, r.text
    deadline = time.time() + 120
    while time.time() < deadline:
        jobs = c.get("/api/projects/1/jobs").json()
        if jobs[0]["status"] in ("done", "failed"):
            break
        time.sleep(0.5)
    assert jobs[0]["status"] == "done", jobs
    assert jobs[0]["done"] == jobs[0]["total"] == 3
    project = c.get("/api/projects/1").json()
    assert project["status"] == "ready" and project["item_count"] == 3  # 3 prompts x C(2,2) pairs
    a = c.post("/api/projects/1/next", headers={"x-csrf-token": c.cookies.get("alignloop_csrf")}).json()["assignment"]
    assert len(a["responses"]) == 2 and "tiny-llama" not in json.dumps(a)
