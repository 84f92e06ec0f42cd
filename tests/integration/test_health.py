"""`offload worker --health-port`: /live and /ready of a real worker process whose own
Redis server is killed (alive but not consuming: ready goes false) and started again
(ready comes back); alone and as a supervisor of two processes. And `offload status`
shows each worker's last reservation and running jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture
def own_redis(tmp_path: Path, redis_server: str) -> Iterator[RedisProcess]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisProcess(directory).start()
    try:
        yield server
    finally:
        server.stop()


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
        assert probe(port, "/nothing")[0] == 503
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()


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
