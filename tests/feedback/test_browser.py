"""Headless Chromium (Debian's, driven by Playwright): log in, annotate with keyboard shortcuts,
see progress, rank with keys (nothing pre-filled), undo, use a phone-sized screen, export as admin;
an XSS payload in a response stays text. Screenshots go to $ALIGNLOOP_TEST_OUTPUT/feedback (default test-output/)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from alignloop.feedback.db import make_engine, migrate, run_tx, session_factory
from alignloop.feedback.models import Label

from .conftest import PASSWORD, make_project, make_users
from .test_load import free_port, start_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
XSS = ('Here is my answer. <script>window.__xss = "script"</script> '
       '<img src=x onerror="window.__xss = \'img\'"> **bold** [click](javascript:window.__xss=1)')
LONG = "This response goes on and on. " * 80
SHOTS = Path(os.environ.get("ALIGNLOOP_TEST_OUTPUT", "test-output")) / "feedback"


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        from .conftest import missing_service

        missing_service(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        from .conftest import missing_service

        missing_service("the playwright package (pip install playwright)")

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    url = f"sqlite:///{tmp / 'ui.db'}"
    engine = make_engine(url)
    migrate(engine)
    factory = session_factory(engine)
    with pytest.MonkeyPatch.context() as mp:  # cheap argon2 parameters, as in conftest
        from argon2 import PasswordHasher

        from alignloop.feedback import security

        mp.setattr(security, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
        make_users(factory, "admin", role="admin")
        make_users(factory, "alice", "bob", "phone", "carol", "dora", "erin")
    guidelines = "# How to judge\n\n- Prefer **correct** answers.\n- Then the *clearer* one.\n- Flag anything unsafe."
    texts = lambda i, j: XSS if j == 0 else (LONG if i == 1 else f"A plain, correct answer number {i}.")  # noqa: E731
    make_project(factory, "Helpfulness A/B", n_items=3, overlap=2, models=["model-a", "model-b"], texts=texts,
                 guidelines=guidelines)
    make_project(factory, "Rank four", task_type="ranking", n_items=8, k=4, guidelines=guidelines)
    make_project(factory, "Long pairs", n_items=4, texts=lambda i, j: LONG, guidelines=guidelines)
    port = free_port()
    proc = start_server(url, port, tmp / "server.log")
    yield f"http://127.0.0.1:{port}", factory
    proc.terminate()
    proc.wait(timeout=30)
    engine.dispose()


def new_page(browser, base, username, **context):
    ctx = browser.new_context(**context)
    page = ctx.new_page()
    page.on("dialog", lambda d: pytest.fail(f"a dialog opened: {d.message}"))
    page.goto(base + "/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")
    return page


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"feedback-{name}.png"), full_page=True)


def labels_of(factory, username: str) -> list[dict]:
    from alignloop.feedback.models import User

    def q(s):
        uid = s.scalar(select(User.id).where(User.username == username))
        return [lab.answer for lab in s.scalars(select(Label).where(Label.user_id == uid).order_by(Label.id))]

    return run_tx(factory, q)


def test_pairwise_keyboard_progress_and_xss_as_text(browser, server):
    base, factory = server
    page = new_page(browser, base, "alice", viewport={"width": 1280, "height": 900})
    page.click("text=Helpfulness A/B")
    page.wait_for_selector("#label-form")
    shot(page, "annotate-pairwise")
    # the payload is on screen as text and none of it ran
    assert "<script>" in page.inner_text("#responses")
    assert page.evaluate("window.__xss === undefined")
    assert page.locator("#responses img").count() == 0 and page.locator("#responses a[href^=javascript]").count() == 0
    assert page.locator("#responses strong", has_text="bold").count() >= 1  # Markdown still renders
    page.keyboard.press("1")
    page.wait_for_selector("text=1 labelled")
    page.keyboard.press("t")
    page.wait_for_selector("text=2 labelled")
    answers = labels_of(factory, "alice")
    assert [a["choice"] for a in answers] == ["A", "tie"]
    assert page.evaluate("window.__xss === undefined")


def test_ranking_with_keys(browser, server):
    base, factory = server
    page = new_page(browser, base, "bob", viewport={"width": 1280, "height": 900})
    page.click("text=Rank four")
    page.wait_for_selector("#label-form")
    # d -> rank 1, c -> 2, b -> 3, a -> 3 (a tie), then Enter
    for key in ("d", "1", "c", "2", "b", "3", "a", "3"):
        page.keyboard.press(key)
    shot(page, "annotate-ranking")
    page.keyboard.press("Enter")
    page.wait_for_selector("text=1 labelled")
    (answer,) = labels_of(factory, "bob")
    assert answer["ranking_display"] == [[3], [2], [0, 1]]
    # the phone-friendly way: ▲ moves D to the top and the ranks follow the on-screen order
    for _ in range(3):
        page.locator('.response[data-position="3"] button[data-dir="-1"]').click()
    page.click("#submit")
    page.wait_for_selector("text=2 labelled")
    assert labels_of(factory, "bob")[1]["ranking_display"] == [[3], [0], [1], [2]]


def test_phone_layout_collapses_long_responses(browser, server):
    base, _factory = server
    page = new_page(browser, base, "phone", viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page.click("text=Helpfulness A/B")
    page.wait_for_selector("#label-form")
    for _ in range(3):  # find the item holding the long response
        if page.locator(".response details:not([open])").count():
            break
        page.click("button[value=B]")
        page.wait_for_load_state()
    assert page.locator(".response details:not([open])").count() == 1
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    shot(page, "mobile")
    page.tap(".response details:not([open]) summary")
    assert page.locator(".response details[open]").count() == 2


def test_admin_sees_quality_and_exports(browser, server, tmp_path):
    base, _factory = server
    page = new_page(browser, base, "admin", viewport={"width": 1280, "height": 1000})
    page.click("text=Admin")
    shot(page, "admin")
    page.click("text=Helpfulness A/B")
    page.wait_for_selector("#quality")
    assert page.locator("#leaderboard").count() == 1
    assert "3 items · overlap 2" in page.inner_text("main")
    shot(page, "project-admin")
    with page.expect_download() as dl:
        page.click("#export-form button[type=submit]")
    path = tmp_path / "export.jsonl"
    dl.value.save_as(path)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records and all(r["source"].startswith("human:") for r in records)


def test_ranking_is_not_submitted_until_every_response_is_placed(browser, server):
    base, factory = server
    page = new_page(browser, base, "carol", viewport={"width": 1280, "height": 900})
    page.click("text=Rank four")
    page.wait_for_selector("#label-form")
    page.keyboard.press("Enter")  # nothing placed: the browser refuses the form, no request is sent
    page.wait_for_timeout(300)
    assert labels_of(factory, "carol") == []
    assert page.evaluate("document.querySelector('select[name=rank_0]').validity.valueMissing")
    for key in ("a", "1", "b", "2", "c", "3"):
        page.keyboard.press(key)
    page.keyboard.press("Enter")  # D still has no rank
    page.wait_for_timeout(300)
    assert labels_of(factory, "carol") == []
    page.keyboard.press("d")
    page.keyboard.press("4")
    page.keyboard.press("Enter")
    page.wait_for_selector("text=1 labelled")
    assert labels_of(factory, "carol")[0]["ranking_display"] == [[0], [1], [2], [3]]


def test_undo_with_the_u_key(browser, server):
    base, factory = server
    page = new_page(browser, base, "carol", viewport={"width": 1280, "height": 900})
    page.click("text=Long pairs")
    page.wait_for_selector("#label-form")
    first_prompt = page.inner_text(".prompt")
    before = len(labels_of(factory, "carol"))
    page.keyboard.press("2")
    page.wait_for_selector("text=Your last item was labelled")
    assert [a.get("choice") for a in labels_of(factory, "carol")[before:]] == ["B"]
    page.keyboard.press("u")
    page.wait_for_selector("text=0 labelled")
    assert page.inner_text(".prompt") == first_prompt and len(labels_of(factory, "carol")) == before
    page.keyboard.press("1")
    page.wait_for_selector("text=1 labelled")
    assert [a.get("choice") for a in labels_of(factory, "carol")[before:]] == ["A"]


def test_phone_keeps_controls_in_view_and_guidelines_collapse(browser, server):
    base, _factory = server
    page = new_page(browser, base, "dora", viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page.click("text=Rank four")
    page.wait_for_selector("#label-form")
    assert page.locator("#guidelines[open]").count() == 1  # the first visit shows them
    for box in (page.locator("select[name=rank_0]").bounding_box(), page.locator("button.move").first.bounding_box()):
        assert box["height"] >= 44 and box["width"] >= 44
    submit = page.locator("#submit").bounding_box()
    assert submit["y"] + submit["height"] <= 844  # on screen without scrolling, though the list is longer
    page.reload()
    page.wait_for_selector("#label-form")
    assert page.locator("#guidelines[open]").count() == 0  # collapsed after the first view
    page.goto(base + "/")
    page.click("text=Long pairs")
    page.wait_for_selector("#label-form")
    button = page.locator("button[value=A]").bounding_box()
    assert button["y"] + button["height"] <= 844
    shot(page, "mobile-controls")


def test_change_an_older_label_from_my_labels(browser, server):
    base, factory = server
    page = new_page(browser, base, "erin", viewport={"width": 1280, "height": 900})
    page.click("text=Rank four")
    for n in (1, 2):
        page.wait_for_selector("#label-form")
        for pos in range(4):
            page.select_option(f"select[name=rank_{pos}]", str(pos + 1))
        page.click("#submit")
        page.wait_for_selector(f"text={n} labelled")
    page.click("#my-labels")
    page.wait_for_selector("#labels")
    assert page.locator("#labels li").count() == 2
    page.locator("#labels li").nth(1).locator("text=Change").click()  # the older label, not the last one
    page.wait_for_selector("#editing")
    assert [page.locator(f"select[name=rank_{p}]").input_value() for p in range(4)] == ["1", "2", "3", "4"]
    assert page.locator("#skip-form").count() == 0 and page.locator("#undo-form").count() == 0
    page.select_option("select[name=rank_0]", "4")
    page.select_option("select[name=rank_3]", "1")
    shot(page, "edit-label")
    page.click("#submit")
    page.wait_for_selector("#saved")
    older, newer = labels_of(factory, "erin")
    assert older["ranking_display"] == [[3], [1], [2], [0]] and newer["ranking_display"] == [[0], [1], [2], [3]]
