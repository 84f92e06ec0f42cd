"""The Flask example, tested twice: in process with Flask's test client and the inline
runner (how to test your own views and tasks, no worker, no sleeping), and end to end
with Flask's server and `offload worker` as real processes, over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from subprocess import Popen

import httpx
import pytest
from flask.testing import FlaskClient

from conftest import free_port, poll_until_ended, wait_until_serving
from flask_app.web import create_app
from offload.testing import InlineRunner


@pytest.fixture
def client(offload_runner: InlineRunner) -> FlaskClient:
    return create_app().test_client()


def test_report_is_enqueued_then_run_by_the_inline_runner(
    client: FlaskClient, offload_runner: InlineRunner
) -> None:
    created = client.post("/reports", json={"numbers": [1, 2, 3, 4]})
    assert created.status_code == 202
    location = created.headers["Location"]
    assert client.get(location).json == {"id": location.split("/")[-1], "state": "queued",
                                         "attempt": 0}  # fmt: skip

    assert offload_runner.drain() == 1

    body = client.get(location).json
    assert body is not None and body["state"] == "succeeded"
    assert body["result"] == {"count": 4, "sum": 10.0, "mean": 2.5}


def test_bad_input_ends_dead_and_the_view_shows_why(
    client: FlaskClient, offload_runner: InlineRunner
) -> None:
    assert client.post("/reports", json={"numbers": "1,2"}).status_code == 400
    location = client.post("/reports", json={"numbers": []}).headers["Location"]
    offload_runner.drain()
    body = client.get(location, query_string={"wait": 1}).json
    assert body is not None and body["state"] == "dead" and body["attempt"] == 1
    assert body["error"]["type"].endswith("ValueError")
    assert body["error"]["message"].endswith("no numbers to summarize")


def test_flask_server_and_a_worker_process_serve_reports_end_to_end(
    spawn: Callable[..., Popen[bytes]], tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    spawn("worker", "-m", "offload", "worker", "flask_app.tasks:app", "--concurrency", "4")
    server = spawn("web", "-m", "flask", "--app", "flask_app.web", "run", "--port", str(port))
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
