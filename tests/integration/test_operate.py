"""Pause/resume and attempt history with real workers on every broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from offload import Backoff, JobState, Offload, Worker
from offload.attempts import AttemptOutcome
from tests.conftest import BROKER_NAMES


@pytest.fixture(params=BROKER_NAMES)
def url(request: pytest.FixtureRequest, broker_url: Callable[[str], str]) -> str:
    return broker_url(request.param)


async def test_a_paused_queue_holds_its_jobs_fleet_wide_within_a_second_and_across_restarts(
    url: str,
) -> None:
    app = Offload(url)
    started: list[float] = []

    @app.task(name="tick", queue="ops")
    async def tick() -> None:
        started.append(time.monotonic())

    async def feed(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await tick.enqueue_async()
            await asyncio.sleep(0.02)

    workers = [Worker(app, poll_s=0.05, concurrency=4) for _ in range(2)]
    runners = [asyncio.create_task(w.run()) for w in workers]
    stop = asyncio.Event()
    feeder = asyncio.create_task(feed(stop))
    try:
        while len(started) < 5:
            await asyncio.sleep(0.02)
        assert await app.pause_async("ops")
        paused_at = time.monotonic()
        await asyncio.sleep(2.0)  # enqueues go on, and are accepted
        late = [t - paused_at for t in started if t > paused_at]
        assert not late or max(late) < 1.0, f"jobs started {late} s after the pause"
        held = (await app.paused_async()).queues
        assert "ops" in held
        stats = (await (await app.connected_broker()).counts(["ops"]))["ops"]
        assert stats.states.get(JobState.QUEUED, 0) >= 20  # held, not refused
        # A worker started now (a restart) sees the pause too.
        for w in workers:
            w.stop()
        await asyncio.gather(*runners)
        fresh = Worker(app, poll_s=0.05, concurrency=4)
        runners = [asyncio.create_task(fresh.run())]
        before = len(started)
        await asyncio.sleep(1.0)
        assert len(started) == before
        assert await app.resume_async("ops")
        resumed_at = time.monotonic()
        while len(started) == before:
            assert time.monotonic() - resumed_at < 3.0, "no job started after the resume"
            await asyncio.sleep(0.02)
        print(
            f"pause->last start: {max(late, default=0):.3f}s; "
            f"resume->first start: {started[before] - resumed_at:.3f}s"
        )
        workers = [fresh]
    finally:
        stop.set()
        await feeder
        for w in workers:
            w.stop()
        await asyncio.gather(*runners, return_exceptions=True)
        await app.aclose()


async def test_every_attempt_of_a_job_is_in_its_info(url: str) -> None:
    app = Offload(url)
    calls = {"n": 0}

    @app.task(name="flaky", max_attempts=5, backoff=Backoff(base_s=0.01, jitter=False))
    async def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError(f"provider down (call {calls['n']})")
        return "done"

    worker = Worker(app, poll_s=0.05)
    runner = asyncio.create_task(worker.run())
    try:
        job = await flaky.enqueue_async()
        assert await job.result_async(timeout=20) == "done"
        info = await job.info_async()
        assert [(a.number, a.outcome) for a in info.attempts] == [
            (1, AttemptOutcome.RETRIED),
            (2, AttemptOutcome.RETRIED),
            (3, AttemptOutcome.SUCCEEDED),
        ]
        first = info.attempts[0]
        assert first.error is not None
        assert first.error.type_path == "builtins.ConnectionError"
        assert first.error.message == "provider down (call 1)"
        assert "Traceback" in first.error.traceback
        assert first.worker_id == worker.id
        assert first.started_at is not None and first.finished_at is not None
        assert info.attempts[1].error is not None
        assert info.attempts[1].error.message == "provider down (call 2)"
    finally:
        worker.stop()
        await runner
        await app.aclose()


def test_offload_show_prints_the_attempts(tmp_path: object) -> None:
    db = f"sqlite:///{tmp_path}/o.db"
    app = Offload(db)

    @app.task(name="nope", max_attempts=2, backoff=Backoff(base_s=0.01, jitter=False))
    def nope() -> None:
        raise ValueError("bad input")

    job = nope.enqueue()

    async def run() -> None:
        await Worker(app).drain()
        await asyncio.sleep(0.05)
        await Worker(app).drain()

    asyncio.run(run())
    app.close()
    cmd = [sys.executable, "-m", "offload", "show", "--url", db, job.id]
    shown = json.loads(subprocess.run([*cmd, "--json"], capture_output=True, check=True).stdout)
    assert [a["outcome"] for a in shown["attempts"]] == ["retried", "dead"]
    assert shown["attempts"][1]["error"]["type_path"] == "builtins.ValueError"
    table = subprocess.run(cmd, capture_output=True, check=True, text=True).stdout
    assert "attempts" in table and "builtins.ValueError: bad input" in table


def test_the_cli_pauses_and_resumes_queues_and_schedules(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    (tmp_path / "schedapp.py").write_text(
        "from offload import Every, Offload\n"
        "app = Offload()\n"
        "@app.task(name='t')\n"
        "def t() -> None: ...\n"
        "app.schedule(t, Every(60), id='nightly')\n"
    )
    env = {**os.environ, "OFFLOAD_URL": url, "PYTHONPATH": str(tmp_path)}

    errors: list[str] = []

    def offload(*args: str) -> str:
        cmd = [sys.executable, "-m", "offload", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        assert done.returncode == 0, done.stderr
        errors.append(done.stderr)
        return done.stdout

    offload("enqueue", "t")  # creates the database
    assert offload("pause", "emails", "reports") == "emails: paused\nreports: paused\n"
    # neither queue has had a job (a typo pauses nothing that runs): said on stderr
    assert errors[-1].splitlines() == [
        f"note: no job has used queue {q!r} yet (queues seen: default)"
        for q in ("emails", "reports")
    ]
    assert offload("pause", "default") == "default: paused\n" and errors[-1] == ""
    assert offload("resume", "default") == "default: resumed\n"
    assert offload("pause", "emails") == "emails: was paused already\n"
    assert offload("schedules", "pause", "nightly") == "nightly: paused\n"
    status = json.loads(offload("status", "--json"))
    assert sorted(status["paused_queues"]) == ["emails", "reports"]
    assert list(status["paused_schedules"]) == ["nightly"]
    assert "paused queues: emails (since" in offload("status")
    assert offload("resume", "emails") == "emails: resumed\n"
    assert offload("schedules", "resume", "nightly") == "nightly: resumed\n"
    assert offload("schedules", "resume", "nightly") == "nightly: was not paused\n"
    status = json.loads(offload("status", "--json"))
    assert list(status["paused_queues"]) == ["reports"]
    assert status["paused_schedules"] == {}
    assert "nightly" in offload("schedules", "schedapp:app")  # listing works as before
    env["OFFLOAD_APP"] = "schedapp:app"
    assert "nightly" in offload("schedules")  # MODULE:APP from the environment


def test_offload_schedules_lists_a_paused_schedule_as_firing_nothing(tmp_path: Path) -> None:
    """`offload schedules` listed the next fire times of a paused schedule as if it
    would fire then; it now says it is paused (and `--json` gives `paused_at`)."""
    (tmp_path / "schedapp.py").write_text(
        "from offload import Every, Offload\n"
        "app = Offload()\n"
        "@app.task(name='t')\n"
        "def t() -> None: ...\n"
        "app.schedule(t, Every(60), id='nightly')\n"
        "app.schedule(t, Every(3600), id='hourly')\n"
    )
    env = {**os.environ, "OFFLOAD_URL": f"sqlite:///{tmp_path}/o.db", "PYTHONPATH": str(tmp_path)}

    def offload(*args: str) -> str:
        cmd = [sys.executable, "-m", "offload", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        return done.stdout

    # No database yet: nothing is paused, and listing creates none.
    assert "none: paused" not in offload("schedules", "schedapp:app")
    assert not (tmp_path / "o.db").exists()
    offload("enqueue", "t")  # creates the database
    assert offload("schedules", "pause", "nightly") == "nightly: paused\n"
    rows = {
        r["id"]: r
        for r in map(json.loads, offload("schedules", "schedapp:app", "--json").splitlines())
    }
    assert rows["nightly"]["paused_at"] is not None and rows["hourly"]["paused_at"] is None
    table = offload("schedules", "schedapp:app").splitlines()
    assert "none: paused since" in next(line for line in table if "nightly" in line)
    assert "none: paused" not in next(line for line in table if "hourly" in line)
    offload("schedules", "resume", "nightly")
    assert "none: paused" not in offload("schedules", "schedapp:app")


def test_pausing_a_schedule_the_app_does_not_declare_is_noted(tmp_path: Path) -> None:
    """`offload schedules pause nightly-reprot --app M:A` answered 'paused' and nothing
    else: the typo paused nothing that fires. With --app the ids are known, so each one
    the app does not declare is noted on stderr (and paused all the same, as a queue)."""
    (tmp_path / "schedapp.py").write_text(
        "from offload import Every, Offload\n"
        "app = Offload()\n"
        "@app.task(name='t')\n"
        "def t() -> None: ...\n"
        "app.schedule(t, Every(60), id='nightly-report')\n"
    )
    env = {**os.environ, "OFFLOAD_URL": f"sqlite:///{tmp_path}/o.db", "PYTHONPATH": str(tmp_path)}

    def offload(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "offload", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        assert done.returncode == 0, done.stderr
        return done

    offload("enqueue", "t")  # creates the database
    done = offload(
        "schedules", "pause", "nightly-reprot", "nightly-report", "--app", "schedapp:app"
    )
    assert done.stdout == "nightly-reprot: paused\nnightly-report: paused\n"
    assert done.stderr.splitlines() == [
        "note: 'nightly-reprot' is not a schedule of schedapp:app (its schedules: nightly-report)"
    ]
    # Without --app the schedules are not known: no note.
    assert offload("schedules", "resume", "nightly-reprot").stderr == ""
