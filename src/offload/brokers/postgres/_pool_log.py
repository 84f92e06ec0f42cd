"""psycopg_pool's warnings about the connections it discards, when the pool is ours.

The broker says a cut connection itself, once (README, Guarantees: a cut connection that
the next call gets past is one info line; an outage is one warning). psycopg_pool adds
a WARNING for each dead connection it then discards, three or more per cut. Those made
while offload's pool code runs (`own_pool()`: a context variable set around it, which the
pool's own tasks inherit when the pool is opened inside it) are dropped; an
application's own psycopg pools in the same process keep theirs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["own_pool"]

_OURS: ContextVar[bool] = ContextVar("offload_postgres_pool", default=False)


class _Said(logging.Filter):
    """Drops psycopg_pool's "discarding ... connection" records made inside `own_pool()`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_OURS.get() and record.getMessage().startswith("discarding "))


_SAID = _Said()


@contextmanager
def own_pool() -> Iterator[None]:
    """Mark the code inside as offload's pool code (and install the filter on
    psycopg_pool's logger again, if a logging reconfiguration dropped it)."""
    logger = logging.getLogger("psycopg.pool")
    if _SAID not in logger.filters:
        logger.addFilter(_SAID)
    token = _OURS.set(True)
    try:
        yield
    finally:
        _OURS.reset(token)
