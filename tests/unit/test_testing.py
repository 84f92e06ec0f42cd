"""The inline runner (`app.testing()`, `offload.testing.InlineRunner`) and its pytest
fixtures: jobs run in the test's process through a real broker and the real worker,
on a virtual clock; nothing here sleeps."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from offload import (
    Backoff,
    Cron,
    Every,
    JobFailed,
    JobNotFound,
    JobState,
    Offload,
    chain,
    chord,
    current_job,
    group,
)
from offload.testing import FakeClock, InlineRunner

NO_JITTER = Backoff(base_s=10.0, cap_s=300.0, jitter=False)


@pytest.fixture
def app() -> Offload:
    return Offload("memory://")


def test_retries_run_at_their_backoff_times_as_the_clock_advances(app: Offload) -> None:
    seen: list[tuple[int, float]] = []

    @app.task(max_attempts=4, backoff=NO_JITTER)
    def flaky() -> str:
        seen.append((current_job().attempt, app.clock.now()))
        if len(seen) < 3:
            raise ConnectionError("provider down")
        return "sent"

    with app.testing() as t:
        start = t.clock.now()
        job = flaky.enqueue()
        assert t.drain() == 1
        assert job.state() is JobState.SCHEDULED  # attempt 1 failed, retry in 10 s
        assert t.advance(9.5) == 0
        assert t.advance(60) == 2  # attempt 2 at +10 s, attempt 3 at +10 +20 s
        assert job.result(timeout=1) == "sent"
    assert seen == [(1, start), (2, start + 10), (3, start + 30)]


def test_run_all_follows_retries_until_nothing_waits(app: Offload) -> None:
    @app.task(max_attempts=3, backoff=NO_JITTER)
    def always_fails() -> None:
        raise ConnectionError("still down")

    with app.testing() as t:
        job = always_fails.enqueue()
        assert t.run_all() == 3
        [dead] = t.jobs(state="dead")
        assert dead.id == job.id and dead.attempt == 3
        assert t.clock.now() == pytest.approx(1_700_000_000 + 10 + 20)


def test_delayed_job_runs_only_once_the_clock_reaches_it(app: Offload) -> None:
    @app.task
    def remind(user: str) -> str:
        return f"reminded {user}"

    with app.testing() as t:
        job = remind.options(delay=3600).enqueue("ada")
        assert t.drain() == 0
        assert t.advance(3599) == 0
        assert job.state() is JobState.SCHEDULED
        assert t.advance(1) == 1
        assert job.result(timeout=1) == "reminded ada"


def test_schedules_fire_at_their_instants_under_advance(app: Offload) -> None:
    ran: list[tuple[str, float]] = []

    @app.task
    def tick(name: str) -> None:
        ran.append((name, app.clock.now()))

    app.schedule(tick, Every(60), args=["minute"], id="minute")
    app.schedule(tick, Cron("0 3 * * *", tz="Europe/Paris"), args=["night"], id="night")
    midnight = datetime(2026, 3, 1, 0, 0, 30, tzinfo=UTC).timestamp()
    with app.testing(clock=FakeClock(midnight)) as t:
        t.drain()  # 00:00:00 is on time (within the grace): it fires now
        t.advance(3 * 3600)
        minutes = [at for name, at in ran if name == "minute"]
        assert len(minutes) == 1 + 180
        assert minutes[1:] == [midnight - 30 + 60 * i for i in range(1, 181)]
        # 03:00 in Paris is 02:00 UTC (CET): once, at that instant
        assert [at for name, at in ran if name == "night"] == [midnight - 30 + 2 * 3600]
        assert len(t.jobs(state="succeeded", task=tick)) == 182


def test_chain_group_and_chord_complete_in_one_drain(app: Offload) -> None:
    @app.task
    def square(x: int) -> int:
        return x * x

    @app.task
    def total(values: list[int]) -> int:
        return sum(values)

    @app.task
    def label(value: int, prefix: str) -> str:
        return f"{prefix}{value}"

    with app.testing() as t:
        flow = chain(square.call(3), label.partial("n=")).enqueue()
        fan = group(square.call(i) for i in range(4)).enqueue()
        join = chord(group(square.call(i) for i in range(5)), total.partial()).enqueue()
        assert t.drain() == 2 + 4 + 5 + 1
        assert flow.result(timeout=1) == "n=9"
        assert fan.result(timeout=1) == [0, 1, 4, 9]
        assert join.result(timeout=1) == 30
        assert t.jobs(state="queued") == t.jobs(state="scheduled") == []


def test_failed_job_is_dead_with_its_error_and_raised_on_demand(app: Offload) -> None:
    @app.task(give_up_on=(ValueError,))
    def parse(text: str) -> int:
        return int(text)

    with app.testing() as t:
        job = parse.enqueue("forty-two")
        t.drain()  # not raised by default: the job is dead, as in production
        [dead] = t.jobs(state=JobState.DEAD)
        assert dead.id == job.id
        assert dead.error is not None and dead.error.type.endswith("ValueError")
        assert "forty-two" in dead.error.message
        assert "int(text)" in dead.error.traceback
        with pytest.raises(JobFailed, match="ValueError"):
            job.result(timeout=1)

        parse.enqueue("x")
        with pytest.raises(ValueError, match="invalid literal") as raised:
            t.drain(raise_errors=True)  # the handler's own exception, its traceback
        assert raised.traceback[-1].name == "parse"
        assert len(t.jobs(state="dead")) == 2


def test_raise_errors_reports_a_job_buried_without_an_exception(app: Offload) -> None:
    with app.testing(raise_errors=True) as t:
        job = app.enqueue("tasks.not_deployed")
        with pytest.raises(JobFailed, match="UnknownTask") as raised:
            t.drain()
        assert raised.value.job_id == job.id
        assert t.drain() == 0  # raised once, not again


@pytest.mark.parametrize("raised", [SystemExit(3), KeyboardInterrupt("from the handler")])
@pytest.mark.parametrize("how", ["drain", "advance", "run_all"])
def test_raise_errors_raises_a_handlers_base_exception_in_the_test(
    app: Offload, raised: BaseException, how: str
) -> None:
    """`raise_errors` re-raised the handler's exception on the portal's loop: a
    `SystemExit` or `KeyboardInterrupt` stopped that loop, and the test waited forever
    (so did every later sync call of the app). It is raised in the test's thread."""

    @app.task(max_attempts=1)
    def leave() -> None:
        raise raised

    calls: dict[str, Callable[[InlineRunner], int]] = {
        "drain": lambda t: t.drain(raise_errors=True),
        "advance": lambda t: t.advance(60, raise_errors=True),
        "run_all": lambda t: t.run_all(raise_errors=True),
    }
    t = app.testing().__enter__()
    job = leave.enqueue()
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            calls[how](t)
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)  # a daemon: it may hang
    caller.start()
    caller.join(20)
    if caller.is_alive():  # the runner is left open: closing it would hang as well
        pytest.fail(f"{how}(raise_errors=True) hung: the portal's loop stopped")
    try:
        assert [type(e) for e in outcome] == [type(raised)]
        assert job.state() is JobState.DEAD  # the app's sync calls still answer
        assert t.drain() == 0
    finally:
        t.__exit__(None, None, None)


