"""Health probes: `/live` and `/ready` over HTTP, for Kubernetes, Docker and systemd.

"Alive but not consuming" is the failure an orchestrator cannot see from outside: the
process runs, but its broker went away or its fetch loop hangs. So a worker answers
two questions (`offload worker --health-port P`):

- **live** (`GET /live`): the process and its event loop answer. The reply is written
  by the worker's own loop, so a loop blocked by a handler gets no answer at all.
- **ready** (`GET /ready`): the broker answers (no outage under way) and the fetch loop
  made progress (a `reserve` answered, or every slot is busy) within `ready_s`; not
  once the worker was asked to stop (SIGTERM), while it finishes its running jobs.

Both answer 200 or 503 with a small JSON body saying why. With `--processes N` the
supervisor serves them: each child writes its own verdict to a file in a directory the
supervisor gave it, every `REPORT_S`; the supervisor is ready when every child is, and
live while every child has reported within `ready_s` (or started less than that ago).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from offload.worker import Worker

__all__ = ["REPORT_S", "Verdict", "serve", "serve_supervisor", "verdict", "write_report"]

#: How often a supervised worker writes its verdict for the supervisor, seconds.
REPORT_S = 1.0

#: (ok, details) for one probe.
Verdict = tuple[bool, dict[str, Any]]


def verdict(worker: Worker, ready_s: float) -> Verdict:
    """Whether `worker` is ready: broker up, fetch loop progressing (or saturated)."""
    age = time.monotonic() - worker.progress_at
    details: dict[str, Any] = {
        "worker_id": worker.id,
        "broker_down": worker.health.down,
        "fetch_age_s": round(age, 3),
        "running": len(worker.running_jobs()),
    }
    if worker.stopping:  # it takes no more jobs: ready no longer, at once (not only
        # after `ready_s`, and then with a reason that blamed a hung fetch loop)
        details["reason"] = "stopping: finishing its running jobs"
        return False, details
    if worker.health.down:
        details["reason"] = "the broker does not answer"
        return False, details
    if age > ready_s and not worker.saturated():
        details["reason"] = f"the fetch loop made no progress for {age:.1f} s"
        return False, details
    return True, details


#: The answer to a path that is neither probe: 404, so that a typo in a probe's
#: configuration is told apart from a worker that is not ready.
NOT_FOUND = {"reason": "not found: use /live or /ready"}


def _status(ok: bool, details: dict[str, Any]) -> tuple[int, str]:
    if details is NOT_FOUND:
        return 404, "Not Found"
    return (200, "OK") if ok else (503, "Service Unavailable")


def _reply(ok: bool, details: dict[str, Any]) -> bytes:
    body = json.dumps({"ok": ok, **details}).encode()
    code, reason = _status(ok, details)
    status = f"{code} {reason}"
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def serve(worker: Worker, host: str, port: int, ready_s: float) -> asyncio.Server:
    """Serve `/live` and `/ready` for `worker` on its own event loop."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            path = line.split(b" ")[1].decode() if line.count(b" ") >= 2 else ""
            if path.startswith("/live"):
                answer = _reply(True, {"worker_id": worker.id})
            elif path.startswith("/ready"):
                answer = _reply(*verdict(worker, ready_s))
            else:
                answer = _reply(False, NOT_FOUND)
            writer.write(answer)
            await writer.drain()
        except (OSError, TimeoutError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port)


def write_report(directory: Path, worker: Worker, ready_s: float) -> None:
    """Write this process's verdict where its supervisor reads it (atomically)."""
    ok, details = verdict(worker, ready_s)
    target = directory / f"{os.getpid()}.json"
    partial = directory / f".{os.getpid()}.json.tmp"
    partial.write_text(json.dumps({"ok": ok, **details}))
    partial.replace(target)


def supervisor_verdicts(
    directory: Path, children: dict[int, float], ready_s: float
) -> tuple[Verdict, Verdict]:
    """(live, ready) of a supervisor whose children (pid → monotonic start) report
    into `directory`."""
    now_wall, now = time.time(), time.monotonic()
    live, ready = True, True
    states: dict[str, Any] = {}
    for pid, started in children.items():
        path = directory / f"{pid}.json"
        try:
            age = now_wall - path.stat().st_mtime
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            age, report = None, {"ok": False, "reason": "no report yet"}
        fresh = age is not None and age <= ready_s
        if not fresh and now - started > ready_s:
            live = False
            report = {**report, "ok": False, "reason": f"no report for {ready_s:g} s"}
        ready = ready and fresh and bool(report.get("ok"))
        states[str(pid)] = report
    return (live, {"processes": states}), (ready, {"processes": states})


def serve_supervisor(
    host: str, port: int, probe: Callable[[], tuple[Verdict, Verdict]]
) -> ThreadingHTTPServer:
    """Serve `/live` and `/ready` from a thread of the (synchronous) supervisor."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            live, ready = probe()
            if self.path.startswith("/live"):
                ok, details = live
            elif self.path.startswith("/ready"):
                ok, details = ready
            else:
                ok, details = False, NOT_FOUND
            body = json.dumps({"ok": ok, **details}).encode()
            self.send_response(_status(ok, details)[0])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None  # probes every few seconds would flood the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
