"""`amqp://` and `sqs://` without a state store, one rule for both: a real `offload
worker` runs the README's jobs (retries with backoff, `Retry(delay=)`, a delayed job,
dead letters counted, replayed and purged), and everything that needs a store raises a
`ConfigurationError` naming the settings that give one (no secret shown)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import pytest

from offload import JobState, chain
from offload.brokers.records import Lease
from offload.brokers.roles import Broker
from offload.errors import ConfigurationError
from tests.integration.test_amqp_worker import worker_app

pytestmark = pytest.mark.timeout(180)
T = TypeVar("T")


@pytest.fixture(params=["amqp", "sqs"])
def storeless_app(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ModuleType, Path, str]]:
    """The README's app on RabbitMQ or SQS alone, and a real `offload worker`."""
    if request.param == "amqp":
        url = request.getfixturevalue("amqp_url")
    else:
        url = request.getfixturevalue("sqs_url") + "&wait=1"
    with worker_app(url, tmp_path, monkeypatch, f"alone{request.param}") as (app, outbox):
        yield app, outbox, request.param


def arrived(outbox: Path, name: str, within: float = 30) -> str:
    deadline = time.monotonic() + within
    while not (outbox / name).exists():
        assert time.monotonic() < deadline, f"{name} never arrived"
        time.sleep(0.05)
    return (outbox / name).read_text()


def on_broker(app: ModuleType, call: Callable[[Broker], Awaitable[T]]) -> T:
    """`call` on the app's broker, from this (synchronous) test."""

    async def run() -> T:
        return await call(await app.app.connected_broker())

    result: T = app.app.portal.run(run())
    return result


def dead_count(app: ModuleType, within: float, expected: int) -> int:
    """The dead-letter count the broker reports, waited for (SQS's is approximate)."""
    deadline = time.monotonic() + within
    while True:
        dead = on_broker(app, lambda b: b.counts(["default"]))["default"].states[JobState.DEAD]
        if dead == expected or time.monotonic() > deadline:
            return int(dead)
        time.sleep(0.2)


def test_the_jobs_run_and_dead_letters_are_counted_replayed_and_purged(
    storeless_app: tuple[ModuleType, Path, str],
) -> None:
    app, outbox, _ = storeless_app
    send = app.send_verification
    send.enqueue("ada@example.com", "1")
    send.enqueue("flaky@example.com", "2")  # fails twice, retried with backoff
    send.enqueue("limited@example.com", "3")  # Retry(delay=0.5) once
    started = time.monotonic()
    send.options(delay=2).enqueue("later@example.com", "4")
    assert arrived(outbox, "ada@example.com.1") == "1"
    assert arrived(outbox, "flaky@example.com.2") == "3"
    assert arrived(outbox, "limited@example.com.3") == "2"
    assert arrived(outbox, "later@example.com.4") == "1"
    assert time.monotonic() - started >= 1.9
    # a job that gives up at once goes to the dead letters, counted there
    bad = [send.enqueue(f"bad{n}@example.com", str(n)).id for n in range(3)]
    assert dead_count(app, 30, 3) == 3
    # replay one (the mailbox is fixed meanwhile): it runs; purge another; one is left
    (outbox / "fixed").write_text("")
    assert on_broker(app, lambda b: b.replay_dead("default", [bad[0]])) == 1
    assert arrived(outbox, "bad0@example.com.0") == "1"
    assert on_broker(app, lambda b: b.purge_dead("default", [bad[1]])) == 1
    assert dead_count(app, 30, 1) == 1
    assert on_broker(app, lambda b: b.purge_dead("default")) == 1
    assert dead_count(app, 30, 0) == 0
    assert "default" in on_broker(app, lambda b: b.queues())
    # the CLI, as an operator runs it: counts of a named queue; no registry of workers
    shown = subprocess.run(
        [sys.executable, "-m", "offload", "status", "--json", "-q", "default"],
        capture_output=True,
        text=True,
        check=True,
    )
    status = json.loads(shown.stdout)
    assert status["queues"]["default"]["dead"] == 0 and status["workers"] is None


def test_what_needs_a_store_says_which_setting_gives_one(
    storeless_app: tuple[ModuleType, Path, str],
) -> None:
    app, outbox, scheme = storeless_app
    job = app.add.enqueue(1, 2)
    app.send_verification.enqueue("ada@example.com", "1")
    assert arrived(outbox, "ada@example.com.1") == "1"  # (the worker is up)
    refusals = {
        "result": lambda: job.result(timeout=5),
        "state": job.state,
        "cancel": job.cancel,
        "key": lambda: app.add.options(key="once").enqueue(2, 2),
        "chain": lambda: chain(app.add.call(1, 2), app.add.partial(10)).enqueue(),
        "workers": lambda: on_broker(app, lambda b: b.workers()),
    }
    for what, call in refusals.items():
        with pytest.raises(ConfigurationError) as caught:
            call()
        message = str(caught.value)
        assert f"needs a state store on {scheme}://" in message, (what, message)
        assert "state=" in message and "OFFLOAD_STATE_URL" in message, (what, message)


