"""A producer process SIGKILLed inside `enqueue_many` of a large batch: afterwards
either the whole batch is stored or none of it, per call, on every broker. The kill
times are spread over the call's measured duration (one uncut call first).

`CHAOS_BATCH` (default 5000 jobs per call) and `CHAOS_PRODUCER_KILLS` (default 6)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chaos._harness import BROKERS, Fleet, env_int
from tests.chaos._report import record

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

PRODUCER = textwrap.dedent(
    """
    import sys
    from offload import Offload

    url, queue, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    app = Offload(url)
    calls = [(i,) for i in range(size)]
    print("go", flush=True)
    app.options("ok", queue=queue).enqueue_many(calls)
    print("done", flush=True)
    app.close()
    """
)


def _produce(fleet: Fleet, queue: str, size: int, kill_after: float | None) -> tuple[bool, float]:
    """Run one producer; SIGKILL it `kill_after` seconds after it enters
    `enqueue_many` unless it returned by then. (killed inside the call, seconds from
    entering the call to its end or to the kill)."""
    script = fleet.dir / "producer.py"
    script.write_text(PRODUCER)
    argv = [sys.executable, str(script), fleet.url, queue, str(size)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=fleet.dir)
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "go"
        entered = time.monotonic()
        if kill_after is None:
            line = proc.stdout.readline().strip()
            assert line == "done", line
            return False, time.monotonic() - entered
        time.sleep(kill_after)
        proc.kill()
        proc.wait()
        rest = proc.stdout.read()  # a "done" printed before the kill landed
        return "done" not in rest, time.monotonic() - entered
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


@pytest.mark.parametrize("name", BROKERS)
def test_a_producer_killed_inside_enqueue_many_stores_all_of_the_batch_or_none(
    name: str, tmp_path: Path, broker_url: Callable[[str], str]
) -> None:
    size, kills = env_int("BATCH", 5000), env_int("PRODUCER_KILLS", 6)
    fleet = Fleet(tmp_path, broker_url(name))
    try:
        _, duration = _produce(fleet, "whole", size, kill_after=None)
        stored = {"whole": sum(fleet.states("whole").values())}
        inside = 0
        for k in range(kills):
            queue = f"cut{k}"
            killed_inside, _ = _produce(fleet, queue, size, (k + 0.5) / kills * duration)
            inside += killed_inside
            stored[queue] = sum(fleet.states(queue).values())
        partial = {q: n for q, n in stored.items() if n not in (0, size)}
        record(
            name,
            "5 producer killed in enqueue_many",
            jobs=size * (kills + 1),
            faults=inside,
            lost=sum(size - n for n in partial.values()),
            overlapping=0,
            stuck=0,
            note=f"{len(partial)} partial batches; stored per call {sorted(stored.values())}",
        )
        assert stored["whole"] == size
        assert not partial, f"a killed call stored part of its batch: {partial}"
        assert inside, "every call returned before its kill; the test proved nothing"
    finally:
        fleet.close()
