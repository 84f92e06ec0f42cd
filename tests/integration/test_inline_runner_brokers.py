"""The inline runner (`app.testing(url)`) on a server broker: what it opens, it closes."""

from __future__ import annotations

import gc
import warnings

from offload import Offload


def test_a_runner_on_a_server_broker_closes_every_connection_it_opened(redis_url: str) -> None:
    """Redis is loop-bound: the sync methods' loop and the portal's each hold their own
    connections, and each must be closed on its own loop (a connection closed from
    another loop is left open, and reported unclosed when collected)."""
    app = Offload("memory://")

    @app.task
    async def ping() -> str:
        return "pong"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with app.testing(redis_url) as t:
            job = ping.enqueue()
            assert t.drain() == 1
            assert job.result() == "pong"  # the portal's connections too
        gc.collect()
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []
    app.close()


async def test_an_async_runner_closes_the_portals_connections_on_the_portals_loop(
    redis_url: str,
) -> None:
    """An async test's runner closed the portal's connections (opened by a sync call
    such as `job.state()`) from the test's loop, which left them open."""
    app = Offload("memory://")

    @app.task
    async def ping() -> str:
        return "pong"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        async with app.testing(redis_url) as t:
            job = await ping.enqueue_async()
            assert await t.drain_async() == 1
            assert job.state() == "succeeded"  # sync: the portal's own connections
        gc.collect()
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []
    app.close()
