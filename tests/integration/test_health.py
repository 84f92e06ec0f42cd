"""`offload worker --health-port`: /live and /ready of a real worker process whose own
Redis server is killed (alive but not consuming: ready goes false) and started again
(ready comes back); alone and as a supervisor of two processes. And `offload status`
shows each worker's last reservation and running jobs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from offload import Offload, Worker
from offload.brokers.base import Lease
from offload.brokers.memory import MemoryBroker
from offload.worker import probes
from tests.conftest import BROKER_NAMES
from tests.redis_cluster import RedisProcess, free_port

APP = textwrap.dedent(
    """
    import time
    from offload import Offload

    app = Offload()

    @app.task(name="nap")
    def nap(seconds: float) -> None:
        time.sleep(seconds)
    """
)


def probe(port: int, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}


def wait_for(port: int, path: str, status: int, within: float) -> float:
    """Seconds until `path` answers `status`; fails after `within`."""
    start = time.monotonic()
    seen: tuple[int, dict[str, object]] = (0, {})
    while time.monotonic() - start < within:
        seen = probe(port, path)
        if seen[0] == status:
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"{path} never answered {status} in {within} s; last {seen}")


def start_worker(tmp_path: Path, url: str, *args: str) -> subprocess.Popen[bytes]:
    (tmp_path / "napapp.py").write_text(APP)
    env = {**os.environ, "OFFLOAD_URL": url, "PYTHONPATH": str(tmp_path)}
    cmd = [sys.executable, "-m", "offload", "worker", "napapp:app", "--poll", "0.2", *args]
    with (tmp_path / "worker.log").open("wb") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.parametrize("processes", [1, 2])
def test_ready_goes_false_while_the_broker_is_gone_and_true_once_it_is_back(
    tmp_path: Path, own_redis: RedisProcess, processes: int
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    args = ["--health-port", str(port), "--ready-within", "3", "-p", str(processes)]
    worker = start_worker(tmp_path, url, *args)
    try:
        wait_for(port, "/ready", 200, within=60)
        _, body = probe(port, "/ready")
        if processes > 1:
            assert len(body["processes"]) == processes  # type: ignore[arg-type]
        own_redis.stop()
        took = wait_for(port, "/ready", 503, within=30)
        assert probe(port, "/live")[0] == 200  # alive: only not consuming
        print(f"processes={processes}: ready false {took:.1f} s after the kill")
        own_redis.start()
        took = wait_for(port, "/ready", 200, within=60)
        print(f"processes={processes}: ready again {took:.1f} s after the restart")
        assert probe(port, "/nothing")[0] == 404  # not a probe: not "not ready"
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()


@pytest.mark.parametrize("name", BROKER_NAMES)
def test_a_worker_is_live_and_ready_on_every_broker(
    tmp_path: Path, broker_url: Callable[[str], str], name: str
) -> None:
    port = free_port()
    worker = start_worker(tmp_path, broker_url(name), "--health-port", str(port))
    try:
        wait_for(port, "/ready", 200, within=60)
        status, body = probe(port, "/live")
        assert status == 200 and body["ok"] is True
        _, body = probe(port, "/ready")
        assert body["broker_down"] is False
        assert isinstance(body["fetch_age_s"], float) and body["fetch_age_s"] < 60
        # a typo in a probe's path is a 404, not a worker that is not ready (503)
        status, body = probe(port, "/healthz")
        assert status == 404 and "use /live or /ready" in str(body["reason"])
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()


def test_a_worker_asked_to_stop_is_not_ready_while_it_finishes_its_jobs(
    tmp_path: Path, broker_url: Callable[[str], str]
) -> None:
    """After SIGTERM a worker takes no more jobs, yet /ready said 200 until
    `--ready-within` (60 s) passed, and then blamed a hung fetch loop."""
    port = free_port()
    url = broker_url("sqlite")
    worker = start_worker(tmp_path, url, "--health-port", str(port), "--grace", "120")
    app = Offload(url)
    try:
        app.enqueue("nap", 120)
        deadline = time.monotonic() + 60
        while (seen := probe(port, "/ready"))[1].get("running") != 1:
            assert time.monotonic() < deadline, seen
            time.sleep(0.2)
        assert seen[0] == 200
        worker.send_signal(signal.SIGTERM)
        wait_for(port, "/ready", 503, within=20)
        status, body = probe(port, "/ready")
        assert status == 503 and str(body["reason"]).startswith("stopping"), body
        assert probe(port, "/live")[0] == 200  # alive: finishing its job
    finally:
        app.close()
        worker.terminate()  # a second signal: stop now, the job is given back
        worker.wait(timeout=60)


def test_status_shows_each_workers_last_reservation_and_running_jobs(
    tmp_path: Path, own_redis: RedisProcess
) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    worker = start_worker(tmp_path, url, "--lease", "3")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    try:
        enqueue = [
            sys.executable,
            "-m",
            "offload",
            "enqueue",
            "--url",
            url,
            "nap",
            "--args",
            "[30]",
        ]
        job_id = subprocess.run(enqueue, capture_output=True, text=True, env=env, check=True)
        status_cmd = [sys.executable, "-m", "offload", "status", "--url", url, "--json"]
        deadline = time.monotonic() + 60
        while True:
            out = subprocess.run(status_cmd, capture_output=True, text=True, check=True).stdout
            workers = json.loads(out)["workers"]
            if workers and workers[0]["running_jobs"]:
                break
            assert time.monotonic() < deadline, out
            time.sleep(0.3)
        assert workers[0]["running_jobs"][0] in job_id.stdout
        assert time.time() - workers[0]["last_reserve_at"] < 30
        table = subprocess.run(status_cmd[:-1], capture_output=True, text=True, check=True)
        assert "last reserve" in table.stdout
    finally:
        worker.kill()
        worker.wait(timeout=30)


class StuckReserve(MemoryBroker):
    """A broker that answers everything but `reserve`, which hangs while `stuck` is
    set: a fetch loop that makes no progress while the broker looks fine."""

    def __init__(self) -> None:
        super().__init__()
        self.stuck = asyncio.Event()
        self.free = asyncio.Event()

    async def reserve(
        self, queues: Sequence[str], *, worker_id: str, lease_s: float, limit: int
    ) -> list[Lease]:
        if self.stuck.is_set():
            await self.free.wait()
        return await super().reserve(queues, worker_id=worker_id, lease_s=lease_s, limit=limit)


async def get(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    writer.close()
    await writer.wait_closed()
    return status


async def test_ready_fails_when_the_fetch_loop_hangs_with_the_broker_up() -> None:
    app = Offload("memory://")
    broker = StuckReserve()
    app.broker = broker
    worker = Worker(app, poll_s=0.05)
    runner = asyncio.create_task(worker.run())
    server = await probes.serve(worker, "127.0.0.1", 0, ready_s=1.0)
    port = server.sockets[0].getsockname()[1]
    try:
        await asyncio.sleep(0.3)
        assert await get(port, "/ready") == 200
        broker.stuck.set()
        await asyncio.sleep(1.8)
        assert await get(port, "/ready") == 503
        assert await get(port, "/live") == 200
        broker.stuck.clear()
        broker.free.set()
        await asyncio.sleep(0.3)
        assert await get(port, "/ready") == 200
    finally:
        server.close()
        await server.wait_closed()
        worker.stop()
        await runner
        await app.aclose()
