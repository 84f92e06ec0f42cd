"""The producer side: enqueue options, keys, bad input, and the sync façade."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import inspect
import queue
from collections.abc import Callable
from pathlib import Path

import pytest

import offload
from offload import (
    ConfigurationError,
    InvalidArguments,
    JobNotFound,
    JobState,
    Offload,
    SerializationError,
    UnknownTask,
    chain,
)
from offload.testing import FakeClock


@pytest.fixture
def app(clock: FakeClock) -> Offload:
    return Offload("memory://", clock=clock)


def test_public_api_is_sorted_and_complete() -> None:
    assert offload.__all__ == sorted(offload.__all__)
    public = {
        name
        for name, value in vars(offload).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public - {"annotations"} == set(offload.__all__) - {"__version__"}


def test_bad_url_names_known_schemes() -> None:
    from offload.brokers import SCHEMES

    known = ", ".join(sorted(SCHEMES))
    with pytest.raises(ConfigurationError, match=rf"known schemes: {known}$"):
        Offload("mysql://localhost/db")
    with pytest.raises(ConfigurationError, match="expected SCHEME://"):
        Offload("not a url")


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("redis://:pw@127.0.0.1:1/0?prefx=app", "prefx"),
        ("rediss://:pw@127.0.0.1:1/0?ssl_cert_reqs=none&prefx=app", "prefx"),
        ("redis://:pw@127.0.0.1:1?cluster=true&prefx=app", "prefx"),
        ("redis://:pw@127.0.0.1:1/0?socket_timeout=soon", "socket_timeout"),
        ("postgresql://u:pw@127.0.0.1:1/db?schem=app", "schem"),
    ],
)
def test_an_unknown_url_option_is_a_configuration_error_naming_it(url: str, named: str) -> None:
    """A typo in a broker URL's options fails where the app is made, naming the option,
    as an offload error without the password: not at the first connection, as an
    outage a worker retries forever (Redis), or psycopg's own error (PostgreSQL)."""
    with pytest.raises(ConfigurationError, match=named) as caught:
        Offload(url)
    assert "pw" not in str(caught.value)


def test_url_options_of_the_client_libraries_are_taken() -> None:
    for url in (
        "redis://127.0.0.1:1/0?prefix=a&pool_max=5&socket_timeout=5&client_name=web",
        "rediss://127.0.0.1:1/0?ssl_cert_reqs=none&health_check_interval=10",
        "redis://127.0.0.1:1?cluster=true&read_from_replicas=true&socket_timeout=3",
        "postgresql://u@127.0.0.1:1/db?schema=app&pool_max=3&sslmode=disable&connect_timeout=3",
    ):
        Offload(url).close()


def test_url_defaults_to_env_then_embedded_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_URL", "memory://")
    assert Offload().url == "memory://"
    monkeypatch.delenv("OFFLOAD_URL")
    assert Offload().url == "sqlite:///offload.db"


def test_decorated_function_stays_callable(app: Offload) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    assert add(1, 2) == 3
    assert add.name == f"{__name__}.test_decorated_function_stays_callable.<locals>.add"


def test_duplicate_task_name_is_refused(app: Offload) -> None:
    app.task(name="x")(lambda: None)
    with pytest.raises(ConfigurationError, match="already registered"):
        app.task(name="x")(lambda: None)


def test_unserializable_argument_fails_at_enqueue_naming_it(app: Offload) -> None:
    @app.task(name="emails.send")
    def send(to: str, *, attachment: object = None) -> None: ...

    with pytest.raises(SerializationError, match=r"argument 'attachment' of task 'emails.send'"):
        send.enqueue("ada@example.com", attachment=object())
    with pytest.raises(SerializationError, match=r"argument 0 of task 'emails.send'"):
        send.enqueue({1, 2, object()})  # type: ignore[arg-type]
    assert app.portal.run(app.broker.counts()) == {}  # nothing reached the broker


