"""The dashboard's pages (GET): overview, jobs, one job, dead letters, schedules, workers.

Each handler reads through the public `Broker` inspection API (see `queries.py`) and
renders a template; none changes anything, so none needs a CSRF token.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from offload import pausing
from offload.attempts import job_with_history
from offload.dashboard.queries import (
    WINDOW_MIN,
    JobFilter,
    busy_workers,
    consuming_workers,
    list_filtered,
    overview,
    parse_time,
    schedule_rows,
    workflow_tree,
)
from offload.dashboard.state import dashboard, notice
from offload.envelope import JobState
from offload.errors import ConfigurationError

__all__ = [
    "dashboard",
    "dead_page",
    "guard",
    "job_page",
    "jobs_page",
    "login_page",
    "notice",
    "overview_page",
    "redirect",
    "schedules_page",
    "workers_page",
]

PAGE_SIZE = 50


def redirect(request: Request, path: str, **query: str | int) -> Response:
    """303 to `path` inside the dashboard (its prefix added), with a notice code."""
    from urllib.parse import urlencode

    target = request.scope.get("root_path", "") + path
    if query:
        target += ("&" if "?" in target else "?") + urlencode(query)
    return RedirectResponse(target, status_code=303)


async def guard(request: Request) -> Response | None:
    """None if `request` may read; else the response that asks it to sign in."""
    d = dashboard(request)
    if await d.access.allows(request):
        return None
    if d.access.uses_basic:
        return Response(
            "sign in to see the dashboard",
            status_code=401,
            headers={"WWW-Authenticate": 'Basic realm="offload", charset="UTF-8"'},
        )
    if d.access.token:
        return redirect(request, "/login")
    return d.render(request, "message.html", 403, heading="Forbidden",
                    message="The host application did not let this request in.")  # fmt: skip


async def overview_page(request: Request) -> Response:
    if (refused := await guard(request)) is not None:
        return refused
    d = dashboard(request)
    broker = await d.offload.connected_broker()
    stats = await broker.counts()
    registry = True
    try:
        workers = await broker.workers()
    except ConfigurationError:  # a delivery without a state store keeps no registry:
        workers, registry = [], False  # "not known", not "0 workers alive"
    now = time.time()
    rows = overview(stats, now, await broker.finished(now - WINDOW_MIN * 60))
    totals = {s: sum(r.states[s] for r in rows) for s in JobState}
    held = await pausing.paused(broker)
    return d.render(request, "overview.html", rows=rows, totals=totals, workers=workers,
                    registry=registry, busy=busy_workers(workers),
                    consuming=consuming_workers(workers, now), paused=held.queues)  # fmt: skip


def _job_filter(request: Request) -> tuple[JobFilter, list[str]]:
    """The filters in the query string, and a message per bad one."""
    q = request.query_params
    errors: list[str] = []
    state: JobState | None = None
    if q.get("state"):
        try:
            state = JobState(q["state"])
        except ValueError:
            errors.append(f"unknown state {q['state']!r}")
    times: list[float | None] = []
    for name in ("since", "until"):
        try:
            times.append(parse_time(q.get(name)))
        except ValueError as exc:
            errors.append(f"{name}: {exc}")
            times.append(None)
    f = JobFilter(
        queue=q.get("queue") or None,
        state=state,
        task=(q.get("task") or "").strip() or None,
        key=q.get("key") or None,
        since=times[0],
        until=times[1],
    )
    return f, errors


async def jobs_page(request: Request) -> Response:
    if (refused := await guard(request)) is not None:
        return refused
    return await _listing(request, "jobs.html", forced_state=None)


async def dead_page(request: Request) -> Response:
    if (refused := await guard(request)) is not None:
        return refused
    return await _listing(request, "dead.html", forced_state=JobState.DEAD)


async def _listing(request: Request, template: str, forced_state: JobState | None) -> Response:
    d = dashboard(request)
    f, errors = _job_filter(request)
    if forced_state is not None:
        f = JobFilter(f.queue, forced_state, f.task, f.key, f.since, f.until)
    broker = await d.offload.connected_broker()
    queues = await broker.queues()
    if errors:
        return d.render(request, template, 400, f=f, errors=errors, queues=queues, listing=None,
                        query=request.query_params)  # fmt: skip
    cursor = request.query_params.get("cursor") or None
    try:
        listing = await list_filtered(broker, f, limit=PAGE_SIZE, cursor=cursor)
    except (ValueError, OverflowError):
        if cursor is None:
            raise
        # A cursor is the broker's own mark, made by a page link: one typed or cut in
        # the address bar is a bad request, not a server error.
        errors = [f"not a cursor of this listing: {cursor[:80]!r} (start from the newest)"]
        return d.render(request, template, 400, f=f, errors=errors, queues=queues,
                        listing=None, query=request.query_params)  # fmt: skip
    return d.render(request, template, f=f, errors=[], queues=queues, listing=listing,
                    query=request.query_params)  # fmt: skip


async def job_page(request: Request) -> Response:
    if (refused := await guard(request)) is not None:
        return refused
    d = dashboard(request)
    broker = await d.offload.connected_broker()
    job_id = request.path_params["job_id"]
    info = await job_with_history(broker, job_id)
    if info is None:
        return d.render(request, "message.html", 404, heading="No such job",
                        message=f"No job {job_id} (never enqueued, or purged).")  # fmt: skip
    envelope = info.envelope()
    tree = []
    if envelope is not None and envelope.workflow_id:
        tree = workflow_tree(await broker.workflow_jobs(envelope.workflow_id, limit=200))
    result = info.result_value() if info.result is not None else None
    return d.render(request, "job.html", job=info, envelope=envelope, tree=tree,
                    result=result, has_result=info.result is not None)  # fmt: skip


async def schedules_page(request: Request) -> Response:
    if (refused := await guard(request)) is not None:
        return refused
    d = dashboard(request)
    broker = await d.offload.connected_broker()
    rows = await schedule_rows(d.offload, broker)
    held = await pausing.paused(broker)
    return d.render(request, "schedules.html", rows=rows, paused=held.schedules)


async def workers_page(request: Request) -> Response:
    if (refused := await guard(request)) is not None:
        return refused
    d = dashboard(request)
    broker = await d.offload.connected_broker()
    workers = sorted(await broker.workers(), key=lambda w: (w.hostname, w.pid))
    return d.render(request, "workers.html", workers=workers, now=time.time())


async def login_page(request: Request) -> Response:
    d = dashboard(request)
    return d.render(request, "login.html", error=None)
