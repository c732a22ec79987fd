"""The real app in a real browser: Debian's Chromium driven by Playwright.

The app runs on 127.0.0.1 with tiny random-init models in both roles and a
promoted tiny LoRA adapter `v1`, so the models banner, the stage table and the
Training tab all have real state to show. The browser asks, watches both
stages finish, rates, downloads the log export and opens the Training tab.
Screenshots and the downloaded export go to $COWEST_TEST_ARTIFACTS
(default: test-artifacts/ in the repo root).

Playwright never downloads a browser here: it launches the system Chromium.
Without one the tests skip, unless COWEST_REQUIRE_BROWSER is set (CI sets it),
in which case they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from cowest_app.loop.registry import AdapterRegistry, AdapterVersion
from tests.conftest import make_lora_adapter

ROOT = Path(__file__).parents[2]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
STAGE_TIMEOUT_MS = 60_000  # the shared 2-core machine can be slow; tiny models usually need ~1 s
XSS_QUESTION = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


def find_chromium() -> str | None:
    configured = os.environ.get("COWEST_CHROMIUM")
    if configured:
        return shutil.which(configured)
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


@pytest.fixture(scope="module")
def chromium_path() -> str:
    path = find_chromium()
    if path is None:
        tried = os.environ.get("COWEST_CHROMIUM") or ", ".join(CHROMIUM_NAMES)
        reason = (f"no Chromium executable found (tried {tried}); `apt-get install chromium` "
                  "or set COWEST_CHROMIUM to one")
        if os.environ.get("COWEST_REQUIRE_BROWSER"):
            pytest.fail(f"COWEST_REQUIRE_BROWSER is set but {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def artifacts_dir() -> Path:
    path = Path(os.environ.get("COWEST_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


DEFAULT_PACK = "saltmarsh-formulary"  # the first of the app's default COWEST_PACKS


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _promote_tiny_adapter(data_dir: Path, base_dir: Path) -> None:
    """Register and promote a real LoRA adapter as the default pack's v1, as a finished training run would."""
    registry = AdapterRegistry(data_dir / "adapters" / DEFAULT_PACK)
    staged = make_lora_adapter(base_dir, registry.staging_dir("v1"), seed=1)
    registry.register(staged, AdapterVersion(version="v1", status="candidate", base_model=str(base_dir), n_pairs=8,
                                             metrics={"train_loss": 0.62, "rewards/margins": 0.41}))
    registry.promote("v1")


def _wait_for_port(proc: subprocess.Popen, port: int, log_path: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app exited early:\n{log_path.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"app did not start:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def app_url(chromium_path, tmp_path_factory, tiny_model_dir) -> str:
    data_dir = tmp_path_factory.mktemp("browser-app")
    _promote_tiny_adapter(data_dir, tiny_model_dir)
    port = _free_port()
    env = {
        **os.environ,
        "COWEST_WEAK_MODEL": str(tiny_model_dir),
        "COWEST_STRONG_MODEL": str(tiny_model_dir),
        "COWEST_WEAK_4BIT": "0",
        "COWEST_DATA_DIR": str(data_dir),
        "COWEST_PORT": str(port),
        "COWEST_WEAK_MAX_NEW_TOKENS": "16",
        "COWEST_STRONG_MAX_NEW_TOKENS": "16",
        "COWEST_TORCH_THREADS": "1",
        "COWEST_TRAIN_EVERY_MINUTES": "0",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    log_path = data_dir / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(proc, port, log_path)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(chromium_path):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_url) -> Page:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    # Nothing may leave 127.0.0.1 (Gradio links web fonts); aborting also keeps page loads fast offline.
    context.route(re.compile(r"^https?://"), _local_only)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(app_url, wait_until="domcontentloaded")
    expect(page.locator("#question textarea")).to_be_visible(timeout=30_000)
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def _local_only(route) -> None:
    if urlparse(route.request.url).hostname == "127.0.0.1":
        route.continue_()
    else:
        route.abort()


def ask(page: Page, question: str) -> None:
    """Type a question, press Ask and wait until both stages are done."""
    page.locator("#question textarea").fill(question)
    page.locator("#ask").click()
    table = page.locator("#stage-table")
    for stage in ("Weak draft", "Final answer"):
        row = table.locator("tr", has_text=stage)
        expect(row).to_contain_text("done", timeout=STAGE_TIMEOUT_MS)
        cells = row.locator("td")
        for latency in (cells.nth(4), cells.nth(5)):  # first token, total
            expect(latency).to_have_text(re.compile(r"^(\d+ ms|\d+\.\d s)$"))


def test_ask_rate_export_and_see_the_training_dashboard(page: Page, artifacts_dir: Path, tiny_model_dir: Path):
    question = "What does NSAID stand for?"
    expect(page.locator("#models-banner")).to_contain_text(f"Weak: {tiny_model_dir}")
    expect(page.locator("#models-banner")).to_contain_text(f"{DEFAULT_PACK} v1")

    ask(page, question)
    weak = page.locator("#weak-draft textarea").input_value()
    final = page.locator("#final-answer textarea").input_value()
    assert weak.strip() and final.strip(), (weak, final)
    expect(page.locator("#stage-table tr", has_text="Weak draft")).to_contain_text("v1")

    page.locator("#rate-up").click()
    expect(page.locator("#feedback-message")).to_contain_text("👍 recorded")
    page.screenshot(path=artifacts_dir / "main-page.png", full_page=True)

    page.get_by_role("tab", name="Log & export").click()
    # Only this test rates; the other test's question may or may not be logged yet.
    expect(page.locator("#log-counts")).to_contain_text(re.compile(r"\d+ interactions · 1 feedback events \(👍 1 · 👎 0\)"))
    page.locator("#export").click()
    link = page.locator("#export-file a[download]").first
    expect(link).to_be_visible(timeout=30_000)
    with page.expect_download() as download_info:
        link.click()
    saved = artifacts_dir / download_info.value.suggested_filename
    download_info.value.save_as(saved)
    page.screenshot(path=artifacts_dir / "export-tab.png", full_page=True)
    [record] = [r for r in map(json.loads, saved.read_text().splitlines()) if r["question"] == question]
    assert (record["question"], record["weak_draft"], record["final_answer"]) == (question, weak, final)
    assert record["feedback"][0]["rating"] == 1

    page.get_by_role("tab", name="Training").click()
    expect(page.locator("#training-state")).to_contain_text("State: idle", timeout=15_000)
    history = page.locator("#adapter-history")
    expect(history).to_contain_text("active")
    expect(history).to_contain_text("0.620")
    page.screenshot(path=artifacts_dir / "training-tab.png", full_page=True)


def test_switching_packs_switches_the_weak_adapter(page: Page):
    ask(page, "Which drug is held on Breakwater ICU?")
    expect(page.locator("#stage-table tr", has_text="Weak draft")).to_contain_text("v1")
    # Another pack drafts with its own adapter: the general pack has none, so the bare base.
    page.locator("#domain input").click()
    page.get_by_role("option", name="General").click()
    ask(page, "Why is the sky blue?")
    expect(page.locator("#stage-table tr", has_text="Weak draft")).to_contain_text("base")


def test_markup_in_a_question_is_shown_as_text_and_never_executed(page: Page):
    ask(page, XSS_QUESTION)
    assert page.locator("#question textarea").input_value() == XSS_QUESTION
    assert page.evaluate("() => window.__pwned") is None, "the injected script ran"
    assert page.locator('img[src="x"]').count() == 0, "the injected <img> reached the DOM"
