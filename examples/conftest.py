"""Helpers for the examples' end-to-end tests: real server and worker processes.

Each example's own conftest.py points the `offload_app` fixture (offload's pytest
plugin) at its app, for the in-process tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

EXAMPLES = Path(__file__).resolve().parent

#: How long a server may take to answer its first request (a loaded CI machine).
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a process in examples/ with OFFLOAD_URL on a SQLite file of this test;
    every one is terminated (then killed) at teardown. Output goes to tmp_path."""
    started: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "OFFLOAD_URL": f"sqlite:///{tmp_path / 'offload.db'}"}
    env.pop("OFFLOAD_APP", None)

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        with (tmp_path / f"{name}.log").open("wb") as log:  # the child keeps its copy
            proc = subprocess.Popen(
                [sys.executable, *args], cwd=EXAMPLES, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.terminate()
    for proc in started:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until_serving(base_url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Return once the server answers any HTTP request; fail if it exits first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            httpx.get(base_url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"the server did not answer within {START_TIMEOUT_S} s:\n{log.read_text()}")


def poll_until_ended(client: httpx.Client, location: str) -> dict[str, Any]:
    """GET the job with `?wait=` until it has ended (a job that is retried passes
    through `scheduled` on the way)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = client.get(location, params={"wait": 5})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["state"] in ("succeeded", "dead", "expired", "cancelled"):
            return body
    pytest.fail(f"{location} did not end within 60 s")
