"""The dashboard in a real browser: headless Chromium (Playwright) against a real
`offload dashboard` process and real `offload worker` processes, on SQLite, PostgreSQL
and Redis.

An operator's walk: load every page, filter the jobs, open one, replay a dead job
once its bug is fixed and watch it succeed, cancel a waiting job, pause a queue, read
each queue's last hour on the overview; and a script hidden in a job's arguments never
runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from offload import JobState
from tests.dashboard.conftest import PASSWORD, USER, Served, wait_until

pytest.importorskip("playwright")

PAGES = {
    "/": "Overview",
    "/jobs": "Jobs",
    "/dead": "Dead letters",
    "/schedules": "Schedules",
    "/workers": "Workers",
}


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context signed in with HTTP Basic; any JavaScript dialog (an
    `alert` from an injected script) fails the test."""
    context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})
    tab = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    tab.on("dialog", on_dialog)
    try:
        yield tab
    finally:
        context.close()
    assert dialogs == [], f"a script ran and opened a dialog: {dialogs}"


def start(served: Served) -> str:
    return served.procs.dashboard("--basic-auth", f"{USER}:{PASSWORD}")


def test_every_page_loads_and_the_jobs_filter_and_open(served: Served, page: Any) -> None:
    tasks = served.tasks
    echoes = [tasks["echo"].enqueue(f"hello {i}") for i in range(3)]
    served.app.options("dash.later", queue="gamma").enqueue()
    base = start(served)

    for path, heading in PAGES.items():
        response = page.goto(base + path)
        assert response.status == 200, path
        assert page.locator("h1").inner_text() == heading
    page.goto(base + "/")
    assert page.get_by_role("link", name="alpha", exact=True).is_visible()
    assert page.get_by_role("link", name="gamma", exact=True).is_visible()
    page.goto(base + "/schedules")
    assert "hourly-echo" in page.locator("table").inner_text()

    # Filter by queue: only alpha's jobs remain.
    page.goto(base + "/jobs")
    page.select_option("select[name=queue]", "alpha")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/jobs?queue=alpha**")
    rows = page.locator("table.jobs tbody tr")
    assert rows.count() == 3
    assert "gamma" not in page.locator("table.jobs").inner_text()
    # Filter by task on every queue.
    page.select_option("select[name=queue]", "")
    page.fill("input[name=task]", "dash.later")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**task=dash.later**")
    assert page.locator("table.jobs tbody tr").count() == 1

    # Open a job from the list.
    page.goto(base + "/jobs?queue=alpha")
    page.get_by_role("link", name=echoes[0].id).click()
    page.wait_for_url(f"**/jobs/{echoes[0].id}")
    assert '"hello 0"' in page.locator("#args").inner_text()
    assert page.locator(".state").first.inner_text() == "queued"


def test_a_dead_job_replayed_from_the_dashboard_succeeds(
    served: Served, page: Any, tmp_path: Path
) -> None:
    flag = tmp_path / "fixed"
    job = served.tasks["flaky"].enqueue(str(flag))
    served.procs.worker("beta")
    wait_until(lambda: job.state() is JobState.DEAD, "the job to die")
    base = start(served)

    page.goto(base + "/dead")
    page.get_by_role("link", name=job.id).click()
    assert "not fixed yet" in page.locator("main").inner_text()
    flag.touch()  # the fix is deployed
    page.get_by_role("button", name="Replay", exact=True).click()
    assert "Replayed 1 dead job" in page.locator(".notice").inner_text()

    def succeeded() -> bool:
        page.reload()
        return bool(page.locator("h1 .state").inner_text() == "succeeded")

    wait_until(succeeded, "the replayed job to succeed on its page")
    assert '"fixed"' in page.locator("#result").inner_text()
    # Both runs are in its attempt history: the one that died, the one that succeeded.
    attempts = page.locator("table.attempts tbody tr")
    assert [attempts.nth(i).locator(".state").inner_text() for i in range(2)] == [
        "dead",
        "succeeded",
    ]
    assert "not fixed yet" in attempts.nth(0).inner_text()
    assert job.result(timeout=5) == "fixed"


