"""FastAPI and offload: the lifespan opens and closes the app's broker, a dependency
gives the app to endpoints, a POST enqueues and answers 202 at once, and a GET reports
the job's state, result or error.

    uvicorn fastapi_app.web:api          # from examples/, beside a worker:
    offload worker fastapi_app.tasks:app
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from pydantic import BaseModel

from fastapi_app.tasks import app as offload_app
from fastapi_app.tasks import summarize
from offload import JobError, JobNotFound, JobState, Offload

#: Longest a GET may wait for a job to finish (`?wait=`), seconds.
MAX_WAIT_S = 30.0


@contextlib.asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    # Connect now, so a wrong OFFLOAD_URL fails the start-up, not the first request;
    # close on shutdown (connections belong to this server's event loop).
    await offload_app.connected_broker()
    api.state.offload = offload_app
    try:
        yield
    finally:
        await offload_app.aclose()


api = FastAPI(title="offload + FastAPI example", lifespan=lifespan)


def get_offload(request: Request) -> Offload:
    """The app, for endpoints that look jobs up (`offload.job(id)`)."""
    offload: Offload = request.app.state.offload
    return offload


OffloadDep = Annotated[Offload, Depends(get_offload)]


class ReportRequest(BaseModel):
    numbers: list[float]


@api.post("/reports", status_code=202)
async def create_report(body: ReportRequest, response: Response) -> dict[str, str]:
    """Enqueue the work and answer at once; the client polls the Location."""
    job = await summarize.enqueue_async(body.numbers)
    response.headers["Location"] = f"/reports/{job.id}"
    return {"id": job.id}


@api.get("/reports/{job_id}")
async def get_report(job_id: str, offload: OffloadDep, wait: float = 0.0) -> dict[str, Any]:
    """The job's state; its result once succeeded, its error once dead.

    `?wait=S` holds the request until the job ends or S seconds pass (at most
    `MAX_WAIT_S`), instead of the client polling. Job ids are unguessable, but not a
    permission: a real app checks that the job belongs to the caller."""
    job = offload.job(job_id)
    try:
        if wait > 0:
            with contextlib.suppress(JobError):  # unfinished, failed, ...: see below
                await job.result_async(timeout=min(wait, MAX_WAIT_S))
        info = await job.info_async()
    except JobNotFound:
        raise HTTPException(status_code=404, detail=f"no job {job_id}") from None
    body: dict[str, Any] = {"id": job_id, "state": info.state, "attempt": info.attempt}
    if info.state is JobState.SUCCEEDED:
        body["result"] = info.result_value()
    if info.error is not None:  # dead, or failed once and waiting for its retry
        body["error"] = {"type": info.error.type, "message": info.error.message}
    return body
