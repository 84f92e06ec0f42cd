"""Flow control in the worker and at the producer, on the memory broker with a
FakeClock: rate and concurrency limits at admission, deferral without an attempt,
fairness between keys, queue-depth backpressure, and option validation."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from offload import (
    ConfigurationError,
    JobState,
    Offload,
    QueueFull,
    Worker,
    chord,
    current_job,
    group,
)
from offload.limits import Rate, parse_rate
from offload.testing import FakeClock


@pytest.fixture
def app(clock: FakeClock) -> Offload:
    return Offload("memory://", clock=clock)


async def test_deferred_job_keeps_its_attempt_count_and_runs_later(
    app: Offload, clock: FakeClock
) -> None:
    attempts: list[int] = []

    @app.task(rate_limit="1/m")
    def ping(n: int) -> None:
        attempts.append(current_job().attempt)

    first, second = await ping.enqueue_async(1), await ping.enqueue_async(2)
    worker = Worker(app)

    assert await worker.drain() == 1
    info = await second.info_async()
    assert info is not None
    assert (info.state, info.attempt) == (JobState.SCHEDULED, 0)
    assert info.due_at == pytest.approx(clock.now() + 60, abs=1e-3)

    clock.advance(60)
    assert await worker.drain() == 1
    assert attempts == [1, 1]  # the deferral used no attempt
    assert (await first.info_async()).state is JobState.SUCCEEDED
    assert (await second.info_async()).state is JobState.SUCCEEDED


async def test_rate_limited_key_backlog_does_not_delay_other_keys(
    app: Offload, clock: FakeClock
) -> None:
    ran: list[str] = []

    @app.task(rate_limit="5/m", rate_key=lambda provider, n: provider)
    def send(provider: str, n: int) -> None:
        ran.append(provider)

    # Given a backlog of 30 jobs for one provider, enqueued before 5 for another.
    await send.enqueue_many_async([("slow", n) for n in range(30)])
    await send.enqueue_many_async([("fast", n) for n in range(5)])

    await Worker(app, concurrency=4).drain()

    assert ran.count("fast") == 5  # all of them, at once
    assert ran.count("slow") == 5  # the burst; the rest wait their tokens
    counts = (await app.broker.counts(["default"]))["default"].states
    assert counts[JobState.SCHEDULED] == 25
    # The backlog comes back spread one token interval (12 s) apart, not all at once.
    due = sorted(
        i.due_at for i in (await app.broker.list_jobs(state=JobState.SCHEDULED, limit=50)).items
    )
    gaps = [b - a for a, b in itertools.pairwise(due)]
    assert min(gaps) == pytest.approx(12.0, abs=1e-3)
    clock.advance(12)
    await Worker(app).drain()
    assert ran.count("slow") == 6


async def test_limits_are_per_task(app: Offload, clock: FakeClock) -> None:
    @app.task(rate_limit="1/h")
    def limited() -> None: ...

    @app.task
    def free() -> None: ...

    await limited.enqueue_many_async([(), (), ()])
    await free.enqueue_many_async([(), (), ()])
    assert await Worker(app).drain() == 4


async def test_concurrency_limit_holds_and_frees_slots(app: Offload, clock: FakeClock) -> None:
    gate = asyncio.Event()
    running: list[int] = []
    peak = 0

    @app.task(name="hold", concurrency_limit=2)
    async def hold(n: int) -> None:
        nonlocal peak
        running.append(n)
        peak = max(peak, len(running))
        await gate.wait()
        running.remove(n)

    await hold.enqueue_many_async([(n,) for n in range(5)])
    worker = Worker(app, concurrency=10)
    await worker.tick()
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(running) == 2
    counts = (await app.broker.counts(["default"]))["default"].states
    assert counts[JobState.SCHEDULED] == 3  # deferred, attempts not used
    assert not await app.broker.acquire_slot("slots:hold", limit=2, holder="x", ttl_s=1)

    gate.set()
    await worker.drain()
    assert await app.broker.acquire_slot("slots:hold", limit=2, holder="x", ttl_s=1)
    await app.broker.release_slot("slots:hold", "x")
    for _ in range(10):
        clock.advance(1)
        await worker.drain()
    assert peak == 2
    assert (await app.broker.counts(["default"]))["default"].states[JobState.SUCCEEDED] == 5


async def test_concurrency_key_separates_limits(app: Offload, clock: FakeClock) -> None:
    gate = asyncio.Event()
    started: list[str] = []

    @app.task(concurrency_limit=1, concurrency_key=lambda tenant: tenant)
    async def work(tenant: str) -> None:
        started.append(tenant)
        await gate.wait()

    await work.enqueue_many_async([("a",), ("a",), ("b",)])
    worker = Worker(app)
    await worker.tick()
    for _ in range(20):
        await asyncio.sleep(0)
    assert sorted(started) == ["a", "b"]
    gate.set()
    await worker.drain()


async def test_failing_key_function_buries_the_job(app: Offload) -> None:
    @app.task(rate_limit="10/s", rate_key=lambda **kw: kw["provider"])
    def send(**kw: str) -> None: ...

    job = await send.enqueue_async(other="x")
    await Worker(app).drain()
    info = await job.info_async()
    assert info is not None and info.state is JobState.DEAD
    assert info.error is not None and info.error.type == "InvalidLimitKey"
    assert "KeyError" in info.error.message


async def test_a_chord_member_buried_by_its_limit_key_still_lets_the_callback_run(
    app: Offload,
) -> None:
    """The bury of a failing key function went to the broker without the job's
    envelope, so its workflow never heard of the end: a chord's callback waited for
    ever for a member that was dead."""

    @app.task(name="keyed", rate_limit="10/s", rate_key=lambda t: t["id"])
    def keyed(t: dict[str, str]) -> int:
        return 1

    @app.task(name="fine")
    def fine() -> int:
        return 2

    @app.task(name="collect")
    def collect(results: list[int | None]) -> list[int | None]:
        return results

    flow = await chord(group([keyed.call({}), fine.call()]), collect.partial()).enqueue_async()
    await Worker(app).drain()
    assert await flow.result_async(timeout=5) == [None, 2]


async def test_max_queue_depth_raises_queue_full_at_the_producer(clock: FakeClock) -> None:
    app = Offload("memory://", clock=clock, max_queue_depth=2)

    @app.task
    def one() -> None: ...

    @app.task(queue="big", max_depth=3)
    def other() -> None: ...

    await one.enqueue_async()
    await one.enqueue_async()
    with pytest.raises(QueueFull, match="max 2"):
        await one.enqueue_async()
    with pytest.raises(QueueFull):
        one.enqueue()  # the sync producer too
    await other.enqueue_many_async([(), (), ()])
    with pytest.raises(QueueFull, match="max 3"):
        await other.enqueue_async()
    app.close()


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("10/s", Rate(10, 1.0)),
        ("600/m", Rate(600, 60.0)),
        ("1000/h", Rate(1000, 3600.0)),
        ("5000/d", Rate(5000, 86400.0)),
        (" 3 / 10s ", Rate(3, 10.0)),
    ],
)
def test_parse_rate(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    "bad",
    # "10/.s" raised a bare ValueError ("could not convert string to float: '.'") that
    # named no option, and a period of 10^23 days was accepted.
    [
        "10",
        "10/x",
        "ten/s",
        "0/s",
        "-1/s",
        "10/0s",
        "",
        "1.5/s",
        "10/.s",
        "1/99999999999999999999999d",
    ],
)
def test_bad_rate_limit_is_a_configuration_error_naming_it(app: Offload, bad: str) -> None:
    with pytest.raises(ConfigurationError, match=f"invalid rate_limit {bad!r}"):

        @app.task(rate_limit=bad)
        def t() -> None: ...


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"concurrency_limit": 0}, "concurrency_limit"),
        ({"concurrency_limit": 1.5}, "concurrency_limit"),
        # SQLite could not compare against it: each reservation raised OverflowError.
        ({"concurrency_limit": 10**20}, "concurrency_limit .* from 1 to 2147483647"),
        # Not callable: every job of the task was buried (InvalidLimitKey) when run.
        ({"rate_limit": "1/s", "rate_key": "tenant"}, "rate_key must be a function"),
        ({"concurrency_limit": 1, "concurrency_key": 3}, "concurrency_key must be a function"),
        ({"rate_key": lambda: "k"}, "rate_key needs a rate_limit"),
        ({"concurrency_key": lambda: "k"}, "concurrency_key needs"),
        ({"max_depth": 0}, "max_depth"),
    ],
)
def test_bad_flow_options_are_configuration_errors(
    app: Offload, options: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        app.task(**options)  # type: ignore[call-overload]


def test_bad_max_queue_depth_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="max_queue_depth"):
        Offload("memory://", max_queue_depth=-1)


def test_a_bad_limit_names_the_task_it_was_declared_on() -> None:
    app = Offload("memory://")
    with pytest.raises(ConfigurationError, match=r"for task 'emails\.send'"):
        app.task(name="emails.send", concurrency_limit=0)
    with pytest.raises(ConfigurationError, match=r"task 'emails\.send': rate_key needs"):
        app.task(name="emails.send", rate_key=lambda to: to)
