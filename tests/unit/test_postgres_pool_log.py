"""psycopg_pool's "discarding ... connection" warnings: dropped for offload's own pool
code (the broker says a cut connection once), kept for an application's pools."""

from __future__ import annotations

import logging

import pytest

from offload.brokers.postgres._pool_log import own_pool


def test_discard_warnings_are_dropped_inside_offloads_pool_code_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool_logger = logging.getLogger("psycopg.pool")
    with caplog.at_level(logging.INFO, logger="psycopg.pool"):
        with own_pool():
            pool_logger.warning("discarding broken connection: %s", "<conn 1>")
            pool_logger.warning("error resetting connection: %s", "boom")  # kept
        pool_logger.warning("discarding closed connection: %s", "<the app's conn>")
    assert [r.getMessage() for r in caplog.records] == [
        "error resetting connection: boom",
        "discarding closed connection: <the app's conn>",
    ]
