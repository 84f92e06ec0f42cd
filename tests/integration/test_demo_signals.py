"""`offload demo` leaves no process behind: SIGTERM stops every part it started, and
when the demo is killed outright its children notice and stop (issue 10.12).

The demo runs as a user starts it; its processes are found in /proc."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from offload import Offload

pytest.importorskip("uvicorn")

#: Generous: the machine may be loaded.
DEADLINE_S = 90.0


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0]


def descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = stat[0]
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] != "Z"  # a zombie has ended; nobody reaped it yet


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def workers_registered(tmp_path: Path) -> int:
    databases = list(tmp_path.glob("offload-demo-*/offload.db"))
    if not databases:
        return 0

    async def count() -> int:
        app = Offload(f"sqlite:///{databases[0]}")
        try:
            return len(await (await app.connected_broker()).workers())
        finally:
            await app.aclose()

    return asyncio.run(count())


@pytest.fixture
def running_demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], set[int]]]:
    """A demo with a long load, once its web server and both workers run: the demo
    process and every process it started. Whatever survives the test is killed."""
    log = (tmp_path / "demo.log").open("wb")
    demo = subprocess.Popen(
        [sys.executable, "-m", "offload", "demo", "--signups", "100000", "--rate", "2",
         "--workers", "2", "--concurrency", "2", "--timeout", "600"],
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    children: set[int] = set()
    try:
        wait_for(lambda: workers_registered(tmp_path) == 2, "the demo's workers")
        children = descendants(demo.pid)
        assert len(children) >= 3  # uvicorn and two workers
        yield demo, children
    finally:
        for pid in [demo.pid, *children]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        demo.wait()
        log.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_demo_alone_stops_every_process_it_started(
    running_demo: tuple[subprocess.Popen[bytes], set[int]], tmp_path: Path, sig: signal.Signals
) -> None:
    demo, children = running_demo
    demo.send_signal(sig)  # to the demo only, as `kill` or a process manager does
    wait_for(lambda: demo.poll() is not None, "the demo to exit")
    wait_for(lambda: not any(alive(pid) for pid in children), "the demo's children to stop")
    if sig is signal.SIGTERM:
        assert "stopped by SIGTERM" in (tmp_path / "demo.log").read_text()


def test_a_killed_demo_children_notice_and_stop(
    running_demo: tuple[subprocess.Popen[bytes], set[int]],
) -> None:
    demo, children = running_demo
    demo.kill()
    demo.wait()
    wait_for(lambda: not any(alive(pid) for pid in children), "the orphans to stop")
