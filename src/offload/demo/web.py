"""The sign-up web app (Starlette): `POST /signup`, `POST /resend`, `GET /verify`,
`GET /users/{id}`, `GET /healthz`; the users, the task and the email are `signup.py`'s.
For a person: the sign-up form at `/` and the local inbox at `/inbox` (`pages.py`),
and offload's dashboard mounted at `/dashboard` (signed in with the token in
`OFFLOAD_DEMO_DASHBOARD_TOKEN`, else read-only): how to mount it in your own app.

    OFFLOAD_URL=sqlite:///offload.db OFFLOAD_DEMO_DB=users.db uvicorn offload.demo.web:web

A public endpoint bounds what it accepts: a body over MAX_BODY_BYTES is refused before
it is read, and each field has a length limit, checked before anything else reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from offload import OffloadError
from offload.dashboard import create_app as create_dashboard
from offload.demo import ENV_DASHBOARD_TOKEN, ENV_PARENT_PID
from offload.demo.pages import inbox_page, signup_form, signup_page
from offload.demo.signup import (
    MAX_EMAIL_LENGTH,
    SignupDemo,
    User,
    UserStore,
    Verification,
    default,
    validate_signup,
)

if TYPE_CHECKING:
    from offload.demo.users_pg import PostgresUserStore

__all__ = ["MAX_BODY_BYTES", "MAX_EMAIL_LENGTH", "create_web", "validate_signup", "web"]

#: Largest accepted request body, in bytes: a sign-up is a few dozen. A larger one is
#: refused (413) before it is read, so nobody can make the server hold megabytes.
MAX_BODY_BYTES = 16 * 1024
#: How often the web server checks that `offload demo` still runs, in seconds.
ORPHAN_CHECK_S = 1.0


def _demo(request: Request) -> SignupDemo:
    demo: SignupDemo = request.app.state.demo
    return demo


class BodyTooLarge(Exception):
    """The request body is over MAX_BODY_BYTES (answered 413)."""


async def _json(request: Request) -> Any:
    """The JSON body, None if it is not JSON.

    Raises:
        BodyTooLarge: the declared length, or the bytes received so far, pass
            MAX_BODY_BYTES; the rest is never read.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():  # a chunked body declares no length
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BodyTooLarge
    try:
        return json.loads(body)
    except ValueError:
        return None


async def _too_large(request: Request, exc: Exception) -> JSONResponse:
    return _error(413, f"request body over {MAX_BODY_BYTES} bytes", limit=MAX_BODY_BYTES)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def _queued(demo: SignupDemo, user: User, status: int) -> JSONResponse:
    """Enqueue the user's email and answer `status`; 503 if the broker is down (the
    user is stored either way and can ask for a resend)."""
    try:
        job = await demo.enqueue_verification(user)
    except OffloadError as exc:
        return _error(503, f"could not queue the email ({exc}); POST /resend to retry")
    return JSONResponse({"user_id": user.id, "job_id": job.id}, status_code=status)


async def signup(request: Request) -> JSONResponse:
    """`POST /signup {email, name}` → 201 `{user_id, job_id}`, without waiting for email."""
    demo = _demo(request)
    email, name, errors = validate_signup(await _json(request))
    if errors:
        return _error(422, "invalid sign-up", fields=errors)
    if not isinstance(demo.users, UserStore):  # PostgreSQL: the user and the job commit together
        return await _signup_in_one_transaction(demo, demo.users, email, name)
    user = await asyncio.to_thread(demo.users.create, email, name, demo.config.code_ttl_s)
    if user is None:
        return _error(409, f"{email} is already signed up; POST /resend for a new code")
    return await _queued(demo, user, 201)


async def _signup_in_one_transaction(
    demo: SignupDemo, users: PostgresUserStore, email: str, name: str
) -> JSONResponse:
    """Store the user and enqueue its email in one PostgreSQL transaction: both or
    neither (503 if the database is down, and then nothing was stored)."""
    try:
        created = await users.create_with_job(
            email, name, demo.config.code_ttl_s, demo.enqueue_verification_in
        )
    except OffloadError as exc:
        return _error(503, f"could not sign up ({exc}); nothing was stored, try again")
    if created is None:
        return _error(409, f"{email} is already signed up; POST /resend for a new code")
    user, job = created
    return JSONResponse({"user_id": user.id, "job_id": job.id}, status_code=201)


