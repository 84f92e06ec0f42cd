"""How a failed attempt is turned into a retry delay or a burial.

The policy lives here, once, above every broker: brokers only store `scheduled` with a
`not_before` time, or `dead` with a reason.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from offload.envelope import Backoff
from offload.errors import RETRY_NO_REASON, Bury, Retry

__all__ = ["DEFAULT_BACKOFF", "RetryDecision", "RetryPolicy", "backoff_delay"]

#: Defaults: first retry within 1 s, doubling, never more than 5 minutes apart.
DEFAULT_BACKOFF = Backoff(base_s=1.0, cap_s=300.0, jitter=True)


def backoff_delay(backoff: Backoff, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based).

    `base * 2**(attempt-1)`, capped at `cap`, then with full jitter drawn uniformly
    from [0, that bound].
    """
    exponent = min(max(attempt - 1, 0), 64)  # 2**64 s already exceeds any sane cap
    bound = min(backoff.cap_s, backoff.base_s * 2.0**exponent)
    if not backoff.jitter:
        return bound
    return (rng or random).uniform(0.0, bound)


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """`delay_s is None` means bury; otherwise retry after `delay_s` seconds."""

    delay_s: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Which exceptions retry, and how long to wait.

    Args:
        retry_on: exception types that cause a retry (default: any `Exception`).
        give_up_on: exception types that bury at once, even if they match `retry_on`.
    """

    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up_on: tuple[type[BaseException], ...] = field(default=())

    def decide(
        self, exc: BaseException, *, attempt: int, max_attempts: int, backoff: Backoff
    ) -> RetryDecision:
        """Decide what happens after `exc` ended attempt number `attempt`."""
        if isinstance(exc, Bury):
            return RetryDecision(None, exc.reason or "buried by handler")
        if attempt >= max_attempts:
            return RetryDecision(None, f"attempts exhausted ({attempt}/{max_attempts})")
        if isinstance(exc, Retry):
            delay = exc.delay if exc.delay is not None else backoff_delay(backoff, attempt)
            return RetryDecision(max(delay, 0.0), exc.reason or RETRY_NO_REASON)
        if _matches(exc, self.give_up_on) or not _matches(exc, self.retry_on):
            return RetryDecision(None, f"{_type_name(exc)} is not retryable")
        return RetryDecision(backoff_delay(backoff, attempt), _type_name(exc))


def _matches(exc: BaseException, types: tuple[type[BaseException], ...]) -> bool:
    """isinstance; for an error carried back from a child process, a match by class
    name against the original exception's MRO."""
    remote_mro: list[str] | None = getattr(exc, "remote_mro", None)
    if remote_mro is None:
        return isinstance(exc, types)
    return any(t.__name__ in remote_mro for t in types)


def _type_name(exc: BaseException) -> str:
    return str(getattr(exc, "type_name", type(exc).__name__))
