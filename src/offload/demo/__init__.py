"""`offload demo`: the founding story, runnable.

A sign-up endpoint must never wait for the verification email. The demo starts a
Starlette web app (`signup.py`), worker processes that send the email over SMTP, and a
local SMTP server that is slow and flaky on purpose (`smtp.py`); then it drives a few
hundred sign-ups over HTTP and reports how long they took beside how long the email
took, and whether every email arrived exactly once (`run.py`).

The orchestrator's parts: the scripted story one user walks after the load
(`story.py`) and the summary it prints (`summary.py`).

This package needs the `demo` extra (`pip install 'offload[demo]'`). Importing it does
not: only the names below, shared by the app, the orchestrator and its story, live
here.
"""

from __future__ import annotations

__all__ = [
    "CODE_TTL_S",
    "DemoError",
    "ENV_CODE_TTL",
    "ENV_DASHBOARD_TOKEN",
    "ENV_DB",
    "ENV_MAILDIR",
    "ENV_PARENT_PID",
    "ENV_SMTP_HOST",
    "ENV_SMTP_PORT",
    "TASK_NAME",
]

#: The name the verification task is registered under; queued jobs refer to it.
TASK_NAME = "emails.send_verification"
#: How long a verification code (and the job that mails it) stays valid: 15 minutes.
CODE_TTL_S = 15 * 60.0

#: Path of the users' SQLite database (separate from the broker's).
ENV_DB = "OFFLOAD_DEMO_DB"
#: Where the worker delivers the email.
ENV_SMTP_HOST = "OFFLOAD_DEMO_SMTP_HOST"
ENV_SMTP_PORT = "OFFLOAD_DEMO_SMTP_PORT"
#: The directory where the local SMTP server writes each message it accepts, read by
#: the web app's inbox page (`offload demo --serve`).
ENV_MAILDIR = "OFFLOAD_DEMO_MAILDIR"
#: The token that signs in to the dashboard the web app mounts at /dashboard; without
#: one the dashboard is read-only.
ENV_DASHBOARD_TOKEN = "OFFLOAD_DEMO_DASHBOARD_TOKEN"
#: Overrides `CODE_TTL_S` (seconds), so tests can watch a code expire.
ENV_CODE_TTL = "OFFLOAD_DEMO_CODE_TTL"
#: The orchestrator's pid: its children stop when it is gone (killed, say), instead of
#: running on as orphans. The same variable `offload worker` watches for its supervisor.
ENV_PARENT_PID = "OFFLOAD_SUPERVISOR_PID"


class DemoError(Exception):
    """A part of the demo could not start or misbehaved."""
