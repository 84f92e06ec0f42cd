"""The worker's policy, driven with a FakeClock on the memory broker (no sleeping)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from offload import (
    Backoff,
    Bury,
    JobCancelled,
    JobExpired,
    JobFailed,
    JobState,
    Offload,
    ResultTimeout,
    Retry,
    Worker,
    current_job,
)
from offload.brokers.records import Lease
from offload.envelope import Envelope, new_job_id
from offload.testing import FakeClock

NO_JITTER = Backoff(base_s=2.0, cap_s=10.0, jitter=False)


@pytest.fixture
def app(clock: FakeClock) -> Offload:
    return Offload("memory://", clock=clock)


async def test_sync_and_async_handlers_run_in_one_worker(app: Offload) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    j1 = await add.enqueue_async(2, 3)
    j2 = await double.enqueue_async(21)
    assert await Worker(app).drain() == 2
    assert await j1.result_async(timeout=1) == 5
    assert await j2.result_async(timeout=1) == 42


async def test_failing_job_backs_off_exponentially_then_dies(
    app: Offload, clock: FakeClock
) -> None:
    @app.task(max_attempts=3, backoff=NO_JITTER)
    def always_fails() -> None:
        raise ConnectionError("smtp down")

    job = await always_fails.enqueue_async()
    worker = Worker(app)
    await worker.drain()
    info = await job.info_async()
    assert info.state is JobState.SCHEDULED
    assert info.due_at == pytest.approx(clock.now() + 2.0)  # base * 2**0
    assert info.error is not None and info.error.type == "ConnectionError"

    clock.advance(1.9)
    assert await worker.drain() == 0  # not due yet
    clock.advance(0.2)
    await worker.drain()
    info = await job.info_async()
    assert info.state is JobState.SCHEDULED
    assert info.due_at == pytest.approx(clock.now() + 4.0)  # base * 2**1

    clock.advance(4.1)
    await worker.drain()
    info = await job.info_async()
    assert info.state is JobState.DEAD
    assert info.attempt == 3
    assert info.error is not None
    assert "attempts exhausted (3/3)" in info.error.message
    assert "smtp down" in info.error.message
    with pytest.raises(JobFailed) as caught:
        await job.result_async(timeout=0)
    assert caught.value.error is not None and caught.value.error.type == "ConnectionError"


async def test_handler_retry_honours_given_delay(app: Offload, clock: FakeClock) -> None:
    @app.task
    def rate_limited() -> None:
        raise Retry(delay=42, reason="provider said Retry-After: 42")

    job = await rate_limited.enqueue_async()
    await Worker(app).drain()
    info = await job.info_async()
    assert info.state is JobState.SCHEDULED
    assert info.due_at == pytest.approx(clock.now() + 42)


async def test_bury_skips_remaining_attempts(app: Offload) -> None:
    @app.task(max_attempts=10)
    def invalid() -> None:
        raise Bury("address does not exist")

    job = await invalid.enqueue_async()
    await Worker(app).drain()
    info = await job.info_async()
    assert info.state is JobState.DEAD
    assert info.attempt == 1
    assert info.error is not None and info.error.message == "address does not exist"


async def test_give_up_on_exception_buries_at_once(app: Offload) -> None:
    @app.task(max_attempts=10, give_up_on=(ValueError,))
    def validate() -> None:
        raise ValueError("bad email")

    job = await validate.enqueue_async()
    await Worker(app).drain()
    info = await job.info_async()
    assert info.state is JobState.DEAD
    assert info.error is not None
    assert info.error.message == "ValueError is not retryable: bad email"


async def test_exception_outside_retry_on_is_not_retried(app: Offload) -> None:
    @app.task(max_attempts=10, retry_on=(ConnectionError,))
    def picky() -> None:
        raise KeyError("x")

    job = await picky.enqueue_async()
    await Worker(app).drain()
    assert await job.state_async() is JobState.DEAD


async def test_undecodable_payload_is_buried_with_reason(app: Offload) -> None:
    broker = await app.connected_broker()
    envelope = Envelope(id=new_job_id(), task="anything", created_at=app.clock.now())
    await broker.enqueue([(envelope, b"\x00 not json")])
    await Worker(app, queues=["default"]).drain()
    info = await broker.get_job(envelope.id)
    assert info is not None and info.state is JobState.DEAD
    assert info.error is not None and info.error.type == "Undecodable"


async def test_unknown_task_is_buried_and_runs_after_replay(app: Offload) -> None:
    job = await app.enqueue_async("reports.not_deployed_yet", 7)
    await Worker(app).drain()
    info = await job.info_async()
    assert info.state is JobState.DEAD
    assert info.error is not None and info.error.type == "UnknownTask"
    assert "reports.not_deployed_yet" in info.error.message

    @app.task(name="reports.not_deployed_yet")
    def report(n: int) -> int:
        return n + 1

    broker = await app.connected_broker()
    assert await broker.replay_dead(job_ids=[job.id]) == 1
    await Worker(app).drain()
    assert await job.result_async(timeout=0) == 8


async def test_expired_job_never_runs(app: Offload, clock: FakeClock) -> None:
    ran: list[str] = []

    @app.task(expires=900)
    def send(code: str) -> None:
        ran.append(code)

    job = await send.enqueue_async("123456")
    clock.advance(901)
    await Worker(app).drain()
    assert ran == []
    assert await job.state_async() is JobState.EXPIRED
    with pytest.raises(JobExpired):
        await job.result_async(timeout=0)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_prefetched_job_that_expires_while_it_waits_never_runs(
    app: Offload, clock: FakeClock, kind: str
) -> None:
    """The broker checks `expires` when it leases a job, and a worker with a prefetch
    leases jobs ahead: one that waited there past its expiry ran anyway (`offload
    worker -c 1 --prefetch 10`: five jobs with `expires=1.5` behind a 3 s job all ran).
    It is now given back unrun, with no attempt counted, and the broker expires it."""
    ran: list[int] = []

    @app.task(name="long")
    async def long() -> None:
        clock.advance(60)  # the jobs prefetched meanwhile expire

    @app.task(name="quick_sync", expires=30)
    def quick_sync(i: int) -> None:
        ran.append(i)

    @app.task(name="quick_async", expires=30)
    async def quick_async(i: int) -> None:
        ran.append(i)

    quick = quick_sync if kind == "sync" else quick_async
    await long.enqueue_async()
    jobs = [await quick.enqueue_async(i) for i in range(3)]
    await Worker(app, concurrency=1, prefetch=5).drain()
    assert ran == []
    for job in jobs:
        info = await job.info_async()
        assert info.state is JobState.EXPIRED and info.attempt == 0


async def test_cancelled_job_never_runs(app: Offload) -> None:
    ran: list[int] = []

    @app.task
    def work() -> None:
        ran.append(1)

    job = await work.enqueue_async()
    assert await job.cancel_async() is True
    await Worker(app).drain()
    assert ran == []
    with pytest.raises(JobCancelled):
        await job.result_async(timeout=0)


async def test_result_wait_times_out_with_typed_error(app: Offload) -> None:
    @app.task
    def never_run() -> None: ...

    job = await never_run.enqueue_async()
    with pytest.raises(ResultTimeout):
        await job.result_async(timeout=0.05)


async def test_handler_sees_its_job_context(app: Offload) -> None:
    seen: list[tuple[str, int, str | None]] = []

    @app.task
    def sync_handler() -> None:
        ctx = current_job()
        seen.append((ctx.id, ctx.attempt, ctx.key))

    @app.task
    async def async_handler() -> None:
        ctx = current_job()
        seen.append((ctx.id, ctx.attempt, ctx.key))

    j1 = await sync_handler.options(key="k1").enqueue_async()
    j2 = await async_handler.enqueue_async()
    await Worker(app).drain()
    assert sorted(seen) == sorted([(j1.id, 1, "k1"), (j2.id, 1, None)])


async def test_worker_lost_past_max_attempts_is_buried(app: Offload, clock: FakeClock) -> None:
    ran: list[int] = []

    @app.task(max_attempts=2)
    def crashy() -> None:
        ran.append(1)

    job = await crashy.enqueue_async()
    broker = await app.connected_broker()
    # Two workers reserve the job and die without settling it.
    for _ in range(2):
        assert len(await broker.reserve(["default"], worker_id="w", lease_s=5, limit=1)) == 1
        clock.advance(6)
    await Worker(app).drain()
    info = await job.info_async()
    assert ran == []
    assert info.state is JobState.DEAD
    assert info.error is not None and info.error.type == "WorkerLost"


async def test_unserializable_result_buries_with_reason(app: Offload) -> None:
    @app.task(max_attempts=5)
    def returns_object() -> object:
        return object()

    job = await returns_object.enqueue_async()
    await Worker(app).drain()
    info = await job.info_async()
    assert info.state is JobState.DEAD
    assert info.attempt == 1
    assert info.error is not None and info.error.type == "SerializationError"


async def test_a_nan_or_infinite_result_is_buried_not_read_back_as_none(app: Offload) -> None:
    """msgspec writes NaN and ±Infinity as null: a handler returning `float("nan")`
    succeeded with the result None, and a chain passed None on. Like any result JSON
    cannot hold, it is now refused, naming where it is."""

    @app.task(name="ratio", max_attempts=5)
    def ratio() -> float:
        return float("nan")

    @app.task(name="stats", max_attempts=5)
    async def stats() -> dict[str, list[float]]:
        return {"p99": [1.0, float("inf")]}

    @app.task(name="report")
    def report() -> None:
        current_job().progress({"eta": float("-inf")})

    nan_job, inf_job = await ratio.enqueue_async(), await stats.enqueue_async()
    progress_job = await report.enqueue_async()
    await Worker(app).drain()
    for job, message in [
        (nan_job, "the result of task 'ratio' holds nan: NaN"),
        (inf_job, "the result of task 'stats' holds inf at ['p99'][1]: NaN"),
        (progress_job, "a progress report holds -inf at ['eta']: NaN"),
    ]:
        info = await job.info_async()
        assert info.state is JobState.DEAD and info.attempt == 1
        assert info.error is not None and info.error.type == "SerializationError"
        assert info.error.message.startswith(message)


async def test_shutdown_releases_prefetched_jobs(app: Offload) -> None:
    started = asyncio.Event()
    finish = asyncio.Event()

    @app.task
    async def slow(n: int) -> int:
        started.set()
        await finish.wait()
        return n

    jobs = [await slow.enqueue_async(i) for i in range(3)]
    worker = Worker(app, concurrency=1, prefetch=2, grace_s=5, poll_s=0.01)
    runner = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 2)
    worker.stop()
    await asyncio.sleep(0.05)
    states = [await j.state_async() for j in jobs]
    assert states == [JobState.RUNNING, JobState.QUEUED, JobState.QUEUED]
    released = [await j.info_async() for j in jobs[1:]]
    assert [i.attempt for i in released] == [0, 0]  # released work costs no attempt
    finish.set()
    await asyncio.wait_for(runner, 5)
    assert await jobs[0].result_async(timeout=0) == 0


async def test_shutdown_past_grace_gives_running_job_back(app: Offload) -> None:
    started = asyncio.Event()

    @app.task
    async def stuck() -> None:
        started.set()
        await asyncio.sleep(60)

    job = await stuck.enqueue_async()
    worker = Worker(app, grace_s=0.1, poll_s=0.01)
    runner = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 2)
    worker.stop()
    await asyncio.wait_for(runner, 5)
    info = await job.info_async()
    assert info.state is JobState.SCHEDULED
    assert info.error is not None and info.error.type == "WorkerShutdown"


async def test_job_whose_arguments_do_not_fit_is_buried_at_once(app: Offload) -> None:
    producer = Offload("memory://", clock=app.clock)
    producer.broker = app.broker  # an older producer that enqueues by name

    @app.task(name="emails.send", max_attempts=5)
    def send(to: str) -> None: ...

    job = await producer.enqueue_async("emails.send", "a@b.c", "surplus")
    await Worker(app).drain()
    info = await job.info_async()
    assert (info.state, info.attempt) == (JobState.DEAD, 1)
    assert info.error is not None and info.error.type == "InvalidArguments"


async def test_prefetch_buffer_is_refilled_in_batches_not_after_every_job(app: Offload) -> None:
    @app.task
    async def quick(n: int) -> int:
        await asyncio.sleep(0)
        return n

    for i in range(0, 200, 50):
        await quick.enqueue_many_async([(n,) for n in range(i, i + 50)])
    reserve = app.broker.reserve
    reservations: list[int] = []

    async def counting(*args: object, **kwargs: object) -> object:
        leases = await reserve(*args, **kwargs)  # type: ignore[arg-type]
        reservations.append(len(leases))
        return leases

    app.broker.reserve = counting  # type: ignore[method-assign, assignment]
    assert await Worker(app, concurrency=4, prefetch=20).drain() == 200
    # Refilled once the buffer of 20 is half empty: about 12 jobs per reservation,
    # where topping it up after every job reserved one at a time.
    assert len(reservations) < 30, reservations


async def test_job_from_a_wait_starts_before_the_next_wait_is_sent(app: Offload) -> None:
    events: list[str] = []
    ran = asyncio.Event()

    @app.task
    async def first_line() -> None:
        events.append("handler")
        ran.set()

    await first_line.enqueue_async()
    wait_for_work = app.broker.wait_for_work

    async def noting(*args: object, **kwargs: object) -> object:
        events.append("wait")
        return await wait_for_work(*args, **kwargs)  # type: ignore[arg-type]

    app.broker.wait_for_work = noting  # type: ignore[method-assign, assignment]
    worker = Worker(app, poll_s=0.05)
    runner = asyncio.create_task(worker.run())
    await asyncio.wait_for(ran.wait(), 2)
    worker.stop()
    await asyncio.wait_for(runner, 5)
    # The handler's first line comes before the fetch loop builds and sends its next
    # call (on Redis a script call), which used to delay every pick-up by its CPU time.
    assert events[:3] == ["wait", "handler", "wait"], events


async def test_a_reserved_job_taken_back_before_it_started_is_released_to_the_broker(
    app: Offload,
) -> None:
    """The broker refused to extend a lease the worker had not started (RabbitMQ: its
    connection ended): the worker drops it, and tells the broker so, which must not keep
    it as a job this process runs (RabbitMQ gives a job delivered again to a run of
    this process that holds it)."""
    go_on = asyncio.Event()

    @app.task
    async def blocking(n: int) -> None:
        await go_on.wait()

    await blocking.enqueue_many_async([(1,), (2,)])
    worker = Worker(app, concurrency=1, prefetch=1, poll_s=0.01)
    runner = asyncio.create_task(worker.run())
    for _ in range(200):
        if worker.running_jobs() and worker._buffer:
            break
        await asyncio.sleep(0.01)
    [buffered] = list(worker._buffer)
    released: list[str] = []
    release = app.broker.release

    async def refused(leases: object, lease_s: float) -> list[bool]:
        return [False] * len(leases)  # type: ignore[arg-type]

    async def noting(leases: Sequence[Lease]) -> None:
        released.extend(lease.job_id for lease in leases)
        await release(leases)

    app.broker.extend = refused  # type: ignore[method-assign]
    app.broker.release = noting  # type: ignore[method-assign]
    await worker.extend_leases()
    assert released == [buffered.job_id] and not worker._buffer
    go_on.set()
    worker.stop()
    await asyncio.wait_for(runner, 5)


async def test_a_second_stop_while_the_first_ends_the_wait_is_no_error(app: Offload) -> None:
    """SIGTERM, then SIGTERM again ("stopping now") while the fetch loop is still
    leaving its wait: the second stop used to cancel the waiting task a second time,
    which `Worker.run` then raised as an uncaught CancelledError (a traceback at
    shutdown, and the wait's own clean-up cut short)."""

    @app.task
    async def never() -> None: ...

    worker = Worker(app, poll_s=30)
    runner = asyncio.create_task(worker.run())
    for _ in range(200):
        if worker._waiting is not None:
            break
        await asyncio.sleep(0.01)
    assert worker._waiting is not None
    worker.stop()
    worker.stop(force=True)  # before the loop delivered the first cancellation
    await asyncio.wait_for(runner, 5)  # ends, and raises nothing
