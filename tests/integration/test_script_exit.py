"""A script that enqueues and simply ends, on every durable broker: it exits cleanly and
quietly (closing its broker at exit fails with nothing, not even at debug level: a
PostgreSQL pool left open made a loaded machine wait and warn), and its jobs are stored
(issue 10.12)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from offload import Offload

SYNC_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from offload import Offload, ResultTimeout

    logging.basicConfig()  # closing the broker at exit logs its failures at debug
    logging.getLogger("offload").setLevel(logging.DEBUG)

    app = Offload(sys.argv[1])

    @app.task(name="send")
    def send(n: int) -> int:
        return n

    jobs = [send.enqueue(n) for n in range(5)]
    jobs.append(app.options("send", queue="other").enqueue(5))
    print(jobs[0].info().state)  # inspection goes through the portal on every broker
    try:
        jobs[0].result(timeout=0.2)  # a wait subscribes to the broker's wake-ups
    except ResultTimeout:
        pass
    """
)

ASYNC_SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, sys
    from offload import Offload

    logging.basicConfig()
    logging.getLogger("offload").setLevel(logging.DEBUG)

    app = Offload(sys.argv[1])

    @app.task(name="send")
    def send(n: int) -> int:
        return n

    async def main() -> None:
        for n in range(5):
            await send.enqueue_async(n)
        await app.options("send", queue="other").enqueue_async(5)

    asyncio.run(main())
    """
)


def stored(url: str) -> int:
    async def count() -> int:
        app = Offload(url)
        try:
            counts = await (await app.connected_broker()).counts()
        finally:
            await app.aclose()
        return sum(sum(c.states.values()) for c in counts.values())

    return asyncio.run(count())


@pytest.mark.parametrize("script", [SYNC_SCRIPT, ASYNC_SCRIPT], ids=["sync", "async"])
@pytest.mark.parametrize("name", ["sqlite", "postgres", "redis", "amqp_sqlite", "amqp_postgres"])
def test_a_script_that_enqueues_and_ends_exits_quietly_with_its_jobs_stored(
    name: str, script: str, broker_url: Callable[[str], str], tmp_path: Path
) -> None:
    url = broker_url(name)
    path = tmp_path / "script.py"
    path.write_text(script)
    for _ in range(3):  # the noise was intermittent on Redis
        done = subprocess.run(
            [sys.executable, str(path), url], capture_output=True, text=True, timeout=60
        )
        assert done.stderr == ""
        assert done.returncode == 0
    assert stored(url) == 18
