"""SIGTERM with a short `--grace` while long jobs run, with a second worker ready to
take them: a job handed back must no longer be running in the stopping process, so
two runs of one job are never alive at once (issue 10, point 4). The same when a second
signal ends the grace period at once: the worker exits then, not when the sleeping
handler returns.

Fails until the `shutdown` fix of point 4 lands (the sync handler keeps running after
its job is handed back); kept failing on purpose, it is the spec of that fix."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chaos._harness import BROKERS, Fleet, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

LONG_S = 8.0  # each long job; far beyond the grace, far below the deadlines below


def _exited(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


@pytest.mark.parametrize("stop", ["short grace", "second signal"])
@pytest.mark.parametrize("name", BROKERS)
def test_a_stopping_worker_never_runs_a_job_it_handed_back(
    name: str, stop: str, tmp_path: Path, broker_url: Callable[[str], str]
) -> None:
    fleet = Fleet(tmp_path, broker_url(name))
    try:
        grace = "1" if stop == "short grace" else "60"
        first = fleet.start_worker("--lease", "2", "-c", "2", "--grace", grace)
        ids = [fleet.app.enqueue("work", LONG_S).id, fleet.app.enqueue("awork", LONG_S).id]
        wait_for(lambda: set(fleet.runs()) == set(ids), timeout=60)
        rival = fleet.start_worker("--lease", "2", "-c", "2")
        wait_for(lambda: fleet.workers() == 2, timeout=60)
        first.send_signal(signal.SIGTERM)
        signals = 1
        if stop == "second signal":
            wait_for(lambda: "stopping" in fleet.worker_logs(), timeout=30)
            first.send_signal(signal.SIGTERM)
            signals += 1
        # A worker that waits for its handlers exits after LONG_S; one that keeps its
        # word exits at once. Either way it exits within this generous bound.
        exited = _exited(first, timeout=LONG_S * 4)
        fleet.wait_settled(ids, timeout=90)
        tally = fleet.tally(ids)
        finished_in_stopped = [
            r.job_id
            for runs in fleet.runs().values()
            for r in runs
            if r.pid == first.pid and r.ended
        ]
        tally.record(
            name,
            f"2 SIGTERM, {stop}",
            jobs=len(ids),
            faults=signals,
            note="waits for point 4 (shutdown)" if tally.overlapping or finished_in_stopped else "",
        )
        assert exited, "the stopped worker did not exit"
        assert not tally.overlapping, f"a job ran twice at once: {tally.summary()}"
        assert not (tally.lost or tally.stuck), tally.summary()
        if stop == "second signal":
            assert not finished_in_stopped, (
                "the worker exited only after its handlers returned, not at the second signal"
            )
        assert rival.poll() is None
    finally:
        fleet.close()
