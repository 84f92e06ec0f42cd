"""The demo's pages for a person (`offload demo --serve`): a sign-up form, and the
inbox of the local SMTP server.

A newcomer signs up by hand at `/`, is sent to `/inbox`, and watches the email arrive
there (the SMTP server refuses it a few times first) while the dashboard, mounted at
`/dashboard`, shows the job fail, retry and succeed. Plain HTML, every value escaped.
"""

from __future__ import annotations

import asyncio
import os
from email import message_from_bytes
from email.message import Message
from html import escape
from pathlib import Path
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from offload import OffloadError
from offload.demo import ENV_MAILDIR
from offload.demo.signup import SignupDemo, UserStore, validate_signup

__all__ = ["inbox_page", "signup_form", "signup_page"]

#: Most messages the inbox page shows, newest first.
INBOX_MAX = 50

_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; color: #1d2330; }
label { display: block; margin: .6rem 0; } input { font: inherit; padding: .3rem; width: 100%; }
button { font: inherit; padding: .4rem 1rem; background: #2f5bd3; color: #fff; border: 0; }
.mail { border: 1px solid #dfe3ea; padding: .6rem 1rem; margin: .8rem 0; }
.mail pre { white-space: pre-wrap; } .dim { color: #6b7385; } .error { color: #a61b1b; }
nav a { margin-right: 1rem; }
"""


def _page(title: str, body: str) -> HTMLResponse:
    nav = (
        '<nav><a href="/">Sign up</a><a href="/inbox">Inbox</a>'
        '<a href="/dashboard/">Dashboard</a></nav>'
    )
    return HTMLResponse(
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>{nav}<h1>{escape(title)}</h1>{body}</body></html>"
    )


async def signup_page(request: Request) -> Response:
    """`GET /`: the sign-up form."""
    error = request.query_params.get("error", "")
    shown = f'<p class="error">{escape(error)}</p>' if error else ""
    return _page(
        "Sign up",
        f"""{shown}<form method="post" action="/signup/form">
<label>Name <input name="name" required maxlength="100"></label>
<label>Email <input name="email" type="email" required maxlength="254"></label>
<button>Sign up</button></form>
<p class="dim">The page answers at once; a worker sends your verification email through a
local SMTP server that refuses each message twice before it accepts it. Watch it on the
<a href="/dashboard/">dashboard</a>, then read it in the <a href="/inbox">inbox</a>.</p>""",
    )


async def signup_form(request: Request) -> Response:
    """`POST /signup/form`: sign up from the form, then go to the inbox."""
    demo: SignupDemo = request.app.state.demo
    form = await request.form()
    email, name, errors = validate_signup({"email": form.get("email"), "name": form.get("name")})
    if errors:
        return RedirectResponse(f"/?error={quote('; '.join(errors.values()))}", status_code=303)
    if isinstance(demo.users, UserStore):
        user = await asyncio.to_thread(demo.users.create, email, name, demo.config.code_ttl_s)
        if user is None:
            return RedirectResponse(f"/?error={quote(email + ' is already signed up')}", 303)
        try:
            await demo.enqueue_verification(user)
        except OffloadError as exc:
            return RedirectResponse(f"/?error={quote(f'could not queue the email: {exc}')}", 303)
    else:
        created = await demo.users.create_with_job(
            email, name, demo.config.code_ttl_s, demo.enqueue_verification_in
        )
        if created is None:
            return RedirectResponse(f"/?error={quote(email + ' is already signed up')}", 303)
    return RedirectResponse(f"/inbox?email={quote(email)}", status_code=303)


def _messages(maildir: Path, address: str | None) -> list[Message]:
    messages = []
    for path in sorted(maildir.glob("*.eml"), reverse=True):
        message = message_from_bytes(path.read_bytes())
        if address is None or address.lower() in str(message.get("To", "")).lower():
            messages.append(message)
        if len(messages) >= INBOX_MAX:
            break
    return messages


def _body(message: Message) -> str:
    part = message.get_body(("plain",)) if hasattr(message, "get_body") else None
    payload = (part or message).get_payload(decode=True)
    return payload.decode(errors="replace") if isinstance(payload, bytes) else str(payload)


async def inbox_page(request: Request) -> Response:
    """`GET /inbox[?email=]`: what the SMTP server accepted, newest first."""
    folder = os.environ.get(ENV_MAILDIR)
    if not folder:
        return _page("Inbox", "<p>No inbox: start the demo with <code>--serve</code>.</p>")
    address = request.query_params.get("email") or None
    messages = await asyncio.to_thread(_messages, Path(folder), address)
    head = f"<p>Messages to {escape(address)}.</p>" if address else ""
    if not messages:
        head += (
            '<p class="dim">Nothing yet: reload in a second (the server is slow, and refuses '
            "each message twice).</p>"
        )
    mails = "".join(
        f'<div class="mail"><b>{escape(str(m.get("Subject", "")))}</b>'
        f'<div class="dim">to {escape(str(m.get("To", "")))} · '
        f"{escape(str(m.get('Date', '')))}</div>"
        f"<pre>{escape(_body(m))}</pre></div>"
        for m in messages
    )
    return _page("Inbox", head + mails)
