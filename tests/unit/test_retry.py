"""Backoff math and the retry decision."""

from __future__ import annotations

import random

import pytest

from offload import Bury, Retry
from offload.envelope import Backoff
from offload.retry import RetryPolicy, backoff_delay

EXACT = Backoff(base_s=2.0, cap_s=60.0, jitter=False)


@pytest.mark.parametrize(("attempt", "expected"), [(1, 2.0), (2, 4.0), (3, 8.0), (5, 32.0)])
def test_backoff_doubles_from_base(attempt: int, expected: float) -> None:
    assert backoff_delay(EXACT, attempt) == expected


def test_backoff_is_capped_even_for_huge_attempts() -> None:
    assert backoff_delay(EXACT, 6) == 60.0
    assert backoff_delay(EXACT, 10_000) == 60.0


def test_full_jitter_stays_within_bound_and_spreads() -> None:
    rng = random.Random(7)
    jittered = Backoff(base_s=2.0, cap_s=60.0, jitter=True)
    delays = [backoff_delay(jittered, 3, rng) for _ in range(2000)]
    assert all(0.0 <= d <= 8.0 for d in delays)
    assert min(delays) < 1.0 and max(delays) > 7.0  # spread over the whole range
    assert 3.5 < sum(delays) / len(delays) < 4.5  # uniform: mean is half the bound


def test_decision_retries_until_attempts_run_out() -> None:
    policy = RetryPolicy()
    assert policy.decide(OSError("x"), attempt=2, max_attempts=3, backoff=EXACT).delay_s == 4.0
    last = policy.decide(OSError("x"), attempt=3, max_attempts=3, backoff=EXACT)
    assert last.delay_s is None and last.reason == "attempts exhausted (3/3)"


def test_give_up_on_wins_over_retry_on() -> None:
    policy = RetryPolicy(retry_on=(Exception,), give_up_on=(ValueError,))
    decision = policy.decide(ValueError("bad"), attempt=1, max_attempts=5, backoff=EXACT)
    assert decision.delay_s is None


def test_retry_and_bury_signals() -> None:
    policy = RetryPolicy(retry_on=())  # even with nothing retryable, Retry asks explicitly
    assert policy.decide(Retry(delay=9), attempt=1, max_attempts=5, backoff=EXACT).delay_s == 9
    assert policy.decide(Retry(), attempt=1, max_attempts=5, backoff=EXACT).delay_s == 2.0
    assert policy.decide(Retry(delay=9), attempt=5, max_attempts=5, backoff=EXACT).delay_s is None
    assert policy.decide(Bury("no"), attempt=1, max_attempts=5, backoff=EXACT).delay_s is None
