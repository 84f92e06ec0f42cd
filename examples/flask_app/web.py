"""Flask and offload: an app factory that registers the offload app as an extension,
a helper that gives it to views, a POST that enqueues (sync) and answers 202 at once,
and a GET that reports the job's state, result or error (`job.result(timeout=...)`).

    flask --app flask_app.web run        # from examples/, beside a worker:
    offload worker flask_app.tasks:app

Flask has no shutdown hook, and none is needed: an enqueue is durable when it returns,
and offload's connections close with the process.
"""

from __future__ import annotations

import contextlib
from typing import Any

from flask import Blueprint, Flask, current_app, request

from flask_app.tasks import app as offload_app
from flask_app.tasks import summarize
from offload import JobError, JobNotFound, JobState, Offload

#: Longest a GET may wait for a job to finish (`?wait=`), seconds.
MAX_WAIT_S = 30.0

reports = Blueprint("reports", __name__)


def create_app() -> Flask:
    web = Flask(__name__)
    web.extensions["offload"] = offload_app
    web.register_blueprint(reports)
    return web


def get_offload() -> Offload:
    """The app, for views that look jobs up (`offload.job(id)`)."""
    offload: Offload = current_app.extensions["offload"]
    return offload


@reports.post("/reports")
def create_report() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Enqueue the work and answer at once; the client polls the Location."""
    numbers = (request.get_json(silent=True) or {}).get("numbers")
    if not isinstance(numbers, list) or not all(isinstance(n, int | float) for n in numbers):
        return {"error": "give a JSON body {'numbers': [...]}"}, 400, {}
    job = summarize.enqueue(numbers)  # sync: returns once the job is stored
    return {"id": job.id}, 202, {"Location": f"/reports/{job.id}"}


@reports.get("/reports/<job_id>")
def get_report(job_id: str) -> tuple[dict[str, Any], int]:
    """The job's state; its result once succeeded, its error once dead.

    `?wait=S` holds the request until the job ends or S seconds pass (at most
    `MAX_WAIT_S`; a worker thread of the server waits meanwhile). Job ids are
    unguessable, but not a permission: a real app checks that the job belongs to the
    caller."""
    job = get_offload().job(job_id)
    wait = min(request.args.get("wait", 0.0, type=float), MAX_WAIT_S)
    try:
        if wait > 0:
            with contextlib.suppress(JobError):  # unfinished, failed, ...: see below
                job.result(timeout=wait)
        info = job.info()
    except JobNotFound:
        return {"error": f"no job {job_id}"}, 404
    body: dict[str, Any] = {"id": job_id, "state": info.state, "attempt": info.attempt}
    if info.state is JobState.SUCCEEDED:
        body["result"] = info.result_value()
    if info.error is not None:  # dead, or failed once and waiting for its retry
        body["error"] = {"type": info.error.type, "message": info.error.message}
    return body, 200
