"""offload's pytest plugin (entry point `pytest11`): fixtures for testing tasks.

pytest loads it in every run where offload is installed, so it registers two
fixtures and nothing else: no hooks, no options, nothing done until a test asks for a
fixture (loading it imports the `offload` package, about 0.2 s). `pytest -p no:offload`
turns it off.

    # conftest.py
    @pytest.fixture
    def offload_app():
        from myproject.tasks import app
        return app

    # test_signup.py
    def test_signup_sends_the_email(client, offload_runner):
        client.post("/signup", json={"email": "ada@example.com"})
        offload_runner.drain()
        assert offload_runner.jobs(state="succeeded")
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from offload.app import Offload
    from offload.testing import InlineRunner

__all__ = ["offload_app", "offload_runner"]


@pytest.fixture
def offload_app() -> Iterator[Offload]:
    """The app whose jobs `offload_runner` runs. Override it in your conftest.py to
    return your own app; by default a fresh `Offload("memory://")`, for tasks a test
    registers itself."""
    from offload.app import Offload

    app = Offload("memory://")
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def offload_runner(offload_app: Offload) -> Iterator[InlineRunner]:
    """`offload_app.testing()`, open for the test: the app's jobs go to a fresh
    `memory://` broker on a `FakeClock` (`offload_runner.clock`) and run when the test
    calls `drain()`, `advance(seconds)` or `run_all()` (`*_async` in async tests)."""
    with offload_app.testing() as runner:
        yield runner
