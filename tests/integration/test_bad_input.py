"""Bad input is refused at the producer, the same on every broker (issue 10, point 10).

Each row of the table is one bad enqueue through one producer path. On every broker it
must raise `SerializationError` (arguments) or `ConfigurationError` (options) with a
message naming the field, store nothing (a batch with one bad job stores none of it),
and leave the queue working for a good job afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from offload import (
    Backoff,
    ConfigurationError,
    Every,
    Offload,
    Retry,
    SerializationError,
    Worker,
    chain,
    group,
)
from offload.task import Task
from tests.conftest import BROKER_NAMES

NAN, INF = float("nan"), float("inf")


def _deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


@dataclass(frozen=True)
class Row:
    """One bad enqueue: `call(app, task)` must raise `error` matching `names`."""

    id: str
    call: Callable[[Offload, Task[Any, Any]], Any]
    error: type[Exception]
    names: str


ROWS = [
    Row("nan-arg", lambda a, t: t.enqueue(NAN), SerializationError, r"argument 0 .* nan"),
    Row(
        "inf-nested-kwarg",
        lambda a, t: a.portal.run(t.enqueue_async(x={"a": [1, INF]})),
        SerializationError,
        r"argument 'x' of task 't\.echo' holds inf at \['a'\]\[1\]",
    ),
    Row(
        "minus-inf-in-batch",
        lambda a, t: t.enqueue_many([(1,), (-INF,), (3,)]),
        SerializationError,
        r"argument 0 .* -inf",
    ),
    Row(
        "deep-list",
        lambda a, t: t.enqueue(_deep(10_000)),
        SerializationError,
        r"argument 0 of task 't\.echo' nests .* more than 100 deep",
    ),
    Row(
        "nan-by-name",
        lambda a, t: a.enqueue("elsewhere.task", [NAN]),
        SerializationError,
        r"argument 0 of task 'elsewhere\.task' holds nan at \[0\]",
    ),
    Row(
        "priority-2**63",
        lambda a, t: t.options(priority=2**63).enqueue(1),
        ConfigurationError,
        r"priority must be an int from -2147483648 to 2147483647",
    ),
    Row(
        "nan-delay",
        lambda a, t: t.options(delay=NAN).enqueue(1),
        ConfigurationError,
        "delay must be finite",
    ),
    Row(
        "inf-delay",
        lambda a, t: t.options(delay=INF).enqueue(1),
        ConfigurationError,
        "delay must be finite",
    ),
    Row(
        "negative-delay",
        lambda a, t: t.options(delay=-5).enqueue(1),
        ConfigurationError,
        "delay must be",
    ),
    Row("nan-at", lambda a, t: t.options(at=NAN).enqueue(1), ConfigurationError, "at must be"),
    Row(
        "nan-expires",
        lambda a, t: t.options(expires=NAN).enqueue(1),
        ConfigurationError,
        "expires must be",
    ),
    Row(
        "zero-timeout",
        lambda a, t: t.options(timeout=0).enqueue(1),
        ConfigurationError,
        "timeout must be",
    ),
    Row(
        "nan-backoff",
        lambda a, t: t.options(backoff=Backoff(base_s=NAN)).enqueue(1),
        ConfigurationError,
        r"backoff\.base_s must be",
    ),
    Row(
        "huge-max-attempts",
        lambda a, t: t.options(max_attempts=2**40).enqueue(1),
        ConfigurationError,
        "max_attempts must be",
    ),
    Row(
        "nul-in-queue",
        lambda a, t: t.options(queue="a\0b").enqueue(1),
        ConfigurationError,
        "queue must be",
    ),
    Row(
        "long-queue",
        lambda a, t: t.options(queue="q" * 10_000).enqueue(1),
        ConfigurationError,
        "queue must be 1 to 200",
    ),
    Row(
        "nul-in-key",
        lambda a, t: t.options(key="k\0").enqueue(1),
        ConfigurationError,
        "key must be",
    ),
    Row(
        "long-key",
        lambda a, t: t.options(key="k" * 10_000).enqueue(1),
        ConfigurationError,
        "key must be a string of 1 to 512",
    ),
    Row(
        "nul-from-key-function",
        lambda a, t: t.options(key=lambda x: f"k\0{x}").enqueue_many([(1,), (2,)]),
        ConfigurationError,
        "the key function's result must be",
    ),
    Row(
        "nul-in-task-name",
        lambda a, t: a.enqueue("bad\0name", 1),
        ConfigurationError,
        "task name must be",
    ),
    Row(
        "nan-in-workflow-group",
        lambda a, t: group([t.call(1), t.call(NAN)]).enqueue(),
        SerializationError,
        r"argument 0 of task 't\.echo'",
    ),
    Row(
        "nan-in-later-chain-step",
        lambda a, t: chain(t.call(1), a.tasks["t.add"].partial(NAN)).enqueue(),
        SerializationError,
        r"argument 0 of workflow step 't\.add'",
    ),
    Row(
        "bad-step-options",
        lambda a, t: chain(t.call(1), t.options(priority=2**31).partial(2)).enqueue(),
        ConfigurationError,
        "priority must be",
    ),
]


@pytest.mark.parametrize("broker_name", BROKER_NAMES)
@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
async def test_bad_input_is_refused_at_the_producer_and_stores_nothing(
    broker_url: Callable[[str], str], broker_name: str, row: Row
) -> None:
    app = Offload(broker_url(broker_name))

    @app.task(name="t.echo")
    def echo(x: Any = None) -> Any:
        return x

    @app.task(name="t.add")
    def add(x: Any, y: Any) -> Any:
        return x

    try:
        with pytest.raises(row.error, match=row.names):
            row.call(app, echo)  # sync paths refuse before the portal reaches a broker
        broker = await app.connected_broker()
        assert (await broker.list_jobs(limit=10)).items == []
        good = await echo.enqueue_async(42)
        assert await Worker(app).drain() == 1
        assert await good.result_async(timeout=10) == 42
    finally:
        await app.aclose()
        app.close()


def test_task_declarations_and_workers_refuse_bad_options() -> None:
    app = Offload("memory://")
    bad: list[tuple[Callable[[], Any], str]] = [
        (lambda: app.task(queue="a\0")(print), "queue must be"),
        (lambda: app.task(queue="x" * 201)(print), "queue must be 1 to 200"),
        (lambda: app.task(queue="a,b")(print), "queue must not contain ','"),
        (lambda: app.task(priority=2**63)(print), "priority must be"),
        (lambda: app.task(timeout=NAN)(print), "timeout must be"),
        (lambda: app.task(expires=timedelta(seconds=-1))(print), "expires must be"),
        (lambda: app.task(result_ttl=INF)(print), "result_ttl must be"),
        (lambda: app.task(max_attempts=0)(print), "max_attempts must be"),
        (lambda: app.task(name="t\0")(print), "task name must be"),
        (lambda: Offload("memory://", queue="\x07"), "queue must be"),
        (lambda: app.schedule("t", Every(60), args=[NAN]), r"argument 0 of task 't' holds"),
        (lambda: app.schedule("t", Every(60), args=[_deep(500)]), "nests"),
        (lambda: app.schedule("t", Every(60), id="s\0"), "schedule id must be"),
        (lambda: Worker(app, lease_s=NAN), "lease must be"),
        (lambda: Worker(app, grace_s=-1), "grace must be"),
        (lambda: Retry(delay=NAN), "Retry delay must be"),
        (lambda: Worker(app, queues=["ok", "a\0"]), "queue must be"),
        (lambda: app.schedule("t", Every(60), grace=NAN), "grace must be"),
        (lambda: Every(NAN), "whole number of seconds"),
    ]
    for call, message in bad:
        with pytest.raises((ConfigurationError, SerializationError), match=message):
            call()
    assert app.tasks == {} and app.schedules == {}


def test_cli_enqueue_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "OFFLOAD_URL": f"sqlite:///{tmp_path / 'cli.db'}"}

    def offload(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "offload", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    for args, message in [
        (["--args", "[NaN]"], "argument 0 of task 't' holds nan"),
        (["--delay", "nan"], "delay must be finite"),
        (["--priority", str(2**63)], "priority must be"),
        (["--queue", "a\tb"], "queue must be"),
    ]:
        done = offload("enqueue", "t", *args)
        assert done.returncode == 1, (args, done.stdout)
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert offload("jobs", "--json").stdout == ""
