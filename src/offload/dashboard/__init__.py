"""The web dashboard: `offload dashboard`, or `create_app(app)` mounted in your own ASGI app.

Needs the `dashboard` extra (Starlette, Jinja2, uvicorn). Server-rendered HTML built
on the public `Broker` inspection API only, so it works on every broker.
"""

from __future__ import annotations

from offload.dashboard.app import create_app

__all__ = ["create_app"]
