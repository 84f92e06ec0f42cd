"""The demo's story: after the load, one user walks through the rest of the sign-up
flow over HTTP (sign up, read the code from her inbox, ask for a resend, find the old
code refused and the new one accepted, fail to sign up twice), each step a checked line
of the summary.

Apart from the orchestrator (`run.py`): it is the scripted scenario, not the running of
the parts, and reads only the web app and the SMTP server's inboxes it is given.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field

import httpx

from offload.demo import DemoError
from offload.demo.smtp import SMTPServer

__all__ = ["CODE_RE", "STORY_EMAIL", "Story"]

#: The address of the user who walks through the resend story after the load.
STORY_EMAIL = "ada@example.com"
CODE_RE = re.compile(r"\b(\d{6})\b")


@dataclass(slots=True)
class Story:
    """One user's walk through the rest of the story, after the load: sign up, read
    the code from the inbox, ask for a resend, find the old code refused and the new
    one accepted, and fail to sign up twice."""

    client: httpx.AsyncClient
    smtp: SMTPServer
    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def check(self, passed: bool, text: str) -> None:
        self.ok = self.ok and passed
        self.lines.append(f"{'[green]✓' if passed else '[red]✗'}[/] {text}")

    async def run(self) -> Story:
        try:
            await self._walk()
        except (DemoError, httpx.HTTPError) as exc:
            self.check(False, f"the story stopped: {exc}")
        return self

    async def _walk(self) -> None:
        start = time.perf_counter()
        response = await self.client.post(
            "/signup", json={"email": STORY_EMAIL, "name": "Ada Lovelace"}
        )
        answered_ms = (time.perf_counter() - start) * 1000
        status = response.status_code
        self.check(status == 201, f"{STORY_EMAIL} signs up: {status} in {answered_ms:.0f} ms")
        first = await self._code(1)
        waited_ms = (time.perf_counter() - start) * 1000
        self.check(True, f"her code {first} arrives {waited_ms:.0f} ms after she signed up")
        response = await self.client.post("/resend", json={"email": STORY_EMAIL})
        self.check(response.status_code == 202, f"she asks for a resend: {response.status_code}")
        second = await self._code(2)
        self.check(second != first, f"a new code {second} arrives in a second email")
        old = await self._verify(first)
        self.check(old == 400, f"the old code is refused: {old}")
        new = await self._verify(second)
        self.check(new == 200, f"the new code verifies her: {new}")
        again = await self.client.post("/signup", json={"email": STORY_EMAIL, "name": "Ada"})
        self.check(again.status_code == 409, f"signing up again: {again.status_code}")

    async def _verify(self, code: str) -> int:
        response = await self.client.get("/verify", params={"email": STORY_EMAIL, "code": code})
        return response.status_code

    async def _code(self, count: int, timeout_s: float = 30.0) -> str:
        """The code in the `count`-th email to the story's user, once it arrives."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            inbox = self.smtp.handler.inbox(STORY_EMAIL)
            if len(inbox.messages) >= count:
                found = CODE_RE.search(str(inbox.messages[count - 1]["Subject"]))
                if found is None:
                    raise DemoError("the verification email carries no code")
                return found.group(1)
            await asyncio.sleep(0.02)
        raise DemoError(f"email #{count} to {STORY_EMAIL} did not arrive in {timeout_s:.0f} s")
