"""The app the dashboard tests serve and run: tasks whose outcome a test controls.

`offload dashboard` and `offload worker` load `app` (its broker is `OFFLOAD_URL`, set
by the test); a test registers the same tasks on an app of its own with `register`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from offload import Every, Offload
from offload.task import Task


def register(app: Offload) -> dict[str, Task[Any, Any]]:
    """The tasks, on `app`, by short name."""

    @app.task(name="dash.echo", queue="alpha")
    def echo(value: object) -> object:
        return value

    @app.task(name="dash.flaky", queue="beta", max_attempts=1)
    def flaky(fixed_flag: str) -> str:
        """Fails until the file `fixed_flag` exists: a bug, then its fix deployed."""
        if not Path(fixed_flag).exists():
            raise RuntimeError(f"not fixed yet: {fixed_flag} is missing")
        return "fixed"

    @app.task(name="dash.later", queue="alpha")
    def later() -> None:
        """Only ever enqueued delayed, to be cancelled."""

    app.schedule(echo, Every(3600), args=("hourly",), id="hourly-echo")
    return {"echo": echo, "flaky": flaky, "later": later}


app = Offload()
register(app)