def test_an_async_handler_may_call_the_sync_api_under_a_sync_drain(app: Offload) -> None:
    """A worker runs async handlers on its own loop, so one that calls the sync API
    (enqueue, a job's state) works; the sync `drain` ran them on the app's portal loop,
    where that call raised "Portal.run called from the portal's own loop"."""

    @app.task
    def leaf(n: int) -> int:
        return n

    @app.task
    async def fan_out(n: int) -> str:
        jobs = [leaf.enqueue(i) for i in range(n)]  # sync, as legacy code may
        return jobs[-1].state()

    with app.testing(raise_errors=True) as t:
        job = fan_out.enqueue(2)
        assert t.drain() == 3
        assert job.result() == "queued"  # what it saw before the leaves ran
        assert [j.state for j in t.jobs(task=leaf)] == [JobState.SUCCEEDED] * 2


def test_app_gets_its_own_broker_and_clock_back_after_the_test(tmp_path: Path) -> None:
    app = Offload(f"sqlite:///{tmp_path / 'prod.db'}")

    @app.task
    def noop() -> None: ...

    broker, clock = app.broker, app.clock
    with app.testing() as t:
        job = noop.enqueue()
        assert app.broker is not broker and app.clock is t.clock
        t.drain()
    assert app.broker is broker and app.clock is clock
    with pytest.raises(JobNotFound):
        app.job(job.id).state()  # it was never in the real broker
    with app.testing() as t:
        assert t.jobs() == []  # each runner starts empty
    app.close()


