"""A failed job's error record names the exception's class by its importable path,
wherever the handler ran (event loop, thread, child process), so a reader can get the
class back (Django's `TaskError.exception_class` does); older records still read."""

from __future__ import annotations

import importlib

from offload import JobState, Offload, Worker
from offload.codec import decode_error
from offload.envelope import ErrorInfo

app = Offload("memory://")


class Declined(Exception):
    """A user's own exception class, defined away from `builtins`."""


@app.task(max_attempts=1)
async def declines_on_the_loop() -> None:
    raise Declined("card declined")


@app.task(max_attempts=1)
def declines_in_a_thread() -> None:
    raise Declined("card declined")


@app.task(max_attempts=1, timeout=30)
def declines_in_a_child_process() -> None:
    raise Declined("card declined")


@app.task(max_attempts=1)
def fails_with_a_builtin() -> None:
    raise KeyError("missing")


def resolve(path: str) -> object:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


async def test_the_error_record_carries_the_importable_class_path() -> None:
    tasks = [declines_on_the_loop, declines_in_a_thread, declines_in_a_child_process]
    jobs = [await task.enqueue_async() for task in tasks]
    builtin = await fails_with_a_builtin.enqueue_async()
    await Worker(app).drain()

    for job in jobs:
        info = await job.info_async()
        assert info.state is JobState.DEAD
        assert info.error is not None
        assert info.error.type == "Declined"
        assert info.error.type_path == f"{__name__}.Declined"
        assert resolve(info.error.type_path) is Declined
        # the bury reason is added to the message; the class path stays
        assert info.error.message.startswith("attempts exhausted")
    info = await builtin.info_async()
    assert info.error is not None and info.error.type_path == "builtins.KeyError"


def test_a_record_written_before_class_paths_still_reads() -> None:
    old = decode_error(b'{"type":"ValueError","message":"boom","traceback":"tb"}')
    assert old == ErrorInfo("ValueError", "boom", "tb")
    assert old.type_path == ""
