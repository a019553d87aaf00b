"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) against a real
`redwork serve` process, a real server and real workers. Every wait is Playwright's
auto-waiting (expect / wait_for_function) or an event; the page's console errors fail
the test."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import redis

from redwork import JobFailed, Redwork
from tests import tasks
from tests.conftest import ROOT, ApiProcess, WorkerProcess, wait_for_event

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Error, Locator, Page

CHROMIUM = Path("/usr/bin/chromium")
# The machine's network is closed: without these Chromium keeps dialling Google services.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = ROOT / "test-output" / "dashboard.png"
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium (never a browser downloaded by `playwright install`). `./dev test`
    installs it when it runs as root; elsewhere these tests skip without it, except in CI
    (CI set), where a missing browser is a failure, not a skip."""
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing: apt-get install chromium (./dev test does, as root)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed: pip install -e '.[test]'"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"dashboard tests cannot run in CI: {missing}")
        pytest.skip(missing)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


class Console:
    """Errors the page reported, as (message, url): console errors (a failed load
    included) and uncaught exceptions."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    def on_message(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append((message.text, message.location.get("url", "")))

    def on_page_error(self, error: Error) -> None:
        self.errors.append((f"uncaught {error.name}: {error.message}", ""))


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def page(browser: Browser, console: Console) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    tab.on("console", console.on_message)
    tab.on("pageerror", console.on_page_error)
    yield tab
    context.close()


def expect(target: Any) -> Any:
    """Playwright's auto-retrying assertions, with the tests' timeout."""
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=TIMEOUT_MS)
    return playwright_expect(target)


def queue_cell(page: Page, queue: str, column: str) -> Locator:
    """One number of the overview's queues table, by its column heading."""
    headings = page.locator("#queues thead th").all_text_contents()
    return page.locator(f'#queues tr[data-queue="{queue}"] td').nth(headings.index(column))


def job_field(page: Page, name: str) -> Locator:
    return page.locator(f'#job-fields dd[data-field="{name}"]')


def test_overview_and_job_page_follow_a_job_live(
    api: ApiProcess,
    page: Page,
    console: Console,
    app: Redwork,
    spawn_worker: Callable[..., WorkerProcess],
) -> None:
    handle = tasks.add.options(queue="dashq").enqueue(1, 2)
    page.goto(api.url + "/")
    expect(queue_cell(page, "dashq", "waiting")).to_have_text("1")
    expect(page.locator("#live")).to_have_class("dot on")

    page.goto(f"{api.url}/#/job/dashq/{handle.id}")
    expect(page.locator("#overview")).to_be_hidden()
    expect(page.locator("#job-id")).to_have_text(handle.id)
    expect(job_field(page, "state")).to_have_text("waiting")
    expect(job_field(page, "queue")).to_have_text("dashq")
    expect(job_field(page, "task")).to_have_text("add")
    assert json.loads(page.locator("#job-args").inner_text()) == {"args": [1, 2], "kwargs": {}}
    expect(page.locator("#job-cancel")).to_be_enabled()
    expect(page.locator("#job-result")).to_have_text("")

    # A mark on the document: if the page reloaded to show the update, it would be gone.
    page.evaluate("window.notReloaded = true")
    spawn_worker("-q", "dashq")
    expect(job_field(page, "state")).to_have_text("completed")
    expect(page.locator("#job-result")).to_have_text("3")
    expect(job_field(page, "attempt")).to_have_text("1 of 1")
    expect(job_field(page, "worker")).not_to_have_text("")
    expect(page.locator("#job-cancel")).to_be_disabled()
    # The timeline grew live too: what it showed at first, then the run.
    expect(page.locator("#job-timeline li").last).to_contain_text("completed (attempt 1)")
    expect(page.locator("#job-timeline li", has_text="active (attempt 1)")).to_have_count(1)
    assert page.evaluate("window.notReloaded") is True
    # The server ends the job's stream after its final state; the page closes it rather
    # than let EventSource reconnect every few seconds.
    page.wait_for_function("jobStream !== null && jobStream.readyState === EventSource.CLOSED")
    assert handle.result(timeout=5) == 3
    assert console.errors == []


