"""The dashboard's actions (POST): cancel, replay, replay with edited arguments, purge,
sign in and out.

Each one first passes `_permit`: actions enabled (credentials configured, not
read-only), the request signed in, and its CSRF token matching. Then it makes one
broker call and redirects (303) to a page that shows the outcome, so a reload never
repeats it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from offload import pausing
from offload.brokers.base import Broker
from offload.dashboard.pages import dashboard, guard, redirect
from offload.dashboard.security import (
    CSRF_FIELD,
    SESSION_COOKIE,
    check_csrf,
    same_secret,
    session_value,
)
from offload.envelope import JobState, new_job_id
from offload.errors import OffloadError
from offload.validation import checked, duration

__all__ = [
    "cancel_job",
    "pause_queue",
    "pause_schedule",
    "login",
    "logout",
    "purge_dead",
    "purge_job",
    "replay_dead",
    "replay_edited",
    "replay_job",
    "resume_queue",
    "resume_schedule",
]

#: Dead jobs read per page while collecting those a task filter selects.
_COLLECT_PAGE = 500


async def _permit(request: Request) -> tuple[FormData, Response | None]:
    """The form, and None if the action may go ahead; else the refusal to send."""
    d = dashboard(request)
    form = await request.form()
    why = None
    if d.access.read_only:
        why = "This dashboard is read-only."
    elif not d.access.guarded:
        why = (
            "Actions are disabled: no credentials are configured. Start the dashboard "
            "with --token or --basic-auth (or pass authorize= when mounting it)."
        )
    if why is not None:
        return form, d.render(request, "message.html", 403, heading="Forbidden", message=why)
    if (refused := await guard(request)) is not None:
        return form, refused
    submitted = form.get(CSRF_FIELD)
    why = check_csrf(request, submitted if isinstance(submitted, str) else None)
    if why is not None:
        return form, d.render(request, "message.html", 403, heading="Forbidden", message=why)
    return form, None


def _back(form: FormData, default: str) -> str:
    """Where to go after the action: the form's `next`, if it is a dashboard path (never
    `//host` or `/\\host`, which a browser reads as another site)."""
    target = form.get("next")
    if isinstance(target, str) and target.startswith("/") and not target.startswith("//"):
        if "\\" not in target:
            return target
    return default


async def _on_job(
    request: Request, act: Callable[[Broker, str], Awaitable[tuple[str, int]]]
) -> Response:
    form, refused = await _permit(request)
    if refused is not None:
        return refused
    job_id = request.path_params["job_id"]
    broker = await dashboard(request).offload.connected_broker()
    code, n = await act(broker, job_id)
    return redirect(request, _back(form, f"/jobs/{job_id}"), notice=code, n=n)


async def cancel_job(request: Request) -> Response:
    async def act(broker: Broker, job_id: str) -> tuple[str, int]:
        done = await broker.cancel(job_id)
        return ("cancelled", 1) if done else ("not-cancelled", 0)

    return await _on_job(request, act)


async def replay_job(request: Request) -> Response:
    async def act(broker: Broker, job_id: str) -> tuple[str, int]:
        return "replayed", await broker.replay_dead(job_ids=[job_id])

    return await _on_job(request, act)


async def purge_job(request: Request) -> Response:
    form, refused = await _permit(request)
    if refused is not None:
        return refused
    broker = await dashboard(request).offload.connected_broker()
    n = await broker.purge_dead(job_ids=[request.path_params["job_id"]])
    return redirect(request, _back(form, "/dead"), notice="purged", n=n)


async def replay_edited(request: Request) -> Response:
    """Replay a dead job with arguments edited on its page: a new job (new id, attempts
    from zero) with the same task, queue and options, then the dead one is purged.

    The copy is stored first, so a failure in between leaves two jobs, never none. It
    carries no idempotency key: the dead job holds that key until it is purged. When
    the dashboard's app knows the task (`--app`), the edited arguments must fit its
    signature, as at enqueue: a misfit would only burn the copy's attempts and bury
    it again."""
    form, refused = await _permit(request)
    if refused is not None:
        return refused
    d = dashboard(request)
    broker = await d.offload.connected_broker()
    job_id = request.path_params["job_id"]
    info = await broker.get_job(job_id)
    envelope = None if info is None else info.envelope()
    if info is None or envelope is None or info.state is not JobState.DEAD:
        return d.render(request, "message.html", 409, heading="Cannot replay",
                        message=f"Job {job_id} is not a readable dead job.")  # fmt: skip
    try:
        args, kwargs = _edited(form)
        if (task := d.offload.tasks.get(envelope.task)) is not None:
            task.check_arguments(args, kwargs)
        copy = msgspec.structs.replace(
            envelope, id=new_job_id(), args=args, kwargs=kwargs, key=None,
            not_before=None, created_at=time.time(),
        )  # fmt: skip
        await broker.enqueue([checked(copy)])
    except (ValueError, OffloadError) as exc:
        return d.render(request, "message.html", 400, heading="Bad arguments", message=str(exc))
    await broker.purge_dead(job_ids=[job_id])
    return redirect(request, f"/jobs/{copy.id}", notice="replayed-edited")


def _edited(form: FormData) -> tuple[list[Any], dict[str, Any]]:
    """The form's `args` (a JSON list) and `kwargs` (a JSON object).

    Raises:
        ValueError: either is not valid JSON of its kind, naming which.
    """
    raw_args, raw_kwargs = form.get("args") or "[]", form.get("kwargs") or "{}"
    try:
        args = json.loads(str(raw_args))
    except json.JSONDecodeError as exc:
        raise ValueError(f"args is not JSON: {exc}") from None
    try:
        kwargs = json.loads(str(raw_kwargs))
    except json.JSONDecodeError as exc:
        raise ValueError(f"kwargs is not JSON: {exc}") from None
    if not isinstance(args, list):
        raise ValueError('args must be a JSON list, e.g. ["a", 1]')
    if not isinstance(kwargs, dict):
        raise ValueError('kwargs must be a JSON object, e.g. {"name": "a"}')
    return args, kwargs


async def _selected(broker: Broker, form: FormData) -> tuple[str | None, list[str] | None]:
    """The dead jobs a bulk action applies to: `(queue, ids)`; ids None means every
    dead job of the queue (or of every queue). `scope=selected` takes the ticked boxes
    (`job_id`, none ticked: nothing); `scope=all` takes every dead job matching the
    filter, and a task filter collects the matching ids first."""
    queue = str(form.get("queue") or "") or None
    if form.get("scope") != "all":
        return queue, [str(v) for v in form.getlist("job_id") if v]
    task = str(form.get("task") or "").strip()
    if not task:
        return queue, None
    ids: list[str] = []
    cursor = None
    while True:
        page = await broker.list_jobs(
            queue=queue, state=JobState.DEAD, limit=_COLLECT_PAGE, cursor=cursor
        )
        ids += [j.id for j in page.items if j.task == task]
        if page.cursor is None:
            return queue, ids
        cursor = page.cursor


async def replay_dead(request: Request) -> Response:
    form, refused = await _permit(request)
    if refused is not None:
        return refused
    broker = await dashboard(request).offload.connected_broker()
    queue, ids = await _selected(broker, form)
    n = 0 if ids == [] else await broker.replay_dead(queue, ids)
    return redirect(request, _back(form, "/dead"), notice="replayed", n=n)


async def purge_dead(request: Request) -> Response:
    form, refused = await _permit(request)
    if refused is not None:
        return refused
    d = dashboard(request)
    broker = await d.offload.connected_broker()
    older = str(form.get("older_than_h") or "").strip()
    try:
        older_than = duration(float(older) * 3600, "older than") if older else None
    except (ValueError, OffloadError):  # NaN is no age: SQLite read it as no cutoff at all
        why = f"older than: not a number of hours, 0 or more: {older!r}"
        return d.render(request, "message.html", 400, heading="Bad input", message=why)
    queue, ids = await _selected(broker, form)
    n = 0 if ids == [] else await broker.purge_dead(queue, ids, older_than=older_than)
    return redirect(request, _back(form, "/dead"), notice="purged", n=n)


async def pause_queue(request: Request) -> Response:
    return await _flag(request, "queue", paused=True)


async def resume_queue(request: Request) -> Response:
    return await _flag(request, "queue", paused=False)


async def pause_schedule(request: Request) -> Response:
    return await _flag(request, "schedule", paused=True)


async def resume_schedule(request: Request) -> Response:
    return await _flag(request, "schedule", paused=False)


async def _flag(request: Request, kind: str, *, paused: bool) -> Response:
    """Pause or resume a queue or a schedule, fleet-wide and durably (`offload.pausing`)."""
    form, refused = await _permit(request)
    if refused is not None:
        return refused
    d = dashboard(request)
    broker = await d.offload.connected_broker()
    name = request.path_params["name"]
    setter = pausing.set_queue if kind == "queue" else pausing.set_schedule
    try:
        changed = await setter(broker, name, paused)
    except OffloadError as exc:
        return d.render(request, "message.html", 400, heading="Bad name", message=str(exc))
    code = ("paused" if paused else "resumed") if changed else "unchanged"
    default = "/" if kind == "queue" else "/schedules"
    return redirect(request, _back(form, default), notice=code)


async def login(request: Request) -> Response:
    """Exchange the token for a session cookie (an HMAC of it, `HttpOnly`, `Strict`)."""
    d = dashboard(request)
    form = await request.form()
    submitted = form.get(CSRF_FIELD)
    why = check_csrf(request, submitted if isinstance(submitted, str) else None)
    token = d.access.token
    if why is None and (not token or not same_secret(str(form.get("token") or ""), token)):
        why = "That token is not the dashboard's."
    if why is not None or token is None:
        return d.render(request, "login.html", 403, error=why or "No token is configured.")
    response = redirect(request, "/", notice="signed-in")
    response.set_cookie(
        SESSION_COOKIE, session_value(token), httponly=True, samesite="strict",
        path=request.scope.get("root_path", "") or "/",
    )  # fmt: skip
    return response


async def logout(request: Request) -> Response:
    form = await request.form()
    submitted = form.get(CSRF_FIELD)
    why = check_csrf(request, submitted if isinstance(submitted, str) else None)
    if why is not None:
        d = dashboard(request)
        return d.render(request, "message.html", 403, heading="Forbidden", message=why)
    response = redirect(request, "/login", notice="signed-out")
    response.delete_cookie(SESSION_COOKIE, path=request.scope.get("root_path", "") or "/")
    return response