def test_a_value_that_is_not_json_is_found_where_it_sits_in_its_argument(app: Offload) -> None:
    """The README promises the argument "and where in it": a NaN was placed, but an
    object msgspec cannot encode, deep in a large argument, was not."""

    @dataclasses.dataclass
    class Row:
        when: object

    @app.task(name="reports.build")
    def build(spec: object, *, rows: object = None) -> None: ...

    with pytest.raises(
        SerializationError,
        match=r"argument 0 of task 'reports.build' "
        r"is not JSON-serializable at \['filters'\]\[1\]\['since'\]: ",
    ):
        build.enqueue({"filters": [{"name": "x"}, {"since": object()}]})
    with pytest.raises(SerializationError, match=r"argument 'rows' .* at \[2\]\.when: "):
        build.enqueue({}, rows=[Row(1), Row(2), Row(object())])
    with pytest.raises(SerializationError, match=r"'reports.build' is not JSON-serializable: "):
        build.enqueue(object())  # the argument itself: no place to name
    assert app.portal.run(app.broker.counts()) == {}  # nothing reached the broker


def test_sync_enqueue_returns_handle_at_once(app: Offload) -> None:
    @app.task
    def work(n: int) -> None: ...

    job = work.enqueue(1)
    assert job.created
    assert job.state() is JobState.QUEUED
    assert job.info().envelope().args == [1]  # type: ignore[union-attr]


def test_options_delay_priority_queue_expiry(app: Offload, clock: FakeClock) -> None:
    @app.task(queue="emails")
    def work() -> None: ...

    job = work.options(delay=60, priority=5, expires=dt.timedelta(minutes=15)).enqueue()
    info = job.info()
    assert info.state is JobState.SCHEDULED
    assert info.queue == "emails"
    assert info.priority == 5
    assert info.due_at == pytest.approx(clock.now() + 60)
    assert info.expires_at == pytest.approx(clock.now() + 900)

    at = dt.datetime.fromtimestamp(clock.now() + 5, dt.UTC)
    assert work.options(at=at, queue="other").enqueue().info().queue == "other"
    with pytest.raises(ConfigurationError, match="either delay= or at="):
        work.options(delay=1, at=at)


def test_a_job_that_would_expire_before_it_is_due_is_refused(
    app: Offload, clock: FakeClock
) -> None:
    """`options(delay=3600)` of a task declared with `expires=900` was stored, and
    turned `expired` without ever running: expiry counts from the enqueue. Nothing
    reaches the broker now, by any path (delay=, at=, by name, in a batch)."""

    @app.task(name="emails.verify", expires=900)
    def verify(email: str) -> None: ...

    with pytest.raises(ConfigurationError, match=r"expire 900 s from now, before it is due"):
        verify.options(delay=3600).enqueue("ada@example.com")
    at = dt.datetime.fromtimestamp(clock.now() + 60, dt.UTC)
    with pytest.raises(ConfigurationError, match="could never run"):
        verify.options(at=at, expires=60).enqueue("ada@example.com")
    with pytest.raises(ConfigurationError, match="could never run"):
        app.options("emails.verify", delay=10, expires=5).enqueue("ada@example.com")
    with pytest.raises(ConfigurationError, match="could never run"):
        verify.options(delay=1000).enqueue_many([verify.call("a"), verify.call("b")])
    assert app.portal.run(app.broker.counts()) == {}
    # Due before it expires: stored as before.
    assert verify.options(delay=899).enqueue("ada@example.com").state() is JobState.SCHEDULED


def test_a_datetime_without_a_time_zone_is_refused(app: Offload, clock: FakeClock) -> None:
    """A naive `at=` or `expires=` was read in the process's local time zone:
    `datetime.utcnow() + timedelta(minutes=10)` on a host in New York made the job due
    in 310 minutes. Each host reads it differently, so it is refused, naming it."""

    @app.task(name="t")
    def t() -> None: ...

    naive = dt.datetime(2030, 1, 1, 12, 0)
    with pytest.raises(ConfigurationError, match=r"at is a datetime without a time zone"):
        t.options(at=naive)
    with pytest.raises(ConfigurationError, match=r"expires is a datetime without a time zone"):
        t.options(expires=naive)
    with pytest.raises(ConfigurationError, match="without a time zone"):
        app.options("t", at=naive)
    aware = naive.replace(tzinfo=dt.UTC)
    info = t.options(at=aware).enqueue().info()
    assert info.due_at == aware.timestamp()


