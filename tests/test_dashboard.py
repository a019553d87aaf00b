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

from redwork import JobFailed, Redwork, Workflow, WorkflowStatus, group
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
WORKFLOW_SCREENSHOT = ROOT / "test-output" / "workflow.png"
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


# -- workflows ------------------------------------------------------------------------------


def graph_node(page: Page, node_id: str) -> Locator:
    return page.locator(f'#wf-svg g.node[data-id="{node_id}"]')


def workflow_field(page: Page, name: str) -> Locator:
    return page.locator(f'#wf-fields dd[data-field="{name}"]')


def test_workflow_graph_follows_its_jobs_live_and_opens_them(
    api: ApiProcess,
    page: Page,
    console: Console,
    app: Redwork,
    spawn_worker: Callable[..., WorkerProcess],
) -> None:
    # A diamond with a failing branch: echo(5), then add(10) (bad arguments: it fails) and
    # echo([5]), then total of both (skipped: one of its dependencies failed).
    graph = Workflow()
    top = graph.add(tasks.echo.s(5))
    left = graph.add(tasks.add.s(10), depends_on=[top])
    right = graph.add(tasks.echo.s(), depends_on=[top], pass_results=True)
    graph.add(tasks.total.s(), depends_on=[left, right], pass_results=True)
    handle = app.submit(graph, queue="flows", name="diamond")
    nodes = handle.info().nodes
    top_id, left_id, right_id, join_id = (n.id for n in nodes)
    dependencies = {(d, n.id) for n in nodes for d in n.depends_on}
    assert len(dependencies) == 4

    # The overview lists the queue's workflows; the link opens the workflow's page.
    page.goto(f"{api.url}/#/workflows/flows")
    expect(page.locator("#workflows-queue")).to_have_value("flows")
    row = page.locator(f'#workflows tr[data-workflow="{handle.id}"]')
    expect(row.locator("td")).to_have_text(
        [handle.id, "diamond", "pending", "0/4", "0", "0", "0", "0", re.compile(r"\d")]
    )
    row.get_by_role("link", name=handle.id).click()
    expect(page).to_have_url(f"{api.url}/#/workflows/flows/{handle.id}")
    expect(page.locator("#overview")).to_be_hidden()
    expect(page.locator("#wf-id")).to_have_text(handle.id)
    expect(workflow_field(page, "name")).to_have_text("diamond")
    expect(workflow_field(page, "status")).to_have_text("pending")
    expect(page.locator("#wf-cancel")).to_be_visible()
    expect(page.locator("#wf-svg > title")).to_have_text(
        f"Workflow {handle.id}: 4 jobs in 3 levels, 4 dependencies"
    )
    expect(page.locator("#wf-svg g.node")).to_have_count(4)
    expect(graph_node(page, top_id)).to_have_attribute("data-state", "waiting")
    expect(graph_node(page, top_id)).to_have_attribute("aria-label", f"echo {top_id}: waiting")
    for node_id in (left_id, right_id, join_id):
        expect(graph_node(page, node_id)).to_have_attribute("data-state", "pending")
    # One edge per dependency, from the dependency to its dependant.
    edges = page.locator("#wf-svg path.edge")
    expect(edges).to_have_count(len(dependencies))
    drawn = {
        (edge.get_attribute("data-from"), edge.get_attribute("data-to")) for edge in edges.all()
    }
    assert drawn == dependencies
    # Layered left to right: a column per level, the two branches in the middle one.
    boxes = {n.id: graph_node(page, n.id).bounding_box() for n in nodes}
    assert all(box is not None for box in boxes.values())
    xs = {node_id: box["x"] for node_id, box in boxes.items() if box is not None}
    assert xs[top_id] < xs[left_id] == xs[right_id] < xs[join_id]

    # A mark on the document: if the page reloaded to show the update, it would be gone.
    page.evaluate("window.notReloaded = true")
    spawn_worker("-q", "flows")
    expect(graph_node(page, top_id)).to_have_attribute("data-state", "completed")
    expect(graph_node(page, left_id)).to_have_attribute("data-state", "failed")
    expect(graph_node(page, right_id)).to_have_attribute("data-state", "completed")
    expect(graph_node(page, join_id)).to_have_attribute("data-state", "skipped")
    expect(graph_node(page, join_id)).to_have_attribute("aria-label", f"total {join_id}: skipped")
    expect(workflow_field(page, "status")).to_have_text("failed")
    expect(workflow_field(page, "ended")).to_have_text("4")
    expect(page.locator("#wf-cancel")).to_be_hidden()
    legend = ["pending 0", "waiting 0", "delayed 0", "active 0", "completed 2", "failed 1"]
    expect(page.locator("#wf-legend li")).to_contain_text([*legend, "skipped 1", "cancelled 0"])
    assert page.evaluate("window.notReloaded") is True
    assert handle.info().status is WorkflowStatus.FAILED
    WORKFLOW_SCREENSHOT.parent.mkdir(exist_ok=True)
    shown = page.locator("#workflow").bounding_box()
    assert shown is not None
    bottom = shown["y"] + shown["height"] + 16
    page.screenshot(
        path=str(WORKFLOW_SCREENSHOT), clip={"x": 0, "y": 0, "width": 1280, "height": bottom}
    )
    assert WORKFLOW_SCREENSHOT.stat().st_size > 10_000
    print(f"workflow screenshot: {WORKFLOW_SCREENSHOT}")

    # A node opens its job's page; back, the graph again.
    graph_node(page, left_id).click()
    expect(page).to_have_url(f"{api.url}/#/job/flows/{left_id}")
    expect(page.locator("#job-id")).to_have_text(left_id)
    expect(job_field(page, "state")).to_have_text("failed")
    expect(job_field(page, "reason")).to_have_text("bad_arguments")
    page.go_back()
    expect(graph_node(page, left_id)).to_have_attribute("data-state", "failed")
    # And from the keyboard. A skipped job has ended: its page closes its stream.
    graph_node(page, join_id).focus()
    page.keyboard.press("Enter")
    expect(page.locator("#job-id")).to_have_text(join_id)
    expect(job_field(page, "state")).to_have_text("skipped")
    expect(job_field(page, "reason")).to_have_text("dependency_failed")
    page.wait_for_function("jobStream !== null && jobStream.readyState === EventSource.CLOSED")
    assert console.errors == []


