"""Huge values: an error is stored bounded, whatever the exception carried, and every
CLI view stays fast and intact whatever a job holds (issue 10.13)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from offload import Offload, Worker
from offload.codec import decode_error, encode_value
from offload.envelope import ERROR_MESSAGE_MAX, ERROR_TRACEBACK_MAX, ErrorInfo, JobState, clip

MB = 1 << 20


def test_clip_keeps_the_head_and_the_tail_around_a_note() -> None:
    text = "head" + "x" * 10_000 + "tail"
    clipped = clip(text, 1000)
    assert 990 <= len(clipped) <= 1000
    assert clipped.startswith("headx") and clipped.endswith("xtail")
    head, _, tail = clipped.partition(" [... ")
    cut = int(tail.split()[0])
    assert len(head) + cut + len(tail.partition(" characters cut ...] ")[2]) == len(text)
    assert clip("short", 1000) == "short"


def test_every_error_record_is_bounded_however_it_was_made() -> None:
    built = ErrorInfo("E" * (40 * MB), "m" * (20 * MB), "t" * (20 * MB))
    stored = json.dumps({"type": "E", "message": "m" * (20 * MB), "traceback": "t" * (20 * MB)})
    for error in (built, decode_error(stored)):  # decoded: what an older worker stored
        assert len(error.type) <= ERROR_TRACEBACK_MAX
        assert ERROR_MESSAGE_MAX - 10 <= len(error.message) <= ERROR_MESSAGE_MAX
        assert ERROR_TRACEBACK_MAX - 10 <= len(error.traceback) <= ERROR_TRACEBACK_MAX
        assert "characters cut ...]" in error.message
    assert ErrorInfo("E", "short").message == "short"


@pytest.mark.parametrize("name", ["memory", "sqlite"])
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_huge_exception_is_stored_bounded_with_a_note(
    name: str, kind: str, broker_url: Callable[[str], str]
) -> None:
    app = Offload(broker_url(name))
    message = "start " + "m" * (20 * MB) + " the end"

    @app.task(name="fails_sync", max_attempts=1)
    def fails_sync() -> None:
        raise ValueError(message)

    @app.task(name="fails_async", max_attempts=1)
    async def fails_async() -> None:
        raise ValueError(message)

    try:
        job = await app.options(f"fails_{kind}").enqueue_async()
        await Worker(app).drain()
        info = await job.info_async()
        assert info.state is JobState.DEAD and info.error is not None
        error = info.error
        assert error.type == "ValueError"
        # the message, cut to ERROR_MESSAGE_MAX, after the retry policy's verdict
        assert ERROR_MESSAGE_MAX - 10 <= len(error.message) <= ERROR_MESSAGE_MAX + 100
        assert "start mmm" in error.message[:100] and error.message.endswith("mmm the end")
        assert "characters cut ...]" in error.message
        assert ERROR_TRACEBACK_MAX - 10 <= len(error.traceback) <= ERROR_TRACEBACK_MAX
        assert error.traceback.startswith("Traceback (most recent call last)")
        assert error.traceback.endswith("mmm the end\n")
    finally:
        await app.aclose()


# -- the CLI ------------------------------------------------------------------------------


def offload(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """One CLI command; the timeout is generous (a loaded machine), the old code took
    minutes on `show`."""
    return subprocess.run(
        [sys.executable, "-m", "offload", *args],
        env={**os.environ, "OFFLOAD_URL": url, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def store_huge_jobs(path: Path) -> tuple[str, str]:
    """A dead job with 20 MB of arguments and a 20 MB error (as an older worker stored
    it, unbounded), and a succeeded job with a 20 MB result."""
    app = Offload(f"sqlite:///{path}")
    blob = "x" * (20 * MB)
    try:
        dead = await app.options("big").enqueue_async(blob)
        done = await app.options("big").enqueue_async("small")
        broker = await app.connected_broker()
        leases = {
            lease.job_id: lease
            for lease in await broker.reserve(["default"], worker_id="w", lease_s=60, limit=2)
        }
        await broker.bury(leases[dead.id], error=ErrorInfo("ValueError", "small"))
        await broker.ack(leases[done.id], encode_value(blob), result_ttl_s=3600)
    finally:
        await app.aclose()
    huge = {"type": "ValueError", "message": "m" * (20 * MB), "traceback": "t" * (20 * MB)}
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE offload_jobs SET error = ? WHERE id = ?", (json.dumps(huge), dead.id))
    return dead.id, done.id


async def test_cli_views_of_jobs_holding_megabytes_are_quick_and_cut_with_a_note(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'big.db'}"
    dead, done = await store_huge_jobs(tmp_path / "big.db")
    for job_id in (dead, done):
        shown = offload(url, "show", job_id)
        assert shown.returncode == 0, shown.stderr
        assert "characters cut ...]" in shown.stdout
        assert "--json prints them whole" in shown.stdout
        assert len(shown.stdout) < 100_000
    for view in (["jobs"], ["dlq", "list"], ["status"]):
        listed = offload(url, *view)
        assert listed.returncode == 0, listed.stderr
        assert len(listed.stdout) < 20_000
    whole = offload(url, "show", "--json", done)
    assert whole.returncode == 0
    assert len(whole.stdout) > 20 * MB  # --json is the way to everything


async def test_cli_views_print_text_that_looks_like_markup_as_it_is(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'markup.db'}"
    app = Offload(url)
    try:
        job = await app.options("[bold]task").enqueue_async("[/x]")
        broker = await app.connected_broker()
        (lease,) = await broker.reserve(["default"], worker_id="w", lease_s=60, limit=1)
        await broker.bury(lease, error=ErrorInfo("ValueError", "closing [/x] tag", "[/tb]"))
    finally:
        await app.aclose()
    for view in (["jobs"], ["dlq", "list"], ["show", job.id]):
        shown = offload(url, *view)
        assert shown.returncode == 0, shown.stderr
        assert "closing [/x] tag" in shown.stdout
        assert "[bold]task" in shown.stdout