@pytest.mark.parametrize("timeout", [float("nan"), "5", True])
def test_waiting_for_a_result_with_a_timeout_that_is_not_seconds_is_refused(
    app: Offload, timeout: object
) -> None:
    """`job.result(timeout=float("nan"))` waited forever (a NaN deadline is never
    reached) and `timeout="5"` raised a bare TypeError; both name the option now, for
    a job and for a workflow."""

    @app.task(name="t")
    def t() -> None: ...

    with pytest.raises(ConfigurationError, match="timeout must be seconds or None"):
        t.enqueue().result(timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="timeout must be seconds or None"):
        chain(t.call()).enqueue().result(timeout=timeout)  # type: ignore[arg-type]


def test_key_returns_existing_job(app: Offload) -> None:
    @app.task
    def send(user_id: int) -> None: ...

    first = send.options(key="verify:1").enqueue(1)
    again = send.options(key="verify:1").enqueue(1)
    assert first.created and not again.created
    assert again.id == first.id


def test_key_function_computed_per_call_in_bulk(app: Offload) -> None:
    @app.task
    def send(user_id: int) -> None: ...

    keyed = send.options(key=lambda user_id: f"verify:{user_id}")
    jobs = keyed.enqueue_many([(1,), (2,), (1,)])
    assert [j.created for j in jobs] == [True, True, False]
    assert jobs[2].id == jobs[0].id


def test_enqueue_many_is_one_batch(app: Offload) -> None:
    @app.task
    def notify(user_id: int, *, channel: str = "email") -> None: ...

    jobs = notify.enqueue_many(notify.call(i, channel="push") for i in range(1000))
    assert len({j.id for j in jobs}) == 1000
    stats = app.portal.run(app.broker.counts())
    assert stats["default"].states[JobState.QUEUED] == 1000


def test_enqueue_by_name_without_the_task(app: Offload) -> None:
    job = app.enqueue("emails.send_verification", "ada@example.com", code="123456")
    envelope = job.info().envelope()
    assert envelope is not None
    assert (envelope.task, envelope.args, envelope.kwargs) == (
        "emails.send_verification",
        ["ada@example.com"],
        {"code": "123456"},
    )


async def test_enqueue_by_name_leaves_defaults_to_the_worker(clock: FakeClock) -> None:
    producer = Offload("memory://", clock=clock)
    consumer = Offload("memory://", clock=clock)
    consumer.broker = producer.broker  # two processes sharing one broker
    runs: list[int] = []

    @consumer.task(name="flaky", max_attempts=2, backoff=offload.Backoff(base_s=0))
    def flaky() -> None:
        runs.append(1)
        raise ConnectionError("down")

    job = await producer.enqueue_async("flaky")
    assert (await job.info_async()).max_attempts is None
    worker = offload.Worker(consumer)
    await worker.drain()
    await worker.drain()
    assert len(runs) == 2
    assert (await job.info_async()).state is JobState.DEAD


def test_enqueue_by_name_uses_registered_defaults(app: Offload) -> None:
    app.task(name="emails.send", queue="emails", max_attempts=9)(lambda: None)
    info = app.enqueue("emails.send").info()
    assert (info.queue, info.max_attempts) == ("emails", 9)


def test_get_task_unknown_lists_registered(app: Offload) -> None:
    app.task(name="a.b")(lambda: None)
    with pytest.raises(UnknownTask, match=r"no task named 'x' \(registered: a.b\)"):
        app.get_task("x")


def test_unknown_job_handle_raises_not_found(app: Offload) -> None:
    with pytest.raises(JobNotFound):
        app.job("nope").state()


def test_arguments_that_do_not_fit_fail_at_enqueue(app: Offload) -> None:
    @app.task(name="emails.send")
    def send(to: str, code: str) -> None: ...

    with pytest.raises(InvalidArguments, match=r"bad arguments for task 'emails.send'"):
        send.enqueue("ada@example.com")  # type: ignore[call-arg]
    with pytest.raises(InvalidArguments, match="unexpected keyword argument 'cc'"):
        app.enqueue("emails.send", "a", "b", cc="c")


