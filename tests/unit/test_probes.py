"""The supervisor's probes (`--processes N`): ready only when every process reports
ready, live while every process reports (or has only just started)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from offload.worker.probes import supervisor_verdicts


def report(directory: Path, pid: int, ok: bool, age_s: float = 0.0) -> None:
    path = directory / f"{pid}.json"
    path.write_text(json.dumps({"ok": ok}))
    then = time.time() - age_s
    os.utime(path, (then, then))


def test_ready_only_when_every_process_is(tmp_path: Path) -> None:
    long_ago = time.monotonic() - 100
    children = {11: long_ago, 12: long_ago}
    report(tmp_path, 11, True)
    report(tmp_path, 12, True)
    (live, _), (ready, details) = supervisor_verdicts(tmp_path, children, ready_s=5)
    assert live and ready
    assert set(details["processes"]) == {"11", "12"}
    report(tmp_path, 12, False)
    (live, _), (ready, _) = supervisor_verdicts(tmp_path, children, ready_s=5)
    assert live and not ready


def test_a_process_that_stopped_reporting_is_not_live(tmp_path: Path) -> None:
    children = {11: time.monotonic() - 100, 12: time.monotonic() - 100}
    report(tmp_path, 11, True)
    report(tmp_path, 12, True, age_s=30)  # its loop is blocked: no report for 30 s
    (live, details), (ready, _) = supervisor_verdicts(tmp_path, children, ready_s=5)
    assert not live and not ready
    assert details["processes"]["12"]["reason"] == "no report for 5 s"


def test_a_process_just_started_is_live_but_not_ready(tmp_path: Path) -> None:
    children = {11: time.monotonic()}
    (live, _), (ready, details) = supervisor_verdicts(tmp_path, children, ready_s=5)
    assert live and not ready
    assert details["processes"]["11"]["reason"] == "no report yet"
