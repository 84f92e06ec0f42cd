"""Time as a dependency, so leases, delays and expiry are testable without sleeping.

Brokers and workers read the time only through a `Clock`. Production code uses
`SystemClock`; tests use `offload.testing.FakeClock` and move it forward by hand.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> float:
        """Current time as Unix epoch seconds."""
        ...


class SystemClock:
    """Wall-clock time (`time.time()`)."""

    def now(self) -> float:
        return time.time()