async def test_async_tests_use_the_async_twins_on_their_own_loop(app: Offload) -> None:
    @app.task(max_attempts=2, backoff=NO_JITTER)
    async def fetch(url: str) -> int:
        if current_job().attempt == 1:
            raise TimeoutError(url)
        return 200

    async with app.testing() as t:
        job = await fetch.enqueue_async("https://example.com")
        assert await t.drain_async() == 1
        assert await t.advance_async(10) == 1
        assert await job.result_async(timeout=1) == 200
        assert [j.state for j in await t.jobs_async(task=fetch)] == [JobState.SUCCEEDED]


def test_offload_runner_fixture_runs_the_default_app(
    offload_app: Offload, offload_runner: InlineRunner
) -> None:
    @offload_app.task
    def double(x: int) -> int:
        return 2 * x

    job = double.enqueue(21)
    offload_runner.drain()
    assert job.result(timeout=1) == 42


def test_plugin_fixtures_reach_a_project_that_overrides_offload_app(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent(
            """
            from offload import Offload
            app = Offload("sqlite:///never-used.db")

            @app.task
            def greet(name: str) -> str:
                return f"hello {name}"
            """
        )
    )
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.fixture
            def offload_app():
                from tasks import app
                return app
            """
        )
    )
    (tmp_path / "test_greet.py").write_text(
        textwrap.dedent(
            """
            from tasks import greet

            def test_greet(offload_runner):
                job = greet.enqueue("ada")
                assert offload_runner.drain() == 1
                assert job.result(timeout=1) == "hello ada"
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_greet.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert not (tmp_path / "never-used.db").exists()  # the runner's broker was used


def test_schedules_false_leaves_the_app_schedules_out(app: Offload) -> None:
    @app.task
    def refresh() -> None: ...

    app.schedule(refresh, Every(60))
    with app.testing(schedules=False) as t:
        assert t.drain() == 0
        assert t.advance(600) == 0
        assert t.jobs() == []
    with app.testing() as t:
        assert t.advance(600) >= 10


def test_jobs_sent_to_any_queue_run_including_ones_started_by_a_job(app: Offload) -> None:
    @app.task(queue="emails")
    def send(to: str) -> str:
        return to

    @app.task
    def fan_out(users: list[str]) -> None:
        for user in users:
            send.options(queue=f"emails-{user}").enqueue(user)

    with app.testing() as t:
        fan_out.options(queue="batch").enqueue(["ada", "bob"])
        assert t.drain() == 3
        assert sorted(j.queue for j in t.jobs(state="succeeded", task=send)) == [
            "emails-ada",
            "emails-bob",
        ]


def test_a_runner_that_is_not_open_says_so(app: Offload) -> None:
    runner = app.testing()
    with pytest.raises(RuntimeError, match="open the runner first"):
        runner.drain()
