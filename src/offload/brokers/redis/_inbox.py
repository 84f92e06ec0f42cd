"""Whether a producer may put jobs into a queue's inbox: the rolling-upgrade gate.

A lean one-call enqueue (`scripts/enqueue_one.lua`) leaves a job in the queue's inbox
list (`scripts/_inbox.lua`), which only scripts of this version drain. A worker of an
older version would neither reserve those jobs nor count them. So each worker of this
version says so in the worker registry (`INBOX_FLAG` in its `WorkerInfo.extra`, set by
`RedisBroker.register_worker`, to the level it drains: `INBOX_LEVEL`), and a producer
uses the inbox only while every live worker has the flag; with no live worker it may
(the first worker of any version to start is then the one to mind: see README,
"Upgrading").

Levels: 1, the inbox; 2, also the `lent` list of jobs a lean enqueue handed to a parked
worker (`_handoff.py`). A producer lends only while every live worker is at level 2: a
level-1 worker parked on the queue would be handed a job whose record its scripts
never write, and its ack would find no lease.

The producer reads the registry at most every `REFRESH_S` seconds (one extra script
call per producer per interval, none per job); a read that fails closes the gate for
`RETRY_S` (the job takes the full path, which every version reads).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

__all__ = ["INBOX_FLAG", "INBOX_LEVEL", "REFRESH_S", "RETRY_S", "InboxGate"]

#: The key a worker of this version sets in its registration's `extra`, to the level
#: it drains.
INBOX_FLAG = "redis_inbox"
#: This version's level: inbox and `lent` list.
INBOX_LEVEL = 2
#: Seconds a producer trusts its last read of the registry: how long after an older
#: worker starts its producers may still fill inboxes (that worker then leaves those
#: jobs to the newer ones, which run them).
REFRESH_S = 5.0
#: Seconds the gate stays closed after a failed read of the registry.
RETRY_S = 1.0


def inbox_level(raw: bytes | str) -> int:
    """The level one registration (the registry's JSON) carries, 0 for none."""
    try:
        info = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return 0
    extra = info.get("extra") if isinstance(info, dict) else None
    level = extra.get(INBOX_FLAG) if isinstance(extra, dict) else None
    return level if type(level) is int and level > 0 else 0


class InboxGate:
    """The last answer (the level producers may use: 0 = the full path only) and until
    when (monotonic seconds) it holds; shared by threads (a race only reads the
    registry twice)."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        # (allowed, until): one tuple, replaced whole, so a reader on another thread
        # sees an answer with its own deadline without a lock (read on every enqueue).
        self._state: tuple[int, float] = (0, float("-inf"))

    def cached(self) -> int | None:
        """The answer if it is still fresh, else None (read the registry: `learn`)."""
        level, until = self._state
        return level if self._monotonic() < until else None

    def learn(self, registrations: Sequence[Any]) -> int:
        """The lowest level of the live workers' registrations (this version's with
        none live); 0 closes the gate."""
        level = min((inbox_level(raw) for raw in registrations), default=INBOX_LEVEL)
        level = min(level, INBOX_LEVEL)
        self._state = (level, self._monotonic() + REFRESH_S)
        return level

    def failed(self) -> int:
        """The registry could not be read: closed for `RETRY_S`."""
        self._state = (0, self._monotonic() + RETRY_S)
        return 0

    def reset(self) -> None:
        """Forget the last answer: the next call reads the registry."""
        self._state = (0, float("-inf"))
