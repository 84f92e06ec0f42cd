"""The FastAPI example, tested twice: in process with the inline runner (how to test
your own endpoints and tasks, no worker, no sleeping), and end to end with uvicorn and
`offload worker` as real processes, over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from subprocess import Popen

import httpx
import pytest

from conftest import free_port, poll_until_ended, wait_until_serving
from fastapi_app.web import api
from offload.testing import InlineRunner


@pytest.fixture
async def client(offload_runner: InlineRunner) -> AsyncIterator[httpx.AsyncClient]:
    """The API in process, its lifespan run around the test, on the runner's broker."""
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def test_report_is_enqueued_then_run_by_the_inline_runner(
    client: httpx.AsyncClient, offload_runner: InlineRunner
) -> None:
    created = await client.post("/reports", json={"numbers": [1, 2, 3, 4]})
    assert created.status_code == 202
    location = created.headers["location"]
    assert (await client.get(location)).json()["state"] == "queued"

    assert await offload_runner.drain_async() == 1

    body = (await client.get(location)).json()
    assert body["state"] == "succeeded"
    assert body["result"] == {"count": 4, "sum": 10.0, "mean": 2.5}


async def test_bad_input_ends_dead_and_the_endpoint_shows_why(
    client: httpx.AsyncClient, offload_runner: InlineRunner
) -> None:
    location = (await client.post("/reports", json={"numbers": []})).headers["location"]
    await offload_runner.drain_async()
    body = (await client.get(location)).json()
    assert body["state"] == "dead" and body["attempt"] == 1  # give_up_on: no retry
    assert body["error"]["type"].endswith("ValueError")
    assert body["error"]["message"].endswith("no numbers to summarize")
    await client.post("/reports", json={"numbers": []})
    with pytest.raises(ValueError, match="no numbers"):  # or have it raised in the test
        await offload_runner.drain_async(raise_errors=True)


async def test_unknown_job_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/reports/0123456789abcdef")).status_code == 404


def test_uvicorn_and_a_worker_process_serve_reports_end_to_end(
    spawn: Callable[..., Popen[bytes]], tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    spawn("worker", "-m", "offload", "worker", "fastapi_app.tasks:app", "--concurrency", "4")
    server = spawn("web", "-m", "uvicorn", "fastapi_app.web:api", "--port", str(port))
    wait_until_serving(base, server, tmp_path / "web.log")

    with httpx.Client(base_url=base, timeout=30) as http:
        ok = http.post("/reports", json={"numbers": [2, 4, 9]})
        bad = http.post("/reports", json={"numbers": []})
        assert ok.status_code == bad.status_code == 202
        done = poll_until_ended(http, ok.headers["location"])
        assert done["state"] == "succeeded", done
        assert done["result"] == {"count": 3, "sum": 15.0, "mean": 5.0}
        failed = poll_until_ended(http, bad.headers["location"])
        assert failed["state"] == "dead", failed
        assert failed["error"]["message"].endswith("no numbers to summarize")
        assert http.get("/reports/0123456789abcdef").status_code == 404