def test_workflow_levels_are_ordered_to_uncross_edges(
    api: ApiProcess, page: Page, console: Console, app: Redwork
) -> None:
    # Submit order puts c (after b) above d (after a): drawn as is, the edges would cross.
    graph = Workflow()
    a = graph.add(tasks.echo.s("a"))
    b = graph.add(tasks.echo.s("b"))
    graph.add(tasks.echo.s("c"), depends_on=[b])
    graph.add(tasks.echo.s("d"), depends_on=[a])
    handle = app.submit(graph, queue="flows")
    a_id, b_id, c_id, d_id = (n.id for n in handle.info().nodes)
    page.goto(f"{api.url}/#/workflows/flows/{handle.id}")
    expect(page.locator("#wf-svg path.edge")).to_have_count(2)
    tops = {}
    for node_id in (a_id, b_id, c_id, d_id):
        box = graph_node(page, node_id).bounding_box()
        assert box is not None
        tops[node_id] = box["y"]
    assert tops[a_id] < tops[b_id]
    assert tops[d_id] < tops[c_id]
    assert tops[a_id] == tops[d_id] and tops[b_id] == tops[c_id]
    assert console.errors == []


def test_cancel_on_a_workflow_page_cancels_its_jobs(
    api: ApiProcess, page: Page, console: Console, app: Redwork
) -> None:
    # No worker: both workflows stay pending until cancelled.
    other = app.submit(group(tasks.echo.s(i) for i in range(3)), queue="flows")
    handle = app.submit(group(tasks.echo.s(i) for i in range(3)), queue="flows", name="fan")
    page.goto(f"{api.url}/#/workflows/flows")
    other_status = page.locator(f'#workflows tr[data-workflow="{other.id}"] .badge')
    expect(other_status).to_have_text("pending")
    # Cancelled elsewhere: the list follows.
    assert other.cancel() == 3
    expect(other_status).to_have_text("cancelled")

    page.goto(f"{api.url}/#/workflows/flows/{handle.id}")
    expect(page.locator("#wf-svg g.node[data-state=waiting]")).to_have_count(3)
    expect(page.locator("#wf-svg path.edge")).to_have_count(0)
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.locator("#wf-cancel").click()
    expect(page.locator("#wf-svg g.node[data-state=cancelled]")).to_have_count(3)
    expect(workflow_field(page, "status")).to_have_text("cancelled")
    expect(workflow_field(page, "cancelled")).to_have_text("3")
    expect(page.locator("#message")).to_have_text("workflow cancelled")
    expect(page.locator("#wf-cancel")).to_be_hidden()
    assert dialogs == [f"Cancel every job of workflow {handle.id} that has not started?"]
    info = handle.info()
    assert info.status is WorkflowStatus.CANCELLED
    assert {n.state.value for n in info.nodes} == {"cancelled"}
    assert console.errors == []


def test_a_workflow_too_large_to_draw_is_summed_up_per_level(
    api: ApiProcess, page: Page, console: Console, app: Redwork
) -> None:
    graph = Workflow()
    members = graph.add(group(tasks.echo.s(i) for i in range(600)))
    graph.add(tasks.total.s(), depends_on=[members], pass_results=True)
    handle = app.submit(graph, queue="flows")
    page.goto(f"{api.url}/#/workflows/flows/{handle.id}")
    expect(workflow_field(page, "jobs")).to_have_text("601")
    expect(page.locator("#wf-summary caption")).to_contain_text("601 jobs in 2 levels")
    headings = page.locator("#wf-summary thead th").all_text_contents()
    rows = page.locator("#wf-summary tbody tr")
    expect(rows).to_have_count(2)
    level = {name: i for i, name in enumerate(headings)}
    expect(rows.nth(0).locator("td").nth(level["jobs"])).to_have_text("600")
    expect(rows.nth(0).locator("td").nth(level["waiting"])).to_have_text("600")
    expect(rows.nth(1).locator("td").nth(level["pending"])).to_have_text("1")
    expect(page.locator("#wf-svg")).to_have_count(0)
    assert console.errors == []
