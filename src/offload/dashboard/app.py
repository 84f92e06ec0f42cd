"""`create_app(offload_app)`: the dashboard as a Starlette application.

Served by `offload dashboard`, or mounted in an existing ASGI application under a
prefix (`Mount("/offload", app=create_app(offload_app, token=...))`); links follow the
prefix through the ASGI `root_path`. Its state lives on `app.state.dashboard`, never in
module globals, so a process may serve several. It reaches the broker through the
`Offload` app's `connected_broker()`, on whatever event loop serves the request.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from offload.app import Offload
from offload.codec import dumps_pretty
from offload.dashboard import actions, pages
from offload.dashboard.queries import SPARK_H, SPARK_W, STATES
from offload.dashboard.security import Access, Authorize, SecurityHeaders
from offload.dashboard.state import Dashboard, dashboard
from offload.errors import ConfigurationError

__all__ = ["Dashboard", "create_app"]

_HERE = Path(str(files("offload.dashboard")))


def create_app(
    offload_app: Offload,
    *,
    token: str | None = None,
    basic: tuple[str, str] | None = None,
    authorize: Authorize | None = None,
    read_only: bool = False,
    title: str = "offload",
) -> Starlette:
    """The dashboard for `offload_app`'s broker (and its schedules).

    Args:
        offload_app: whose broker to show and steer; its schedules fill the schedules page.
        token: a secret that signs a user in (Bearer header, Basic password, sign-in form).
        basic: `(user, password)` for HTTP Basic.
        authorize: the host application's check when mounted (`request.user` and so on);
            True lets the request read and act.
        read_only: refuse every action, whoever asks.
        title: shown in every page's header.

    With none of `token`, `basic`, `authorize`, the dashboard is read-only: actions need
    someone to be accountable for them.
    """
    env = Environment(
        loader=FileSystemLoader(str(_HERE / "templates")),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ts"] = _fmt_time
    env.filters["age"] = _fmt_age
    env.filters["pretty"] = dumps_pretty
    env.filters["compact"] = lambda value: json.dumps(value, ensure_ascii=False)
    env.globals["STATES"] = STATES
    env.globals.update(SPARK_W=SPARK_W, SPARK_H=SPARK_H)
    access = Access(token=token, basic=basic, authorize=authorize, read_only=read_only)
    routes = [
        Route("/", pages.overview_page, name="overview"),
        Route("/jobs", pages.jobs_page, name="jobs"),
        Route("/jobs/{job_id}", pages.job_page, name="job"),
        Route("/dead", pages.dead_page, name="dead"),
        Route("/schedules", pages.schedules_page, name="schedules"),
        Route("/workers", pages.workers_page, name="workers"),
        Route("/login", pages.login_page, name="login"),
        Route("/login", actions.login, methods=["POST"]),
        Route("/logout", actions.logout, methods=["POST"], name="logout"),
        Route("/jobs/{job_id}/cancel", actions.cancel_job, methods=["POST"]),
        Route("/jobs/{job_id}/replay", actions.replay_job, methods=["POST"]),
        Route("/jobs/{job_id}/replay-edited", actions.replay_edited, methods=["POST"]),
        Route("/jobs/{job_id}/purge", actions.purge_job, methods=["POST"]),
        Route("/dead/replay", actions.replay_dead, methods=["POST"]),
        Route("/dead/purge", actions.purge_dead, methods=["POST"]),
        Route("/queues/{name:path}/pause", actions.pause_queue, methods=["POST"]),
        Route("/queues/{name:path}/resume", actions.resume_queue, methods=["POST"]),
        Route("/schedules/{name:path}/pause", actions.pause_schedule, methods=["POST"]),
        Route("/schedules/{name:path}/resume", actions.resume_schedule, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={ConfigurationError: _not_on_this_broker},
    )
    app.state.dashboard = Dashboard(offload_app, access, env, title)
    return app


async def _not_on_this_broker(request: Request, exc: Exception) -> Response:
    """A page the broker cannot answer (a message queue without a state store cannot
    look jobs up): say so, and which setting would give it, instead of a server error."""
    heading = "Not available on this broker"
    return dashboard(request).render(
        request, "message.html", 501, heading=heading, message=str(exc)
    )


def _fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"
