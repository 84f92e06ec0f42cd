"""A worker whose RabbitMQ connection is cut while it runs a job: RabbitMQ requeues the
job at once and delivers it again, often to this same worker, which is still running
it. The worker must not start it a second time (README: a job is never handed back
while this process may still be running it); its run ends the job once, through the
new delivery."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from offload import JobState, Offload, Worker
from tests.integration.test_amqp_delivery import close_connections

pytestmark = pytest.mark.timeout(60)


def _messages(prefix: str) -> int:
    """Messages (ready and unacknowledged) in this test's queues."""
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "messages"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sum(int(line.split("\t")[1]) for line in listing.splitlines() if line.startswith(prefix))


@pytest.mark.parametrize("style", ["async", "def"])
@pytest.mark.parametrize("store", [False, True], ids=["alone", "sqlite-store"])
async def test_a_job_running_when_its_connection_is_cut_does_not_start_again_here(
    amqp_url: str, tmp_path: Path, style: str, store: bool, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = amqp_url.partition("prefix=")[2]
    url = f"{amqp_url}&state=sqlite:///{tmp_path / 'state.db'}" if store else amqp_url
    app = Offload(url)
    starts: Counter[str] = Counter()
    ends: Counter[str] = Counter()
    go_on = threading.Event()

    if style == "async":

        @app.task(name="slow")
        async def slow(tag: str) -> None:
            starts[tag] += 1
            while not go_on.is_set():
                await asyncio.sleep(0.02)
            ends[tag] += 1

    else:

        @app.task(name="slow")
        def slow(tag: str) -> None:
            starts[tag] += 1
            go_on.wait(20)
            ends[tag] += 1

    caplog.set_level(logging.INFO, logger="offload")
    worker = Worker(app, concurrency=4, poll_s=0.1)
    running = asyncio.create_task(worker.run())
    try:
        await slow.enqueue_async("a")
        deadline = time.monotonic() + 15
        while not starts:
            assert time.monotonic() < deadline, "the job never started"
            await asyncio.sleep(0.02)
        assert await asyncio.to_thread(close_connections, prefix) >= 1
        await asyncio.sleep(2.0)  # reconnected; the requeued job delivered again
        assert starts == {"a": 1}, "the job started again while its first run went on"
        go_on.set()
        deadline = time.monotonic() + 15
        while not ends or await asyncio.to_thread(_messages, prefix) > 0:
            assert time.monotonic() < deadline, f"ends {ends}, messages left"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        assert starts == {"a": 1} and ends == {"a": 1}
        assert "lease lost" not in caplog.text and "run twice" not in caplog.text
        if store:
            [job] = (await app.broker.list_jobs(queue="default")).items
            assert job.state is JobState.SUCCEEDED and job.attempt == 1, job
    finally:
        go_on.set()
        worker.stop()
        await asyncio.wait_for(running, 20)
        await app.aclose()
