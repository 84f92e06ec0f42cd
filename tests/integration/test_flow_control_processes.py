"""Flow limits across 4 real `offload worker` processes sharing one SQLite file: a
rate limit of 20/s holds within 5% fleet-wide, and a concurrency limit of 2 is never
passed. Start times are recorded by the handlers, in each process's own log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload import JobState, Offload

APP_SOURCE = textwrap.dedent(
    """
    import os, pathlib, time
    from offload import Offload

    app = Offload()
    LOG = pathlib.Path(os.environ["JOBS_OUT"]) / f"{os.getpid()}.log"

    def note(line: str) -> None:
        with LOG.open("a") as f:  # one short append per line: never interleaved
            f.write(line + "\\n")

    @app.task(name="paced", rate_limit="20/s")
    def paced(n: int) -> None:
        note(f"paced {n} {time.time():.6f}")

    @app.task(name="slotted", concurrency_limit=2)
    def slotted(n: int) -> None:
        note(f"start {n} {time.time():.6f}")
        time.sleep(0.1)
        note(f"end {n} {time.time():.6f}")
    """
)

RATE = 20.0
#: Jobs of the burst (a GCRA bucket of 20 is full when the key is idle): left out of
#: the steady-rate window.
BURST = 20
#: About 5 s of steady rate after the burst.
PACED_JOBS = BURST + 100
SLOTTED_JOBS = 24
WORKERS = 4


def _records(out: Path) -> list[tuple[str, int, float]]:
    rows = []
    for log in out.glob("*.log"):
        for line in log.read_text().splitlines():
            kind, n, t = line.split()
            rows.append((kind, int(n), float(t)))
    return rows


def _max_overlap(rows: list[tuple[str, int, float]]) -> int:
    events = sorted((t, 1 if kind == "start" else -1) for kind, _, t in rows if kind != "paced")
    # at equal times an end (-1) sorts first: touching intervals do not overlap
    peak = running = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Offload, Path]]:
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "flowapp.py").write_text(APP_SOURCE)
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    env = {**os.environ, "OFFLOAD_URL": url, "JOBS_OUT": str(out), "PYTHONPATH": str(tmp_path)}
    app = Offload(url)
    command = [sys.executable, "-m", "offload", "worker", "flowapp:app", "--poll", "0.05"]
    procs = [
        subprocess.Popen([*command, "--concurrency", "4"], env=env, cwd=tmp_path)
        for _ in range(WORKERS)
    ]
    try:
        deadline = time.monotonic() + 30
        while len(app.portal.run(app.broker.workers())) < WORKERS:
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.05)
        yield app, out
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
        app.close()


def test_rate_and_concurrency_limits_hold_across_four_worker_processes(
    fleet: tuple[Offload, Path],
) -> None:
    app, out = fleet
    # Given a backlog of both tasks, enqueued at once for 4 busy workers.
    app.options("paced").enqueue_many([(n,) for n in range(PACED_JOBS)])
    app.options("slotted").enqueue_many([(n,) for n in range(SLOTTED_JOBS)])

    deadline = time.monotonic() + 30
    while True:
        states = app.portal.run(app.broker.counts(["default"]))["default"].states
        if states[JobState.SUCCEEDED] == PACED_JOBS + SLOTTED_JOBS:
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.1)

    rows = _records(out)
    starts = sorted(t for kind, _, t in rows if kind == "paced")
    assert len(starts) == PACED_JOBS  # each ran once
    steady = starts[BURST:]
    rate = (len(steady) - 1) / (steady[-1] - steady[0])
    print(f"\nsteady rate {rate:.2f}/s over {steady[-1] - steady[0]:.2f} s (limit {RATE}/s)")
    assert rate == pytest.approx(RATE, rel=0.05)
    # No window of one second holds more than the limit's burst plus its refill.
    for i, t in enumerate(starts):
        in_window = sum(1 for u in starts[i:] if u < t + 1.0)
        assert in_window <= BURST + RATE

    peak = _max_overlap(rows)
    print(f"slotted: at most {peak} running at once (limit 2)")
    assert peak == 2
    assert sum(1 for kind, _, _ in rows if kind == "start") == SLOTTED_JOBS
