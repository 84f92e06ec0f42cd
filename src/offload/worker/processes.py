"""Child processes for synchronous handlers that must be stoppable.

A thread cannot be killed, so a sync handler with a timeout runs in a child process
instead; on timeout the child is killed and replaced. Children are long-lived and
reused (no fork per job). Messages between parent and child are JSON, like
everything else: nothing is unpickled.
"""

from __future__ import annotations

import importlib
import multiprocessing
import threading
import traceback
from contextlib import suppress
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from typing import Any

from offload.codec import decode_value, encode_value
from offload.context import JobContext, _current
from offload.errors import Bury, JobTimeout, Retry

__all__ = ["ProcessRunner", "RemoteError"]


class RemoteError(Exception):
    """An exception raised by a handler in a child process, carried back by name.

    `remote_mro` lists the class names of the original exception's type and its bases,
    so retry policies can still match `retry_on` / `give_up_on` by name.
    """

    def __init__(self, type_name: str, remote_mro: list[str], message: str, tb: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.remote_mro = remote_mro
        self.remote_traceback = tb


def _resolve(module: str, qualname: str) -> Any:
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return getattr(target, "fn", target)  # a Task wraps the function


def _child_main(conn: Connection) -> None:  # pragma: no cover - runs in the child
    while True:
        try:
            request = decode_value(conn.recv_bytes())
        except (EOFError, OSError):
            return
        module, qualname, args, kwargs, ctx = request
        token = _current.set(JobContext(*ctx))
        try:
            result = _resolve(module, qualname)(*args, **kwargs)
            reply: list[Any] = ["ok", encode_value(result).decode()]
        except Retry as exc:
            reply = ["retry", exc.delay, exc.reason]
        except Bury as exc:
            reply = ["bury", exc.reason]
        except BaseException as exc:
            mro = [c.__name__ for c in type(exc).__mro__]
            reply = ["error", type(exc).__qualname__, mro, str(exc), traceback.format_exc()]
        finally:
            _current.reset(token)
        conn.send_bytes(encode_value(reply))


class _Child:
    def __init__(self, ctx: multiprocessing.context.SpawnContext) -> None:
        self.conn, child_conn = ctx.Pipe()
        self.process: SpawnProcess = ctx.Process(
            target=_child_main, args=(child_conn,), name="offload-child", daemon=True
        )
        self.process.start()
        child_conn.close()

    def kill(self) -> None:
        with suppress(Exception):
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()


class ProcessRunner:
    """Runs sync handlers in reusable child processes; `run` blocks (call it from a
    thread)."""

    def __init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: list[_Child] = []
        self._lock = threading.Lock()
        self._closed = False

    def run(
        self, fn: Any, args: list[Any], kwargs: dict[str, Any], ctx: JobContext, timeout_s: float
    ) -> Any:
        """Run `fn(*args, **kwargs)` in a child; kill the child after `timeout_s`.

        Raises:
            JobTimeout: the handler ran past `timeout_s` (its child was killed).
            RemoteError: the handler raised; Retry and Bury are re-raised as such.
        """
        child = self._acquire()
        request = [fn.__module__, fn.__qualname__, args, kwargs, _ctx_fields(ctx)]
        try:
            child.conn.send_bytes(encode_value(request, what=f"arguments of {ctx.task}"))
            finished = child.conn.poll(timeout_s)
            reply = decode_value(child.conn.recv_bytes()) if finished else None
        except (EOFError, OSError) as exc:
            child.kill()
            code = child.process.exitcode
            raise RemoteError(
                "ChildProcessDied",
                ["ChildProcessDied", "Exception"],
                f"the child process running the job died (exit code {code})",
                "",
            ) from exc
        if reply is None:
            child.kill()
            raise JobTimeout(f"task {ctx.task!r} ran past its timeout of {timeout_s} s")
        self._give_back(child)
        return _unpack(reply)

    def _acquire(self) -> _Child:
        with self._lock:
            while self._idle:
                child = self._idle.pop()
                if child.process.is_alive():
                    return child
                child.kill()
        return _Child(self._ctx)

    def _give_back(self, child: _Child) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(child)
                return
        child.kill()

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
    _, type_name, mro, message, tb = reply
    raise RemoteError(type_name, mro, message, tb)