def test_verdict_on_arguments_holds_per_call_shape_each_time(app: Offload) -> None:
    @app.task(name="emails.send")
    def send(to: str, code: str = "0") -> None: ...

    for _ in range(2):  # the second time from the remembered verdicts
        send.enqueue("ada@example.com")
        send.enqueue("ada@example.com", code="1")
        send.enqueue(to="ada@example.com", code="1")
        with pytest.raises(InvalidArguments, match="missing a required argument: 'to'"):
            app.enqueue("emails.send", code="1")
        with pytest.raises(InvalidArguments, match="multiple values for argument 'to'"):
            app.enqueue("emails.send", "a", to="b")
        with pytest.raises(InvalidArguments, match="too many positional arguments"):
            app.enqueue("emails.send", "a", "b", "c")


def test_bad_options_are_refused(app: Offload) -> None:
    @app.task
    def work() -> None: ...

    with pytest.raises(ConfigurationError, match="priority must be an int"):
        work.options(priority="high")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="queue must be 1 to 200 printable characters"):
        work.options(queue="")
    with pytest.raises(ConfigurationError, match="max_attempts must be an int from 1"):
        work.options(max_attempts=0)


def test_job_ids_are_unique_time_ordered_hex_across_threads_and_a_fork() -> None:
    """Ids take their random bits from a per-thread pool of `os.urandom` bytes: no two
    threads, no refill, and no forked child may hand out the same bits twice."""
    import multiprocessing
    import re
    import threading
    import time

    from offload.envelope import _ENTROPY_BYTES, new_job_id

    per_thread = 3 * _ENTROPY_BYTES // 10  # each thread refills its pool twice
    ids: list[list[str]] = []

    def make() -> None:
        ids.append([new_job_id() for _ in range(per_thread)])

    threads = [threading.Thread(target=make) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    made = [i for batch in ids for i in batch]
    assert len(set(made)) == len(made) == 4 * per_thread
    assert all(re.fullmatch("[0-9a-f]{32}", i) for i in made)
    now_ms = time.time_ns() // 1_000_000
    assert all(now_ms - 60_000 <= int(i[:12], 16) <= now_ms for i in made)
    assert len({i[12:] for i in made}) == len(made)  # the random parts alone differ

    new_job_id()  # the parent's pool has bytes left, which the child must not use
    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    child = context.Process(target=lambda: answers.put([new_job_id() for _ in range(5)]))
    child.start()
    from_child = answers.get(timeout=30)
    child.join(30)
    from_parent = [new_job_id() for _ in range(5)]
    assert not {i[12:] for i in from_child} & {i[12:] for i in from_parent}


def _in_forked_child(work: Callable[[], object], timeout_s: float = 30.0) -> object:
    """`work()`'s result, run in a child forked from this (multi-threaded) process; an
    AssertionError if the child hangs past `timeout_s` (it is then killed)."""
    import multiprocessing
    import warnings

    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    with warnings.catch_warnings():  # Python 3.12+ warns of fork() beside threads
        warnings.simplefilter("ignore", DeprecationWarning)
        child = context.Process(target=lambda: answers.put(repr(work())), daemon=True)
        child.start()
    try:
        return answers.get(timeout=timeout_s)
    except queue.Empty:
        raise AssertionError(f"the forked child hung for {timeout_s} s") from None
    finally:
        child.kill()
        child.join(10)
        answers.close()


def test_a_forked_child_uses_the_sync_api_after_its_parent_did(tmp_path: Path) -> None:
    """gunicorn --preload, uWSGI or multiprocessing's fork: the parent's portal loop and
    the connections it served were not copied into the child (only the thread that
    forked was), so a child that reused them waited forever on a loop nobody runs. It
    starts its own and leaves the parent's alone."""
    app = Offload(f"sqlite:///{tmp_path / 'offload.db'}")

    @app.task(name="double")
    def double(x: int) -> int:
        return 2 * x

    first = double.enqueue(1)
    assert first.state() is JobState.QUEUED  # the parent's portal loop is running

    def in_child() -> object:
        job = double.enqueue(2)
        return job.state(), first.state(), asyncio.run(first.state_async())

    states = (JobState.QUEUED, JobState.QUEUED, JobState.QUEUED)
    try:
        assert _in_forked_child(in_child) == repr(states)
        assert first.state() is JobState.QUEUED  # the parent's connections still serve
        assert len(app.portal.run(app.broker.list_jobs(limit=10)).items) == 2
    finally:
        app.close()
