"""The CLI as a user runs it: a subprocess, configured by OFFLOAD_* variables."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from offload import Offload
from offload.brokers import SCHEMES
from offload.brokers.base import WorkerInfo


@pytest.fixture
def run(tmp_path: Path):  # type: ignore[no-untyped-def]
    env = {**os.environ, "OFFLOAD_URL": f"sqlite:///{tmp_path / 'cli.db'}"}

    def offload(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "offload", *args],
            env={**env, **extra_env},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return offload


def test_enqueue_status_jobs_show_round_trip(run) -> None:  # type: ignore[no-untyped-def]
    created = run("enqueue", "emails.send", "--args", '["ada@example.com"]', "--key", "k1")
    assert created.returncode == 0, created.stderr
    job_id = created.stdout.strip()
    again = run("enqueue", "emails.send", "--args", '["ada@example.com"]', "--key", "k1")
    assert again.stdout.split()[0] == job_id and "existing" in again.stdout

    status = run("status", "--json")
    data = json.loads(status.stdout)
    assert data["queues"]["default"]["queued"] == 1
    assert data["workers"] == []

    listing = run("jobs", "--json")
    rows = [json.loads(line) for line in listing.stdout.splitlines()]
    assert [(r["id"], r["task"], r["args"]) for r in rows] == [
        (job_id, "emails.send", ["ada@example.com"])
    ]
    shown = json.loads(run("show", job_id, "--json").stdout)
    assert shown["state"] == "queued" and shown["key"] == "k1"
    table = run("status").stdout
    assert "default" in table and "no live workers" in table


def test_status_json_gives_every_column_the_table_shows_of_a_worker(  # type: ignore[no-untyped-def]
    run, tmp_path: Path
) -> None:
    """`offload status` shows each worker's concurrency and when it was last seen (a
    stale heartbeat), but `--json`, what a script or a monitor reads, left both out."""
    app = Offload(f"sqlite:///{tmp_path / 'cli.db'}")
    seen = time.time()
    info = WorkerInfo(
        id="w-1", hostname="h", pid=1, queues=["default"], concurrency=7,
        started_at=seen, last_seen=seen,
    )  # fmt: skip

    async def register() -> None:
        await (await app.connected_broker()).register_worker(info, ttl_s=60)

    try:
        asyncio.run(register())
    finally:
        app.close()
    status = run("status", "--json")
    [worker] = json.loads(status.stdout)["workers"]
    assert worker["id"] == "w-1" and worker["concurrency"] == 7
    assert worker["last_seen"] == pytest.approx(seen, abs=1)


def test_errors_are_one_line_without_traceback(run) -> None:  # type: ignore[no-untyped-def]
    bad_url = run("status", OFFLOAD_URL="mysql://localhost/x")
    assert bad_url.returncode == 1
    assert bad_url.stderr.strip().splitlines() == [
        "error: unknown broker scheme 'mysql' in 'mysql://localhost/x'; "
        f"known schemes: {', '.join(sorted(SCHEMES))}"
    ]
    assert run("enqueue", "t").returncode == 0  # the database exists: the job does not
    missing = run("show", "nope")
    assert missing.returncode == 1
    assert "Traceback" not in missing.stderr and "no job nope" in missing.stderr
    bad_json = run("enqueue", "t", "--args", "{oops")
    assert bad_json.returncode == 2
    assert "not valid JSON" in bad_json.stderr and "Traceback" not in bad_json.stderr
    bad_app = run("worker", "nosuchmodule:app")
    assert bad_app.returncode == 2
    assert "cannot import 'nosuchmodule'" in bad_app.stderr


def test_options_have_environment_twins(run) -> None:  # type: ignore[no-untyped-def]
    help_text = run("worker", "--help").stdout
    for name in ("OFFLOAD_CONCURRENCY", "OFFLOAD_PROCESSES", "OFFLOAD_QUEUES", "OFFLOAD_LEASE"):
        assert name in help_text
    assert "OFFLOAD_URL" in run("status", "--help").stdout
    run("enqueue", "t")
    run("enqueue", "t")
    assert len(run("jobs", "--json", OFFLOAD_JOBS_LIMIT="1").stdout.splitlines()) == 1
    assert len(run("jobs", "--json").stdout.splitlines()) == 2


def test_dlq_replay_and_purge(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "deadapp.py").write_text(
        "from offload import Offload, Bury\n"
        "app = Offload()\n"
        "@app.task(name='fails')\n"
        "def fails(n):\n"
        "    raise Bury('no such mailbox')\n"
    )
    ids = [run("enqueue", "fails", "--args", f"[{i}]").stdout.strip() for i in range(3)]
    worker = subprocess.Popen(
        [sys.executable, "-m", "offload", "worker", "deadapp:app", "--poll", "0.05"],
        cwd=tmp_path,
        env={**os.environ, "OFFLOAD_URL": f"sqlite:///{tmp_path / 'cli.db'}"},
    )
    try:
        for _ in range(200):
            if json.loads(run("status", "--json").stdout)["queues"]["default"]["dead"] == 3:
                break
            subprocess.run(["sleep", "0.05"], check=True)
    finally:
        worker.terminate()
        worker.wait(timeout=20)
    listing = run("dlq", "list")
    assert all(i in listing.stdout for i in ids) and "no such mailbox" in listing.stdout
    assert run("dlq", "replay", ids[0]).stdout.strip() == "replayed 1 dead jobs"
    assert json.loads(run("show", ids[0], "--json").stdout)["state"] == "queued"
    assert run("dlq", "purge").returncode == 2  # needs ids, --queue or --all
    assert run("dlq", "purge", "--all", "--yes").stdout.strip() == "purged 2 dead jobs"
    assert run("show", ids[1]).returncode == 1


def test_cancel_a_job_and_a_whole_workflow(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from offload import JobState, Offload, chord

    app = Offload(f"sqlite:///{tmp_path / 'cli.db'}")

    @app.task(name="square")
    def square(x: int) -> int:
        return x * x

    @app.task(name="total")
    def total(values: list[int]) -> int:
        return sum(values)

    try:
        single = square.enqueue(3)
        flow = chord([square.call(i) for i in range(3)], total.partial()).enqueue()
        one = run("cancel", single.id)
        assert one.returncode == 0, one.stderr
        assert one.stdout.split() == [single.id, "cancelled"]
        again = run("cancel", single.id)
        assert "already cancelled" in again.stdout

        whole = run("cancel", "--workflow", flow.jobs[1].id)  # any step's id
        assert whole.returncode == 0, whole.stderr
        assert whole.stdout.count("cancelled") == 3
        # no worker ran: the callback is recorded cancelled too, never to run
        assert [j.state() for j in flow.jobs] == [JobState.CANCELLED] * 4
        missing = run("cancel", "--workflow", "0" * 32)
        assert missing.returncode != 0 and "Traceback" not in missing.stderr
    finally:
        app.close()


def test_dlq_purge_older_than_refuses_nan_and_negative_ages(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`--older-than nan` purged every dead job (SQLite binds NaN as NULL: no cutoff)."""
    import asyncio

    from offload import Offload
    from offload.envelope import ErrorInfo

    async def bury_one() -> str:
        app = Offload(f"sqlite:///{tmp_path / 'cli.db'}")
        async with app:
            job = await app.enqueue_async("fails", 1)
            broker = await app.connected_broker()
            [lease] = await broker.reserve(["default"], worker_id="t", lease_s=60, limit=1)
            await broker.bury(lease, error=ErrorInfo("RuntimeError", "boom"))
            return job.id

    job_id = asyncio.run(bury_one())
    for age in ("nan", "-5", "inf"):
        refused = run("dlq", "purge", "--all", "--yes", f"--older-than={age}")
        assert refused.returncode == 2, (age, refused.stdout, refused.stderr)
        assert "--older-than" in refused.stderr and "Traceback" not in refused.stderr
    assert json.loads(run("show", job_id, "--json").stdout)["state"] == "dead"
    assert run("dlq", "purge", "--all", "--yes", "--older-than", "3600").stdout.strip() == (
        "purged 0 dead jobs"
    )
    assert run("dlq", "purge", "--all", "--yes", "--older-than", "0").stdout.strip() == (
        "purged 1 dead jobs"
    )


def test_enqueueing_a_task_the_app_does_not_declare_is_noted(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`offload enqueue emails.sned --app M:A` printed an id and nothing else: every
    worker of that app then buried the job as an unknown task. With --app the tasks are
    known, so the name is noted on stderr (and enqueued all the same: its worker may
    live elsewhere); without --app there is nothing to check against."""
    (tmp_path / "mailapp.py").write_text(
        "from offload import Offload\n"
        "app = Offload()\n"
        "@app.task(name='emails.send')\n"
        "def send(to: str) -> None: ...\n"
    )
    typo = run("enqueue", "emails.sned", "--app", "mailapp:app", "--args", '["ada"]')
    assert typo.returncode == 0 and len(typo.stdout.split()) == 1
    assert typo.stderr == (
        "note: mailapp:app declares no task 'emails.sned' (its tasks: emails.send)\n"
    )
    known = run("enqueue", "emails.send", "--app", "mailapp:app", "--args", '["ada"]')
    assert known.returncode == 0 and known.stderr == ""
    assert run("enqueue", "emails.sned", "--args", '["ada"]').stderr == ""