def test_a_waiting_job_cancelled_from_the_dashboard_is_cancelled(served: Served, page: Any) -> None:
    job = served.tasks["later"].options(delay=3600).enqueue()
    base = start(served)

    page.goto(f"{base}/jobs/{job.id}")
    assert page.locator("h1 .state").inner_text() == "scheduled"
    page.get_by_role("button", name="Cancel").click()

    assert "Cancel sent" in page.locator(".notice").inner_text()
    assert page.locator("h1 .state").inner_text() == "cancelled"
    assert job.state() is JobState.CANCELLED


SCRIPT = "<script>window.__offload_pwned = 'script'; alert('script')</script>"
IMAGE = "<img src=x onerror=window.__offload_pwned=alert(1)||1>"  # no quotes: JSON keeps it


def test_a_script_in_job_arguments_is_shown_as_text_and_never_runs(
    served: Served, page: Any, tmp_path: Path
) -> None:
    served.tasks["echo"].enqueue({"name": SCRIPT, "avatar": IMAGE})
    dead = served.tasks["flaky"].enqueue(SCRIPT)  # its error message repeats it
    served.procs.worker("beta")
    wait_until(lambda: dead.state() is JobState.DEAD, "the job to die")
    base = start(served)

    for path in ("/jobs", "/dead", f"/jobs/{dead.id}"):
        page.goto(base + path)
        assert page.evaluate("window.__offload_pwned") is None, path
        assert page.locator("main script, main img").count() == 0, path
    assert SCRIPT in page.locator("#args").inner_text()
    assert SCRIPT in page.locator("main").inner_text()  # in the error message too
    page.goto(base + "/jobs?queue=alpha")
    page.locator("table.jobs a.mono").first.click()
    assert IMAGE in page.locator("#args").inner_text()
    assert page.evaluate("window.__offload_pwned") is None


def test_a_queue_paused_from_the_dashboard_stops_its_worker_until_resumed(
    served: Served, page: Any
) -> None:
    echo = served.tasks["echo"]
    served.procs.worker("alpha")
    first = echo.enqueue("before the pause")
    assert first.result(timeout=60) == "before the pause"  # the worker takes alpha's jobs
    base = start(served)

    page.goto(base + "/")
    row = page.locator("table.queues tr", has_text="alpha")
    row.get_by_role("button", name="Pause").click()
    assert "Paused" in page.locator(".notice").inner_text()
    assert page.locator("table.queues tr", has_text="alpha").locator(".s-paused").is_visible()
    time.sleep(1.5)  # workers read the flags at most 0.5 s old before each reservation

    held = [echo.enqueue(f"held {i}") for i in range(3)]
    time.sleep(3)
    assert [j.state() for j in held] == [JobState.QUEUED] * 3  # enqueued, not taken

    page.locator("table.queues tr", has_text="alpha").get_by_role("button", name="Resume").click()
    assert "Resumed" in page.locator(".notice").inner_text()
    assert [j.result(timeout=60) for j in held] == ["held 0", "held 1", "held 2"]


def test_the_overview_shows_each_queues_last_hour(
    served: Served, page: Any, tmp_path: Path
) -> None:
    # Given six jobs of alpha that succeed and one of beta that dies, run by workers,
    echoes = [served.tasks["echo"].enqueue(f"hi {i}") for i in range(6)]
    dead = served.tasks["flaky"].enqueue(str(tmp_path / "never"))
    served.procs.worker("alpha", "beta")
    assert [j.result(timeout=60) for j in echoes] == [f"hi {i}" for i in range(6)]
    wait_until(lambda: dead.state() is JobState.DEAD, "the job to die")
    base = start(served)

    # the overview shows each queue's jobs done per minute over the last hour, its
    # failure rate, and a sparkline of both.
    page.goto(base + "/")
    alpha = page.locator("table.queues tr", has_text="alpha")
    beta = page.locator("table.queues tr", has_text="beta")
    assert alpha.locator(".throughput").inner_text() == "0.1"  # 6 in 60 minutes
    assert alpha.locator(".failure-rate").inner_text() == "0.0%"
    assert beta.locator(".throughput").inner_text() == "0.0"  # 1 in 60 minutes
    assert beta.locator(".failure-rate").inner_text() == "100.0%"
    assert alpha.locator("svg.spark polyline").count() == 2
