"""Child processes for synchronous handlers that must be stoppable.

A thread cannot be killed, so a sync handler with a timeout runs in a child process
instead; on timeout the child is killed and replaced. Children are long-lived and
reused (no fork per job). Messages between parent and child are JSON, like
everything else: nothing is unpickled.

The parent alone decides when a child ends: a child ignores SIGINT and SIGTERM (a
terminal's Ctrl-C or systemd's stop reach every process of the group, and the worker
stops gracefully), and ends itself when its parent is gone, so a handler never runs on
in an orphan while its job runs again elsewhere. At shutdown past the grace period the
worker kills the busy children (`halt`), so their jobs can be given back at once.
"""

from __future__ import annotations

import atexit
import importlib
import multiprocessing
import multiprocessing.util
import os
import signal
import threading
import time
import traceback
import weakref
from contextlib import suppress
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from typing import Any

from offload.codec import decode_value, encode_value
from offload.context import JobContext, _current
from offload.envelope import type_path
from offload.errors import Bury, JobTimeout, Retry
from offload.validation import value_bytes

__all__ = ["ProcessRunner", "RemoteError"]

#: How often a child checks that its parent is alive, in seconds.
PARENT_CHECK_S = 0.5


class RemoteError(Exception):
    """An exception raised by a handler in a child process, carried back by name.

    `remote_mro` lists the class names of the original exception's type and its bases,
    so retry policies can still match `retry_on` / `give_up_on` by name.
    """

    def __init__(
        self, type_name: str, remote_mro: list[str], message: str, tb: str, type_path: str = ""
    ) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.remote_mro = remote_mro
        self.remote_traceback = tb
        self.type_path = type_path


def _resolve(module: str, qualname: str) -> Any:
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return getattr(target, "fn", target)  # a Task wraps the function


def _exit_with_parent(parent: int) -> None:  # pragma: no cover - runs in the child
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)


def _child_main(conn: Connection, parent: int) -> None:  # pragma: no cover - in the child
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    while True:
        try:
            request = decode_value(conn.recv_bytes())
        except (EOFError, OSError):
            return
        module, qualname, args, kwargs, ctx = request
        token = _current.set(JobContext(*ctx))
        try:
            result = _resolve(module, qualname)(*args, **kwargs)
            reply: list[Any] = ["ok", value_bytes(result, "the result").decode()]
        except Retry as exc:
            reply = ["retry", exc.delay, exc.reason]
        except Bury as exc:
            reply = ["bury", exc.reason]
        except BaseException as exc:
            mro = [c.__name__ for c in type(exc).__mro__]
            tb = traceback.format_exc()
            reply = ["error", type(exc).__qualname__, mro, str(exc), tb, type_path(type(exc))]
        finally:
            _current.reset(token)
        conn.send_bytes(encode_value(reply))


class _Child:
    def __init__(self, ctx: multiprocessing.context.SpawnContext) -> None:
        self.conn, child_conn = ctx.Pipe()
        self.process: SpawnProcess = ctx.Process(
            target=_child_main, args=(child_conn, os.getpid()), name="offload-child", daemon=True
        )
        self.process.start()
        _LIVE.add(self)
        child_conn.close()

    def stop(self) -> None:
        """Kill the process and wait for it (the thread running it sees EOF)."""
        with suppress(Exception):
            self.process.kill()
            self.process.join(timeout=5)

    def kill(self) -> None:
        self.stop()
        self.conn.close()


#: Every child not yet collected, for `_kill_at_exit`.
_LIVE: weakref.WeakSet[_Child] = weakref.WeakSet()


@atexit.register
def _kill_at_exit() -> None:
    """Kill the children of runners nobody closed. A child ignores SIGTERM (a job runs
    to its end at shutdown), and multiprocessing's own exit hook terminates daemonic
    children with SIGTERM and then joins them: it would wait forever. Registered after
    that hook (`multiprocessing.util` is imported above), so it runs before it."""
    for child in list(_LIVE):
        child.stop()


