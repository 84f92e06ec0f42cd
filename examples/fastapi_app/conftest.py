from __future__ import annotations

import pytest

from offload import Offload


@pytest.fixture
def offload_app() -> Offload:
    """Tells offload's pytest plugin which app `offload_runner` runs inline."""
    from fastapi_app.tasks import app

    return app