def test_retry_on_a_failed_job_puts_it_back_in_its_queue(
    api: ApiProcess,
    page: Page,
    console: Console,
    app: Redwork,
    r: redis.Redis,
    spawn_worker: Callable[..., WorkerProcess],
) -> None:
    worker = spawn_worker()
    handle = tasks.boom.enqueue("dashboard boom")
    with pytest.raises(JobFailed):
        handle.result(timeout=30)
    # Stop the worker (SIGTERM, and wait) so that the retried job stays in the queue.
    worker.kill(signal.SIGTERM)
    assert worker.wait() == 0

    page.goto(f"{api.url}/#/failed/default")
    expect(page.locator("#failed-queue")).to_have_text("default")
    row = page.locator(f'#failed-jobs tr[data-job="{handle.id}"]')
    expect(row.locator("td")).to_have_text(
        [
            handle.id,
            "boom",
            "exception",
            "ValueError: dashboard boom",
            re.compile(r"\d"),
            "Retry Purge",
        ]
    )
    row.locator("button.retry").click()
    expect(page.locator("#message")).to_have_text("retry: 1 job(s)")
    expect(row).to_have_count(0)

    wait_for_event(r, "default", "requeued", handle.id)
    with httpx.Client(base_url=api.url, timeout=30) as http:
        job = http.get(f"/api/jobs/{handle.id}").json()
        assert (job["queue"], job["state"]) == ("default", "waiting")
        assert http.get("/api/queues/default/failed").json()["total"] == 0
        counts = {q["name"]: q for q in http.get("/api/queues").json()}["default"]
        assert (counts["waiting"], counts["failed"]) == (1, 0)
    assert console.errors == []


def test_a_token_shows_the_sign_in_page_first(
    spawn_api: Callable[..., ApiProcess], page: Page, console: Console, app: Redwork
) -> None:
    api = spawn_api(api_token="t0ken")
    answer = page.goto(api.url + "/")
    assert answer is not None and answer.status == 401
    expect(page).to_have_title("redwork: sign in")
    expect(page.locator("#queues")).to_have_count(0)

    page.fill("input[name=token]", "wrong")
    with page.expect_response(f"{api.url}/login") as wrong:
        page.click("button[type=submit]")
    assert wrong.value.status == 401
    expect(page).to_have_title("redwork: sign in")

    tasks.add.options(queue="signedq").enqueue(2, 2)
    page.fill("input[name=token]", "t0ken")
    page.click("button[type=submit]")
    expect(page).to_have_title("redwork")
    expect(page).to_have_url(api.url + "/")
    # The live feed and the API answer the browser, which now holds the token's cookie.
    expect(page.locator("#live")).to_have_class("dot on")
    expect(queue_cell(page, "signedq", "waiting")).to_have_text("1")
    # Chromium logs the two 401 answers (the sign-in page, the wrong token), nothing else.
    unauthorized = "Failed to load resource: the server responded with a status of 401"
    assert [(text.startswith(unauthorized), url) for text, url in console.errors] == [
        (True, api.url + "/"),
        (True, api.url + "/login"),
    ]


def test_overview_shows_queues_workers_rates_and_events(
    api: ApiProcess,
    page: Page,
    console: Console,
    app: Redwork,
    spawn_worker: Callable[..., WorkerProcess],
) -> None:
    worker = spawn_worker("-q", "default,emails", "--concurrency", "10")
    page.goto(api.url + "/")
    # The worker serves default before emails, so boom's retries are not stuck behind the
    # slow jobs: about 20 seconds of work for ten slots (0.3 to 1 s each), which draw a
    # steady green line on the chart; the failures, once it has begun, a red bump.
    app.enqueue_many(
        tasks.sleep.options(queue="emails").prepare(0.3 + 0.1 * (i % 8)) for i in range(300)
    )
    app.enqueue_many(tasks.add.prepare(i, i) for i in range(30))
    app.enqueue_many(tasks.add.options(queue="reports").prepare(i, i) for i in range(7))
    page.wait_for_function("history.length >= 3")
    app.enqueue_many(tasks.boom.prepare(f"no {i}") for i in range(3))

    worker_row = page.locator("#workers tbody tr")
    expect(worker_row).to_have_count(1)
    expect(worker_row.locator("td").nth(2)).to_have_text(str(worker.pid))
    expect(worker_row.locator("td").nth(3)).to_have_text("default, emails")
    expect(queue_cell(page, "reports", "waiting")).to_have_text("7")
    expect(queue_cell(page, "default", "failed")).to_have_text("3")
    expect(page.locator("#queues tr[data-queue=emails]")).to_be_visible()
    expect(page.locator("#events li").first).to_be_visible()
    # Ten seconds of history on the chart, the last three with completions in them.
    page.wait_for_function(
        "history.length >= 10 && history.slice(-3).every((h) => h.done > 0)", timeout=30_000
    )
    expect(queue_cell(page, "emails", "active")).not_to_have_text("0")
    expect(queue_cell(page, "emails", "waiting")).not_to_have_text("0")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000
    print(f"dashboard screenshot: {SCREENSHOT}")
    assert console.errors == []
