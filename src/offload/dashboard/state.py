"""What every dashboard request handler reads: the `Dashboard` (the app, the access
rules, the templates) kept on `app.state.dashboard`, and the notices an action leaves
for the page it redirects to. Apart from `app.py` and `pages.py` so that neither
imports the other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2 import Environment
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from offload._redact import redact_url
from offload.app import Offload
from offload.dashboard.security import Access, csrf_token

__all__ = ["NOTICES", "Dashboard", "dashboard", "notice"]

#: What an action reports after its redirect, by code: the page never prints text
#: taken from the URL, so a crafted link cannot put words in the dashboard's mouth.
NOTICES = {
    "cancelled": "Cancel sent: {n} job(s) cancelled or flagged.",
    "not-cancelled": "Nothing to cancel: the job has already ended.",
    "replayed": "Replayed {n} dead job(s): queued again with their attempts reset.",
    "replayed-edited": "Replayed as a new job with the edited arguments.",
    "purged": "Purged {n} dead job(s).",
    "paused": "Paused: workers stop taking its jobs within a second; enqueues still land.",
    "resumed": "Resumed: workers take its jobs again.",
    "unchanged": "Nothing changed: it already was in that state.",
    "signed-in": "Signed in.",
    "signed-out": "Signed out.",
}


@dataclass(slots=True)
class Dashboard:
    """What every request handler needs: the app, the access rules, the templates."""

    offload: Offload
    access: Access
    env: Environment
    title: str

    def render(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> Response:
        """A page; every value is escaped by the template environment (autoescape)."""
        page = self.env.get_template(template).render(
            request=request,
            root=request.scope.get("root_path", ""),
            csrf=csrf_token(request),
            access=self.access,
            title=self.title,
            broker=redact_url(self.offload.url),
            notice=notice(request),
            **context,
        )
        return HTMLResponse(page, status_code=status)


def dashboard(request: Request) -> Dashboard:
    state: Dashboard = request.app.state.dashboard
    return state


def notice(request: Request) -> str | None:
    template = NOTICES.get(request.query_params.get("notice", ""))
    if template is None:
        return None
    n = request.query_params.get("n", "")
    return template.format(n=int(n) if n.isdigit() else "?")