async def resend(request: Request) -> JSONResponse:
    """`POST /resend {email}` → 202 with a new code, a new expiry, and a new job."""
    demo = _demo(request)
    payload = await _json(request)
    email = payload.get("email") if isinstance(payload, dict) else None
    if not isinstance(email, str):
        return _error(422, "invalid request", fields={"email": "an email address is required"})
    if len(email.strip()) > MAX_EMAIL_LENGTH:
        problem = f"an email address has at most {MAX_EMAIL_LENGTH} characters"
        return _error(422, "invalid request", fields={"email": problem})
    user = await asyncio.to_thread(demo.users.by_email, email.strip().lower())
    if user is None:
        return _error(404, "no such user")
    if user.verified_at is not None:
        return _error(409, "already verified")
    renewed = await asyncio.to_thread(demo.users.renew_code, user.id, demo.config.code_ttl_s)
    return await _queued(demo, renewed, 202)


async def verify(request: Request) -> JSONResponse:
    """`GET /verify?email=&code=` → 200, or 410 if the code expired, 400 if it is wrong
    (or was replaced by a newer one), 404 for an unknown email."""
    email = request.query_params.get("email", "").strip().lower()
    code = request.query_params.get("code", "").strip()
    result = await asyncio.to_thread(_demo(request).users.verify, email, code)
    if result is Verification.OK:
        return JSONResponse({"verified": True})
    if result is Verification.EXPIRED:
        return _error(410, "code expired; POST /resend for a new one")
    if result is Verification.WRONG_CODE:
        return _error(400, "wrong code")
    return _error(404, "no such user")


async def get_user(request: Request) -> JSONResponse:
    """`GET /users/{id}`: the user and whether their email went out (never the code)."""
    user = await asyncio.to_thread(_demo(request).users.get, request.path_params["user_id"])
    if user is None:
        return _error(404, "no such user")
    return JSONResponse(
        {
            "id": user.id,
            "email": user.email,
            "name": user.name,
            "email_sent": user.sent_at is not None,
            "verified": user.verified_at is not None,
        }
    )


async def health(request: Request) -> JSONResponse:
    """`GET /healthz`: the server is up (the orchestrator waits for this)."""
    return JSONResponse({"ok": True})


async def _stop_when_orphaned() -> None:
    """Under `offload demo`: once the orchestrator is gone (even killed), SIGTERM this
    server, so that uvicorn shuts down instead of serving on as an orphan."""
    parent = os.environ.get(ENV_PARENT_PID)
    if not parent:
        return
    while os.getppid() == int(parent):
        await asyncio.sleep(ORPHAN_CHECK_S)
    os.kill(os.getpid(), signal.SIGTERM)


def create_web(demo: SignupDemo) -> Starlette:
    """The Starlette app; its lifespan creates the users' schema and connects the
    broker once, so no request pays for either."""

    @contextlib.asynccontextmanager
    async def lifespan(web: Starlette) -> AsyncIterator[None]:
        await demo.app.connected_broker()  # first: it creates a PostgreSQL URL's schema
        await asyncio.to_thread(demo.users.init)
        watchdog = asyncio.create_task(_stop_when_orphaned())
        try:
            yield
        finally:
            watchdog.cancel()
            await demo.app.aclose()
            await demo.users.aclose()
            await asyncio.to_thread(demo.users.close)

    web = Starlette(
        routes=[
            Route("/signup", signup, methods=["POST"]),
            Route("/resend", resend, methods=["POST"]),
            Route("/verify", verify, methods=["GET"]),
            Route("/users/{user_id:int}", get_user, methods=["GET"]),
            Route("/healthz", health, methods=["GET"]),
            Route("/", signup_page, methods=["GET"]),
            Route("/signup/form", signup_form, methods=["POST"]),
            Route("/inbox", inbox_page, methods=["GET"]),
            Mount(
                "/dashboard",
                create_dashboard(
                    demo.app,
                    token=os.environ.get(ENV_DASHBOARD_TOKEN) or None,
                    title="offload demo",
                ),
            ),
        ],
        lifespan=lifespan,
        exception_handlers={BodyTooLarge: _too_large},
    )
    web.state.demo = demo
    return web


#: The app `uvicorn offload.demo.web:web` serves, configured from the environment.
web = create_web(default)