async def test_the_dashboard_shows_the_counts_and_says_what_needs_a_store(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    from offload import Offload
    from offload.dashboard import create_app

    monkeypatch.delenv("OFFLOAD_STATE_URL", raising=False)
    app = Offload(amqp_url)

    @app.task(name="ping")
    def ping(n: int) -> int:
        return n

    job = await ping.enqueue_async(1)
    transport = httpx.ASGITransport(app=create_app(app))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://dash.test") as http:
            overview = await http.get("/")
            assert overview.status_code == 200 and "default" in overview.text
            # no registry: not "0 workers alive", which reads as "every worker is down"
            assert "workers not known" in overview.text
            assert "workers alive" not in overview.text
            for path in (f"/jobs/{job.id}", "/jobs", "/dead"):
                page = await http.get(path)
                assert page.status_code == 501, (path, page.status_code)
                assert "needs a state store on amqp://" in page.text, path
    finally:
        await app.aclose()


def test_dead_letters_on_rabbitmq_alone_need_their_queue_named(amqp_url: str) -> None:
    """RabbitMQ cannot list queues: a replay or purge over "every queue" would look only
    at those this process used (none, in the CLI) and report 0, so it is refused."""
    for command in (["replay", "some-id"], ["purge", "--all", "-y"]):
        done = subprocess.run(
            [sys.executable, "-m", "offload", "dlq", *command, "--url", amqp_url],
            capture_output=True,
            text=True,
        )
        assert done.returncode != 0, command
        assert "cannot list its queues" in done.stderr and "-q/--queue" in done.stderr
        assert "guest:guest" not in done.stderr  # the URL's password is not shown
    replay = ["dlq", "replay", "some-id", "-q", "q1", "--url", amqp_url]
    named = subprocess.run(
        [sys.executable, "-m", "offload", *replay],
        capture_output=True,
        text=True,
        check=True,
    )
    assert named.stdout.strip() == "replayed 0 dead jobs"


@pytest.mark.parametrize("scheme", ["amqp", "sqs"])
def test_the_metrics_exporter_serves_the_counts_without_a_store(
    scheme: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`offload metrics` on RabbitMQ or SQS alone: the queue's counts are served and
    what it cannot know is left out, not shown as 0 (`offload_workers`: no registry;
    RabbitMQ counts neither running nor scheduled jobs), instead of every scrape
    failing on the missing worker registry and counting as a broker error."""
    from offload import Offload
    from offload.metrics import BrokerCollector

    monkeypatch.delenv("OFFLOAD_STATE_URL", raising=False)
    url = request.getfixturevalue("amqp_url" if scheme == "amqp" else "sqs_url")
    producer = Offload(url)
    reader = Offload(url)
    try:
        producer.enqueue("ping", 1)  # declares the queue; no worker takes it
        collector = BrokerCollector(reader, queues=["default"])
        deadline = time.monotonic() + 30
        while True:  # SQS's counts are approximate: wait for the job to show
            families = {f.name: f for f in collector.collect()}
            jobs = families.get("offload_queue_jobs")
            samples = jobs.samples if jobs is not None else []
            depth = {s.labels["state"]: s.value for s in samples if s.labels["queue"] == "default"}
            if depth.get("queued") == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert depth["queued"] == 1
        assert collector.errors == 0
        assert "offload_workers" not in families
        assert "succeeded" not in depth  # never counted by the queue
        if scheme == "amqp":
            assert "running" not in depth and "scheduled" not in depth
    finally:
        producer.close()
        reader.close()


@pytest.fixture(params=["amqp", "sqs"])
def alone_url(request: pytest.FixtureRequest) -> str:
    """A RabbitMQ or SQS URL of this test's own, without a state store."""
    return str(request.getfixturevalue(f"{request.param}_url"))


async def test_jobs_enqueued_without_a_store_run_once_a_store_is_set(
    alone_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Jobs waiting in RabbitMQ or SQS when the operator adds `state=` are not lost:
    a copy without the store's stamp used to be refused by the store's claim and
    acknowledged unrun, with no trace. Now the job is recorded in the store and runs
    (and says so in the log)."""
    from offload import Offload
    from offload.brokers import from_url

    caplog.set_level(logging.INFO, logger="offload.brokers.composite")
    monkeypatch.delenv("OFFLOAD_STATE_URL", raising=False)
    url = alone_url
    alone = Offload(url)
    try:
        waiting = (await alone.enqueue_async("ping", 1)).id
    finally:
        await alone.aclose()
    broker = from_url(url, state_url=f"sqlite:///{tmp_path / 'state.db'}")
    await broker.connect()
    try:
        deadline = time.monotonic() + 30
        leases: list[Lease] = []
        while not leases:
            assert time.monotonic() < deadline, "the job enqueued without a store never ran"
            leases = await broker.reserve(["default"], worker_id="w1", lease_s=30, limit=1)
            if not leases:
                await broker.wait(["default"], 0.2)
        assert [lease.job_id for lease in leases] == [waiting]
        info = await broker.get_job(waiting)
        assert info is not None and info.state is JobState.RUNNING
        assert "recorded in the store" in caplog.text
    finally:
        await broker.close()


def test_status_shows_the_states_rabbitmq_alone_cannot_count_as_unknown(amqp_url: str) -> None:
    """RabbitMQ alone counts ready and dead messages only: `offload status` showed 0
    running, 0 scheduled and 0 succeeded, which reads as "nothing runs"; they are "-"."""
    shown = subprocess.run(
        [sys.executable, "-m", "offload", "status", "-q", "default", "--url", amqp_url],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    [row] = [line for line in shown.stdout.splitlines() if "default" in line]
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    # queue, queued, scheduled, running, succeeded, dead, expired, cancelled, oldest
    assert cells[1] == "0" and cells[5] == "0", cells
    assert cells[2] == cells[3] == cells[4] == cells[6] == cells[7] == "-", cells


@pytest.mark.parametrize("command", [["scheduler"], ["worker", "--scheduler"]])
def test_schedules_without_a_store_are_refused_at_start(
    alone_url: str, tmp_path: Path, command: list[str]
) -> None:
    """`offload scheduler` (or a `--scheduler` worker) on RabbitMQ or SQS alone: each
    tick needs the store (a fire's job is found by its key), so it used to start and
    then log "scheduler tick failed" with a traceback several times a second, for
    ever. It now ends at once with one line naming the schedules and the setting."""
    (tmp_path / "ticking.py").write_text(
        "import os\n"
        "from offload import Every, Offload\n"
        "app = Offload(os.environ['OFFLOAD_URL'])\n"
        "@app.task(name='tick')\n"
        "def tick() -> None: ...\n"
        "app.schedule(tick, Every(2), id='every-2s')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OFFLOAD_STATE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "offload", *command[:1], "ticking:app", *command[1:]],
        capture_output=True,
        text=True,
        timeout=30,  # it ran until killed
        cwd=tmp_path,
        env={**env, "OFFLOAD_URL": alone_url, "PYTHONPATH": str(tmp_path)},
    )
    assert done.returncode != 0
    assert "the schedules (every-2s) cannot run" in done.stderr, done.stderr
    assert "state=" in done.stderr and "Traceback" not in done.stderr, done.stderr


async def test_a_job_whose_limits_need_a_store_is_buried_with_the_reason(
    alone_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rate- or concurrency-limited task on RabbitMQ or SQS alone: the limit cannot
    be checked, and the job was held unrun until its lease lapsed (on RabbitMQ: as
    long as the worker lived), then checked again, with a traceback each time. It is
    buried with the reason, which names the setting, and the other jobs run."""
    from offload import Offload, Worker

    monkeypatch.delenv("OFFLOAD_STATE_URL", raising=False)
    app = Offload(alone_url)
    ran: list[str] = []

    @app.task(name="limited", rate_limit="5/s")
    async def limited() -> None:
        ran.append("limited")

    @app.task(name="plain")
    async def plain() -> None:
        ran.append("plain")

    worker = Worker(app, lease_s=5, poll_s=0.1)
    running = asyncio.create_task(worker.run())
    try:
        await limited.enqueue_async()
        await plain.enqueue_async()
        broker = await app.connected_broker()
        deadline = time.monotonic() + 30
        while True:
            dead = (await broker.counts(["default"]))["default"].states.get(JobState.DEAD, 0)
            if (dead, ran) == (1, ["plain"]):
                break
            assert time.monotonic() < deadline, (dead, ran)
            await asyncio.sleep(0.2)
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)
        await app.aclose()


async def test_a_retry_linked_to_its_first_attempt_is_no_broker_error_without_a_store(
    alone_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With a hook that links attempts (`Tracing`, `offload worker --tracing`), every
    retried attempt read the job's attempt history, which RabbitMQ or SQS alone does
    not keep: an ERROR with a traceback per retry, counted as a broker error (the
    `offload_broker_errors_total` metric). There is simply nothing to link to."""
    from offload import Backoff, Offload, Worker
    from offload.hooks import Hook

    class Linker(Hook):
        links_attempts = True

    errors: list[str] = []

    class BrokerErrors(Hook):
        def on_broker_error(self, what: str, error: BaseException) -> None:
            errors.append(what)

    monkeypatch.delenv("OFFLOAD_STATE_URL", raising=False)
    app = Offload(alone_url)
    app.add_hook(Linker())
    app.add_hook(BrokerErrors())

    @app.task(name="flaky", max_attempts=3, backoff=Backoff(base_s=0.1, cap_s=0.1))
    async def flaky() -> None:
        raise RuntimeError("again")

    caplog.set_level(logging.ERROR, logger="offload.worker")
    worker = Worker(app, lease_s=5, poll_s=0.1)
    running = asyncio.create_task(worker.run())
    try:
        await flaky.enqueue_async()
        broker = await app.connected_broker()
        deadline = time.monotonic() + 30
        while (await broker.counts(["default"]))["default"].states.get(JobState.DEAD, 0) < 1:
            assert time.monotonic() < deadline, "the job never died"
            await asyncio.sleep(0.2)
        assert errors == []
        assert "reading a job's attempts" not in caplog.text
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)
        await app.aclose()