class ProcessRunner:
    """Runs sync handlers in reusable child processes; `run` blocks (call it from a
    thread)."""

    def __init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: list[_Child] = []
        self._busy: set[_Child] = set()
        self._jobs: dict[str, _Child] = {}  # job id -> the busy child running it
        self._lock = threading.Lock()
        self._closed = False
        self._halted = False

    def run(
        self, fn: Any, args: list[Any], kwargs: dict[str, Any], ctx: JobContext, timeout_s: float
    ) -> Any:
        """Run `fn(*args, **kwargs)` in a child; kill the child after `timeout_s`.

        Raises:
            JobTimeout: the handler ran past `timeout_s` (its child was killed).
            RemoteError: the handler raised; Retry and Bury are re-raised as such.
        """
        child = self._acquire()
        with self._lock:
            self._jobs[ctx.id] = child
        request = [fn.__module__, fn.__qualname__, args, kwargs, _ctx_fields(ctx)]
        try:
            child.conn.send_bytes(encode_value(request, what=f"arguments of {ctx.task}"))
            finished = child.conn.poll(timeout_s)
            reply = decode_value(child.conn.recv_bytes()) if finished else None
        except (EOFError, OSError) as exc:
            with self._lock:
                self._jobs.pop(ctx.id, None)
            self._discard(child)
            code = child.process.exitcode
            raise RemoteError(
                "ChildProcessDied",
                ["ChildProcessDied", "Exception"],
                f"the child process running the job died (exit code {code})",
                "",
            ) from exc
        with self._lock:
            self._jobs.pop(ctx.id, None)
        if reply is None:
            self._discard(child)
            raise JobTimeout(f"task {ctx.task!r} ran past its timeout of {timeout_s} s")
        self._give_back(child)
        return _unpack(reply)

    def _acquire(self) -> _Child:
        """An idle child, or a new one, marked busy; refused once halted."""
        with self._lock:
            while self._idle and not self._halted:
                child = self._idle.pop()
                if child.process.is_alive():
                    self._busy.add(child)
                    return child
                child.kill()
            halted = self._halted
        if not halted:
            child = _Child(self._ctx)
            with self._lock:
                if not self._halted:
                    self._busy.add(child)
                    return child
            child.kill()
        raise RemoteError(
            "WorkerShutdown", ["WorkerShutdown", "Exception"], "the worker is stopping", ""
        )

    def _discard(self, child: _Child) -> None:
        with self._lock:
            self._busy.discard(child)
        child.kill()

    def _give_back(self, child: _Child) -> None:
        with self._lock:
            self._busy.discard(child)
            if not (self._closed or self._halted):
                self._idle.append(child)
                return
        child.kill()

    def kill(self, job_id: str) -> bool:
        """Kill the child running job `job_id`, if one does: its handler stops at once
        (the thread waiting on it sees EOF). False if no child runs that job."""
        with self._lock:
            child = self._jobs.pop(job_id, None)
        if child is None:
            return False
        child.stop()
        return True

    def halt(self) -> None:
        """Kill every busy child now and refuse new runs: their handlers stop at once.
        The threads waiting on them see EOF and close their pipes."""
        with self._lock:
            self._halted = True
            busy = list(self._busy)
        for child in busy:
            child.stop()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            children, self._idle = self._idle, []
        for child in children:
            child.kill()


def _ctx_fields(ctx: JobContext) -> list[Any]:
    return [
        ctx.id,
        ctx.task,
        ctx.queue,
        ctx.attempt,
        ctx.max_attempts,
        ctx.key,
        ctx.created_at,
        ctx.deadline,
        ctx.worker_id,
    ]


def _unpack(reply: list[Any]) -> Any:
    kind = reply[0]
    if kind == "ok":
        return decode_value(reply[1].encode())
    if kind == "retry":
        raise Retry(reply[1], reply[2])
    if kind == "bury":
        raise Bury(reply[1])
    _, type_name, mro, message, tb, path = reply
    raise RemoteError(type_name, mro, message, tb, path)
