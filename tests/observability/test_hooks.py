"""Hooks with a real worker on every broker: every event, in order, and a hook that
raises never loses or fails a job."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from offload import Backoff, InvalidArguments, JobState, Offload, Retry, chain
from offload.envelope import Envelope
from offload.hooks import Hook, HookedWorker, Run
from tests.conftest import BROKER_NAMES
from tests.observability.helpers import all_ended, run_worker_until

QUICK = Backoff(base_s=0.01, cap_s=0.01, jitter=False)


class Recorder(Hook):
    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def before_enqueue(self, envelope: Envelope) -> Envelope | None:
        self.events.append(("before_enqueue", envelope.task))
        return None

    def after_enqueue(
        self, envelope: Envelope, created: bool | None, error: BaseException | None
    ) -> None:
        self.events.append(("after_enqueue", envelope.task, created, error))

    def before_run(self, run: Run) -> None:
        self.events.append(("before_run", run.task, run.attempt))

    def after_run(self, run: Run) -> None:
        self.events.append(("after_run", run.task, run.attempt, run.outcome))

    def on_retry(self, run: Run) -> None:
        assert run.error is not None and run.delay_s is not None
        self.events.append(("on_retry", run.task, run.attempt, run.error.type))

    def on_dead(self, run: Run) -> None:
        assert run.error is not None
        self.events.append(("on_dead", run.task, run.attempt, run.error.type))

    def on_worker_start(self, worker: HookedWorker) -> None:
        self.events.append(("on_worker_start",))

    def on_worker_stop(self, worker: HookedWorker) -> None:
        self.events.append(("on_worker_stop",))

    def of(self, task: str) -> list[tuple[object, ...]]:
        return [e for e in self.events if len(e) > 1 and e[1] == task]


class Exploding(Hook):
    """Raises from every event."""

    def before_enqueue(self, envelope: Envelope) -> Envelope | None:
        raise RuntimeError("before_enqueue broke")

    def after_enqueue(
        self, envelope: Envelope, created: bool | None, error: BaseException | None
    ) -> None:
        raise RuntimeError("after_enqueue broke")

    def before_run(self, run: Run) -> None:
        raise RuntimeError("before_run broke")

    def after_run(self, run: Run) -> None:
        raise RuntimeError("after_run broke")

    def on_retry(self, run: Run) -> None:
        raise RuntimeError("on_retry broke")

    def on_dead(self, run: Run) -> None:
        raise RuntimeError("on_dead broke")

    def on_worker_start(self, worker: HookedWorker) -> None:
        raise RuntimeError("on_worker_start broke")

    def on_worker_stop(self, worker: HookedWorker) -> None:
        raise RuntimeError("on_worker_stop broke")


@pytest.fixture(params=BROKER_NAMES)
def url(request: pytest.FixtureRequest, broker_url: Callable[[str], str]) -> str:
    return broker_url(request.param)


async def test_hooks_see_every_event_and_a_raising_hook_harms_no_job(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = Offload(url)
    recorder = Recorder()
    app.add_hook(Exploding())  # first, so the recorder runs after a hook that raised
    app.add_hook(recorder)
    failures = {"flaky": 0}

    @app.task(name="ok")
    async def ok(n: int) -> int:
        return n * 2

    @app.task(name="flaky", backoff=QUICK)
    def flaky() -> str:
        failures["flaky"] += 1
        if failures["flaky"] == 1:
            raise ConnectionError("smtp down")
        return "sent"

    @app.task(name="asks")
    def asks() -> None:
        from offload import current_job

        if current_job().attempt == 1:
            raise Retry(delay=0, reason="provider said later")

    @app.task(name="doomed", give_up_on=(ValueError,))
    def doomed() -> None:
        raise ValueError("bad address")

    try:
        jobs = [
            await ok.enqueue_async(21),
            await flaky.enqueue_async(),
            await asks.enqueue_async(),
            await doomed.enqueue_async(),
        ]
        caplog.set_level(logging.ERROR, logger="offload.hooks")
        await run_worker_until(app, lambda: all_ended(app, [j.id for j in jobs]))

        # No job was harmed by the hook that raised everywhere.
        assert await jobs[0].result_async(timeout=5) == 42
        assert await jobs[1].result_async(timeout=5) == "sent"
        assert (await jobs[2].info_async()).state is JobState.SUCCEEDED
        assert (await jobs[3].info_async()).state is JobState.DEAD
        assert (await jobs[1].info_async()).attempt == 2

        # Every event reached the hook after it, in order.
        worker_events = [e for e in recorder.events if not str(e[0]).endswith("_enqueue")]
        assert worker_events[0] == ("on_worker_start",)
        assert recorder.events[-1] == ("on_worker_stop",)
        assert recorder.of("ok") == [
            ("before_enqueue", "ok"),
            ("after_enqueue", "ok", True, None),
            ("before_run", "ok", 1),
            ("after_run", "ok", 1, "succeeded"),
        ]
        # In order within each attempt. Attempt 2 may start before attempt 1's
        # `after_run`: the retry is recorded in the broker first, and any worker (here
        # another slot of this one) can take the job from there.
        flaky_events = recorder.of("flaky")[2:]
        assert [e for e in flaky_events if e[2] == 1] == [
            ("before_run", "flaky", 1),
            ("on_retry", "flaky", 1, "ConnectionError"),
            ("after_run", "flaky", 1, "retried"),
        ]
        assert [e for e in flaky_events if e[2] == 2] == [
            ("before_run", "flaky", 2),
            ("after_run", "flaky", 2, "succeeded"),
        ]
        assert flaky_events[0] == ("before_run", "flaky", 1)
        assert ("on_retry", "asks", 1, "Retry") in recorder.of("asks")
        assert recorder.of("doomed")[2:] == [
            ("before_run", "doomed", 1),
            ("on_dead", "doomed", 1, "ValueError"),
            ("after_run", "doomed", 1, "dead"),
        ]
        # ... and each failure of the other hook was logged, naming hook and event.
        logged = {(r.hook, r.event) for r in caplog.records if r.name == "offload.hooks"}  # type: ignore[attr-defined]
        assert {e for _, e in logged} == {
            "before_enqueue", "after_enqueue", "before_run", "after_run", "on_retry",
            "on_dead", "on_worker_start", "on_worker_stop",
        }  # fmt: skip
        assert {h for h, _ in logged} == {"Exploding"}
    finally:
        await app.aclose()


async def test_a_duplicate_key_is_reported_as_not_created(url: str) -> None:
    app = Offload(url)
    recorder = Recorder()
    app.add_hook(recorder)

    @app.task(name="once")
    def once() -> None: ...

    try:
        first = await once.options(key="k").enqueue_async()
        again = await once.options(key="k").enqueue_async()
        assert again.id == first.id
        created = [e[2] for e in recorder.events if e[0] == "after_enqueue"]
        assert created == [True, False]
    finally:
        await app.aclose()


async def test_a_failed_enqueue_is_reported_with_its_error() -> None:
    app = Offload("memory://", max_queue_depth=1)
    recorder = Recorder()
    app.add_hook(recorder)

    @app.task(name="t")
    def t() -> None: ...

    try:
        await t.enqueue_async()
        with pytest.raises(Exception) as caught:
            await t.enqueue_async()
        assert recorder.events[-1] == ("after_enqueue", "t", None, caught.value)
    finally:
        await app.aclose()


class Answered(Hook):
    """Every `before_enqueue` must be answered by an `after_enqueue` (Tracing ends its
    `send` span there): the envelope ids heard by each, and the errors."""

    def __init__(self) -> None:
        self.before: list[str] = []
        self.after: list[str] = []
        self.errors: list[BaseException] = []

    def before_enqueue(self, envelope: Envelope) -> Envelope | None:
        self.before.append(envelope.id)
        return None

    def after_enqueue(
        self, envelope: Envelope, created: bool | None, error: BaseException | None
    ) -> None:
        self.after.append(envelope.id)
        if error is not None:
            self.errors.append(error)


async def test_a_workflow_step_whose_enqueue_failed_is_answered_to_the_hooks(
    tmp_path: Path,
) -> None:
    """A chain's next step, enqueued by the worker, met a broker that refused writes
    (another process held the SQLite file's write lock): the step was sent again once
    the lock went, but the failed try's `before_enqueue` never got its
    `after_enqueue`, so Tracing kept an unended `send` span per failed try, for ever."""
    path = tmp_path / "broker.db"
    app = Offload(f"sqlite:///{path}")
    hook = Answered()
    app.add_hook(hook)
    locked = threading.Event()

    @app.task(name="first")
    def first() -> int:
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")  # writes wait, then fail (busy timeout)

        def release() -> None:  # once a write failed (or 200 s passed, if none)
            deadline = time.monotonic() + 200
            while not hook.errors and time.monotonic() < deadline:
                time.sleep(0.1)
            holder.rollback()
            holder.close()

        threading.Thread(target=release, daemon=True).start()
        locked.set()
        return 1

    @app.task(name="second")
    def second(value: int) -> int:
        return value + 1

    try:
        flow = await chain(first.call(), second.partial()).enqueue_async()
        assert flow.last is not None
        last = flow.last.id
        await run_worker_until(
            app, lambda: all_ended(app, [last]), timeout_s=300, lease_s=600, sweep_s=600
        )
        assert locked.is_set() and await flow.result_async(timeout=5) == 2
        assert sorted(hook.before) == sorted(hook.after)  # each try answered
        assert hook.errors, "the lock never made the step's enqueue fail"
    finally:
        await app.aclose()


async def test_a_batch_refused_for_a_later_bad_call_is_answered_for_every_job() -> None:
    """`enqueue_many` whose second call does not fit the task: nothing is sent, but the
    first job had its `before_enqueue` and never an `after_enqueue`, so Tracing kept
    its `send` span open, unended, for the process's life."""
    app = Offload("memory://")
    hook = Answered()
    app.add_hook(hook)

    @app.task(name="one_arg")
    def one_arg(x: int) -> None: ...

    try:
        with pytest.raises(InvalidArguments):
            await one_arg.enqueue_many_async([(1,), (1, 2)])
        assert len(hook.before) == 1
        assert hook.after == hook.before and len(hook.errors) == 1
    finally:
        await app.aclose()


def test_only_hook_objects_are_accepted() -> None:
    app = Offload("memory://")
    with pytest.raises(TypeError, match=r"must be an offload\.hooks\.Hook"):
        app.add_hook(print)  # type: ignore[arg-type]
