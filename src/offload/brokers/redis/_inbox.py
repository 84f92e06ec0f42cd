"""Whether a producer may put jobs into a queue's inbox: the rolling-upgrade gate.

A lean one-call enqueue (`scripts/enqueue_one.lua`) leaves a job in the queue's inbox
list (`scripts/_inbox.lua`), which only scripts of this version drain. A worker of an
older version would neither reserve those jobs nor count them. So each worker of this
version says so in the worker registry (`INBOX_FLAG` in its `WorkerInfo.extra`, set by
`RedisBroker.register_worker`), and a producer uses the inbox only while every live
worker has the flag; with no live worker it may (the first worker of any version to
start is then the one to mind: see README, "Upgrading").

The producer reads the registry at most every `REFRESH_S` seconds (one extra script
call per producer per interval, none per job); a read that fails closes the gate for
`RETRY_S` (the job takes the full path, which every version reads).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

__all__ = ["INBOX_FLAG", "REFRESH_S", "RETRY_S", "InboxGate"]

#: The key a worker of this version sets to 1 in its registration's `extra`.
INBOX_FLAG = "redis_inbox"
#: Seconds a producer trusts its last read of the registry: how long after an older
#: worker starts its producers may still fill inboxes (that worker then leaves those
#: jobs to the newer ones, which run them).
REFRESH_S = 5.0
#: Seconds the gate stays closed after a failed read of the registry.
RETRY_S = 1.0


def supports_inbox(raw: bytes | str) -> bool:
    """Whether one registration (the registry's JSON) carries the flag."""
    try:
        info = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return False
    extra = info.get("extra") if isinstance(info, dict) else None
    return isinstance(extra, dict) and extra.get(INBOX_FLAG) == 1


class InboxGate:
    """The last answer and until when (monotonic seconds) it holds; shared by threads
    (a race only reads the registry twice)."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        # (allowed, until): one tuple, replaced whole, so a reader on another thread
        # sees an answer with its own deadline without a lock (read on every enqueue).
        self._state: tuple[bool, float] = (False, float("-inf"))

    def cached(self) -> bool | None:
        """The answer if it is still fresh, else None (read the registry: `learn`)."""
        allowed, until = self._state
        return allowed if self._monotonic() < until else None

    def learn(self, registrations: Sequence[Any]) -> bool:
        """Open the gate iff every live worker's registration carries the flag."""
        allowed = all(supports_inbox(raw) for raw in registrations)
        self._state = (allowed, self._monotonic() + REFRESH_S)
        return allowed

    def failed(self) -> bool:
        """The registry could not be read: closed for `RETRY_S`."""
        self._state = (False, self._monotonic() + RETRY_S)
        return False

    def reset(self) -> None:
        """Forget the last answer: the next call reads the registry."""
        self._state = (False, float("-inf"))
