"""The worker commands, as processes: `offload worker --django SETTINGS` and
`python -m django offload_worker` (what `manage.py offload_worker` runs) run jobs
enqueued through Django, finding each task by its module path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.tasks import TaskResultStatus

from tests.django.helpers import wait_for
from tests.django.project import extra, tasks

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = "tests.django.project.settings"


@contextmanager
def process(*argv: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=dict(os.environ))
    try:
        yield proc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def succeeded(task: object, result_id: str) -> Callable[[], object]:
    def check() -> object:
        fresh = task.get_result(result_id)  # type: ignore[attr-defined]
        assert fresh.status != TaskResultStatus.FAILED, fresh.errors
        return fresh if fresh.status == TaskResultStatus.SUCCESSFUL else None

    return check


def test_offload_worker_django_runs_tasks_found_by_module_path() -> None:
    added = tasks.add.enqueue(20, 22)
    shouted = extra.shout.enqueue("hi")  # its module is not one the worker imports first
    with process("-m", "offload", "worker", "--django", SETTINGS, "--poll", "0.2"):
        assert wait_for(succeeded(tasks.add, added.id), 90).return_value == 42
        assert wait_for(succeeded(extra.shout, shouted.id), 90).return_value == "HI"


def test_manage_py_offload_worker_serves_the_named_backend() -> None:
    result = tasks.pid_of_worker.enqueue()
    argv = ["-m", "django", "offload_worker", "--settings", SETTINGS, "--backend", "sqlite"]
    with process(*argv, "--poll", "0.2") as proc:
        fresh = wait_for(succeeded(tasks.pid_of_worker, result.id), 90)
        assert fresh.return_value == proc.pid


def test_a_backend_that_is_not_offloads_is_refused() -> None:
    from django.test import override_settings

    from offload.contrib.django.backend import worker_app
    from offload.errors import ConfigurationError

    dummy = {"BACKEND": "django.tasks.backends.dummy.DummyBackend"}
    with override_settings(TASKS={"default": dummy}):
        with pytest.raises(ConfigurationError, match=r"not offload\.contrib\.django"):
            worker_app("default")


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"backend": "nope"}, r"no TASKS backend 'nope' \(configured: 'default', 'sqlite'\)"),
        ({"lease": -1.0}, "lease"),
    ],
)
def test_a_bad_backend_or_option_is_a_command_error_naming_it(
    options: dict[str, object], named: str
) -> None:
    """`manage.py offload_worker --backend typo` printed Django's traceback
    (InvalidTaskBackend), and a bad worker option offload's: each is one line."""
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match=named):
        call_command("offload_worker", **options)
