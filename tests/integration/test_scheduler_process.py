"""`offload scheduler` in real time: three replicas on one SQLite file, one-second ticks,
no tick enqueued twice and none missed; `offload schedules`; `worker --scheduler`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from offload import JobState, Offload

APP = textwrap.dedent(
    """
    from offload import Cron, Every, Offload

    app = Offload()

    @app.task(name="tick")
    def tick() -> None:
        pass

    app.schedule(tick, Every(1), overlap="allow")
    app.schedule(tick, Cron("30 2 * * *", tz="Europe/Paris"), id="nightly")
    """
)


def _env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "schedapp.py").write_text(APP)
    return {
        **os.environ,
        "OFFLOAD_URL": f"sqlite:///{tmp_path / 'broker.db'}",
        "OFFLOAD_LOG_FORMAT": "json",
        "PYTHONPATH": str(tmp_path),
    }


def _fires(tmp_path: Path, schedule_id: str) -> list[tuple[int, JobState]]:
    app = Offload(f"sqlite:///{tmp_path / 'broker.db'}")
    try:
        jobs = app.portal.run(app.broker.list_jobs(limit=1000)).items
    finally:
        app.close()
    out = []
    for job in jobs:
        assert job.key is not None
        _, sid, ts = job.key.split(":")
        if sid == schedule_id:
            out.append((int(ts), job.state))
    return sorted(out)


def test_three_scheduler_processes_fire_each_second_once(tmp_path: Path) -> None:
    env = _env(tmp_path)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "offload", "scheduler", "schedapp:app"],
            cwd=tmp_path,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    time.sleep(6.5)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    logs = [proc.communicate(timeout=15)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], logs

    fires = [ts for ts, _ in _fires(tmp_path, "tick")]
    # every second between the first and the last recorded fire, each exactly once
    assert 4 <= len(fires) <= 9, fires  # ~6.5 s of ticks, not the grace window before
    assert fires == list(range(fires[0], fires[-1] + 1))
    enqueued = [
        record
        for log in logs
        for line in log.splitlines()
        if line.startswith("{")
        for record in [json.loads(line)]
        if record.get("action") == "enqueued" and record.get("schedule") == "tick"
    ]
    # each fire was created by one process; the others found it already there
    assert len(enqueued) == len(fires)
    assert len({r["job_id"] for r in enqueued}) == len(fires)


def test_schedules_lists_next_fire_times(tmp_path: Path) -> None:
    env = _env(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "offload", "schedules", "schedapp:app", "--json", "-n", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    rows = {row["id"]: row for row in map(json.loads, run.stdout.splitlines())}
    assert rows["nightly"]["schedule"] == "30 2 * * *"
    assert rows["nightly"]["tz"] == "Europe/Paris"
    assert all(t.endswith(("02:30:00+01:00", "02:30:00+02:00", "03:00:00+02:00"))
               for t in rows["nightly"]["next_local"])  # fmt: skip
    assert rows["tick"]["schedule"] == "every 1s" and len(rows["tick"]["next"]) == 2
    assert rows["tick"]["overlap"] == "allow" and rows["nightly"]["misfire"] == "run_once"
    table = subprocess.run(
        [sys.executable, "-m", "offload", "schedules", "schedapp:app"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "nightly" in table.stdout and "Europe/Paris" in table.stdout
    help_text = subprocess.run(
        [sys.executable, "-m", "offload", "worker", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "OFFLOAD_SCHEDULER" in help_text


def test_worker_with_scheduler_flag_enqueues_and_runs_fires(tmp_path: Path) -> None:
    env = {**_env(tmp_path), "OFFLOAD_SCHEDULER": "1"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "offload", "worker", "schedapp:app", "--poll", "0.1"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done = [ts for ts, state in _fires(tmp_path, "tick") if state is JobState.SUCCEEDED]
        if len(done) >= 2:
            break
        time.sleep(0.2)
    worker.send_signal(signal.SIGTERM)
    _, log = worker.communicate(timeout=30)
    assert worker.returncode == 0, log
    assert len(done) >= 2, log
