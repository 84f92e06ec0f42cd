"""What every `offload` command shares: loading the app, running its coroutines, the
console, `OFFLOAD_*` environment twins, logging, and the common options.

Commands import these from here, and `offload.cli` gathers the commands, so that no
command imports the package that imports it.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from offload.app import Offload

__all__ = [
    "app_from_options",
    "app_option",
    "console",
    "env_twin",
    "load_app",
    "need",
    "run_async",
    "setup_logging",
    "url_option",
]

T = TypeVar("T")


def load_app(spec: str) -> Offload:
    """Import `MODULE:ATTR` and return the `Offload` app it names.

    The working directory is put on `sys.path` first, as uvicorn and gunicorn do, so
    `offload worker myapp:app` finds `./myapp.py`.

    Raises:
        click.BadParameter: the spec is malformed, the import fails, or the object is
            not an `Offload` app.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"expected MODULE:APP, e.g. myapp.tasks:app, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise click.BadParameter(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, Offload):
        raise click.BadParameter(f"{spec!r} is a {type(obj).__name__}, not an Offload app")
    from offload.logging import redact_handlers

    redact_handlers()  # the handlers the import added (the app's own, Django's LOGGING)
    return obj


def app_from_options(app_spec: str | None, url: str | None, *, create: bool = False) -> Offload:
    """The app to inspect: the one named by --app, else a bare one on --url.

    Raises:
        click.ClickException: unless `create`, the broker is a SQLite file that does
            not exist: a command that reads or steers jobs must not create an empty
            database (and its directories) for a mistyped path and report it empty.
    """
    app = load_app(app_spec) if app_spec else Offload(url)
    if create:
        return app
    # The broker itself, or the state store of a delivery (amqp://, sqs:// with
    # state=sqlite:///…), which `Composite` holds as its inspection role.
    for part in (app.broker, getattr(app.broker, "inspection", None)):
        path = getattr(part, "path", None)
        if isinstance(path, Path) and not path.exists():
            raise click.ClickException(
                f"no such database: {path} (check --url or OFFLOAD_URL, and its state=; "
                "a worker or an enqueue creates it)"
            )
    return app


def run_async(app: Offload, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run an async CLI action against `app`'s broker, closing it afterwards."""
    import asyncio

    # The value leaves through `box`, not as the task's result: on Python 3.11,
    # asyncio.run's exit reprs its main task (through signal.getsignal), result and all,
    # and the repr of jobs holding megabytes took seconds to minutes.
    box: list[T] = []

    async def runner() -> None:
        try:
            box.append(await make())
        finally:
            await app.aclose()

    asyncio.run(runner())
    return box[0]


def console() -> Console:
    """A rich console; when output is piped, wide enough that ids are never folded."""
    return Console(width=None if sys.stdout.isatty() else 200)


def env_twin(name: str) -> dict[str, Any]:
    """click.option keywords naming an option's `OFFLOAD_<NAME>` environment twin and
    showing it, with the default, in `--help`."""
    return {"envvar": f"OFFLOAD_{name}", "show_envvar": True, "show_default": True}


def need(module: str, extra: str, option: str) -> Any:
    """Import an optional part of offload, or fail naming the extra it needs.

    Raises:
        click.UsageError: a library of the extra is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise click.UsageError(
            f"{option} needs offload[{extra}]: pip install 'offload[{extra}]' ({exc})"
        ) from None


def setup_logging(level: str, fmt: str = "text", config: str | None = None) -> None:
    """Logs to stderr (human-readable text, or one JSON object per line), or as a
    standard `logging` configuration file says (`offload.logging.configure`)."""
    from offload.logging import configure

    configure(level, fmt, config=config)


app_option = click.option(
    "--app",
    "app_spec",
    envvar="OFFLOAD_APP",
    show_envvar=True,
    metavar="MODULE:APP",
    help="Offload app whose broker to use (default: a bare app on --url).",
)
url_option = click.option(
    "--url",
    envvar="OFFLOAD_URL",
    show_envvar=True,
    help="Broker URL (default: sqlite:///offload.db).",
)
