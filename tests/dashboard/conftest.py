"""Fixtures for the dashboard tests: a real `offload dashboard` process, real
`offload worker` processes, and a real headless Chromium driven by Playwright.

The browser is Debian's `chromium` (never `playwright install`). When it is missing
the browser tests are skipped locally and fail under CI=true, like a missing broker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from offload import Offload
from offload.demo.smtp import free_port
from offload.task import Task
from tests.conftest import service_missing
from tests.dashboard.dash_app import register

CHROMIUM = os.environ.get("OFFLOAD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
USER, PASSWORD = "admin", "dash-test-password"
ROOT = Path(__file__).resolve().parents[2]
APP_SPEC = "tests.dashboard.dash_app:app"
STARTUP_S = 60.0


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module. Not per session: Playwright's sync API
    keeps an event loop running in this thread while it is open, and the async tests
    of the modules after it could not start theirs."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        service_missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        service_missing(f"playwright is not installed: {exc}")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Processes:
    """Processes a test started, each stopped (SIGTERM, then SIGKILL) at its end."""

    def __init__(self, url: str, logs: Path) -> None:
        self.url = url
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []
        self.files: list[IO[bytes]] = []

    def spawn(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        self.files.append(log)
        env = {**os.environ, "OFFLOAD_URL": self.url}
        proc = subprocess.Popen(
            [sys.executable, "-m", "offload", *argv],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.started.append(proc)
        return proc

    def dashboard(self, *options: str) -> str:
        """Start `offload dashboard` and return its base URL once it answers."""
        port = free_port()
        self.spawn("dashboard", "dashboard", "--app", APP_SPEC, "--port", str(port), *options)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{base}/static/style.css", timeout=2)
                return base
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"the dashboard did not start: {self.log('dashboard')}")

    def worker(self, *queues: str) -> None:
        self.spawn("worker", "worker", APP_SPEC, "--queues", ",".join(queues), "--poll", "0.1")

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.started:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.files:
            log.close()


@dataclass
class Served:
    """Processes on one broker, and the test's own app on it with `dash_app`'s tasks."""

    procs: Processes
    app: Offload
    tasks: dict[str, Task[Any, Any]]


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def served(
    request: pytest.FixtureRequest, broker_url: Callable[[str], str], tmp_path: Path
) -> Iterator[Served]:
    """Each broker kind in turn; every process started is stopped at the end."""
    url = broker_url(request.param)
    app = Offload(url)
    procs = Processes(url, tmp_path)
    try:
        yield Served(procs, app, register(app))
    finally:
        procs.stop()
        app.close()


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
