"""Who may look and who may act: authentication, CSRF, and headers that make a page inert.

The dashboard is safe by default:

- With no credentials configured it is **read-only**: pages render, every action is
  refused (403), and the page says how to enable them. Nothing can be changed by
  whoever reaches the port.
- With a token (`token=`) or a user and password (`basic=`), every page and action
  needs them. A browser signs in with HTTP Basic (the password may be the token) or
  through the sign-in form, which sets a session cookie holding an HMAC of the token
  (never the token itself); an API client sends `Authorization: Bearer <token>`.
- Mounted in a host application, `authorize(request)` lets the host's own login decide
  (it runs after the host's middleware, so `request.user` is set).
- Every POST carries a CSRF token: a random value in a `SameSite=Strict` cookie that
  the form must repeat (double submit), and a cross-origin `Origin` is refused. Basic
  auth is sent by the browser on its own, so without this another site could post a
  form to the dashboard.
- Every response carries a Content-Security-Policy without inline scripts, so even a
  markup injection that escaped the templates' escaping could not run a script.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "SESSION_COOKIE",
    "Access",
    "Authorize",
    "SecurityHeaders",
    "check_csrf",
    "csrf_token",
    "same_secret",
    "session_value",
]

#: A host application's own check: True lets the request act (and read).
Authorize = Callable[[Request], bool | Awaitable[bool]]

CSRF_COOKIE = "offload_csrf"
CSRF_FIELD = "csrf"
SESSION_COOKIE = "offload_session"

_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def session_value(token: str) -> str:
    """What the session cookie holds for `token`: an HMAC, so the cookie never carries
    the token and a stolen cookie dies when the token is changed."""
    return hmac.new(token.encode(), b"offload-dashboard-session", hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Access:
    """The dashboard's access rules (see the module docstring).

    Attributes:
        token: a secret accepted as a Bearer token, a Basic password, or at sign-in.
        basic: `(user, password)` accepted as HTTP Basic credentials.
        authorize: the host application's check, when mounted.
        read_only: refuse every action even to an authenticated user.
    """

    token: str | None = None
    basic: tuple[str, str] | None = None
    authorize: Authorize | None = None
    read_only: bool = False

    def __repr__(self) -> str:  # never the secrets
        return (
            f"Access(token={'***' if self.token else None}, "
            f"basic={'***' if self.basic else None}, "
            f"authorize={self.authorize is not None}, read_only={self.read_only})"
        )

    @property
    def guarded(self) -> bool:
        """Whether any credential or host check is configured."""
        return bool(self.token or self.basic or self.authorize)

    @property
    def actions_enabled(self) -> bool:
        """Actions need a configured guard and no read-only mode: safe by default."""
        return self.guarded and not self.read_only

    @property
    def uses_basic(self) -> bool:
        """Whether to ask the browser for Basic credentials (it has a password prompt)."""
        return self.basic is not None

    async def allows(self, request: Request) -> bool:
        """Whether `request` is signed in (always True when nothing is configured)."""
        if not self.guarded:
            return True
        if self.token and self._token_ok(request, self.token):
            return True
        if self.basic and self._basic_ok(request, *self.basic):
            return True
        if self.authorize is not None:
            verdict = self.authorize(request)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            return bool(verdict)
        return False

    @staticmethod
    def _token_ok(request: Request, token: str) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        # A header arrives as latin-1 text: its own bytes are what the client sent.
        bearer = value.strip().encode("latin-1", "replace")
        if scheme.lower() == "bearer" and hmac.compare_digest(bearer, _utf8(token)):
            return True
        if scheme.lower() == "basic":
            creds = _basic(value)
            if creds is not None and same_secret(creds[1], token):
                return True
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return bool(cookie) and same_secret(cookie, session_value(token))

    @staticmethod
    def _basic_ok(request: Request, user: str, password: str) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        creds = _basic(value) if scheme.lower() == "basic" else None
        if creds is None:
            return False
        # Both compared, always, so the time taken does not tell which one was wrong.
        user_ok = same_secret(creds[0], user)
        password_ok = same_secret(creds[1], password)
        return user_ok and password_ok


def same_secret(a: str, b: str) -> bool:
    """`a == b` in constant time, for any text: `hmac.compare_digest` raises on two
    strings with a non-ASCII character, so what a client sends (a password with an
    accent, a forged cookie) would be a server error instead of a refusal."""
    return hmac.compare_digest(_utf8(a), _utf8(b))


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _basic(value: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def csrf_token(request: Request) -> str:
    """The request's CSRF token: the cookie's, or a new one the response will set."""
    existing = request.cookies.get(CSRF_COOKIE)
    if existing and len(existing) == 43:
        return existing
    token: str = request.scope.setdefault("offload.csrf_new", secrets.token_urlsafe(32))
    return token


def check_csrf(request: Request, submitted: str | None) -> str | None:
    """Why the POST `request` is refused as a cross-site request, or None if it is not.

    Double submit: the form's field must equal the cookie, which another site can
    neither read nor set. A present `Origin` must also be this host."""
    origin = request.headers.get("origin")
    if origin and origin != "null":
        if urlsplit(origin).netloc != request.headers.get("host", ""):
            return "the request came from another site"
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not cookie or not submitted or not same_secret(cookie, submitted):
        return "the form's CSRF token is missing or does not match; reload the page"
    return None


class SecurityHeaders:
    """ASGI middleware: CSP and friends on every response, and the CSRF cookie when a
    page minted one (scoped to the dashboard's path, never readable by scripts)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", _CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                    (b"cache-control", b"no-store"),
                ]
                minted = scope.get("offload.csrf_new")
                if minted:
                    path = scope.get("root_path", "") or "/"
                    cookie = f"{CSRF_COOKIE}={minted}; Path={path}; HttpOnly; SameSite=Strict"
                    headers.append((b"set-cookie", cookie.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
