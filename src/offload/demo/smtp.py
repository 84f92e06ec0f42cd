"""A local SMTP server for the demo that can be made slow and flaky on purpose.

The demo's point is that a sign-up never waits for the email provider, and that the
email still arrives exactly once although the provider is slow and sometimes says "try
again later". This server plays that provider: every message waits `delay_s` before it
is answered, and a fraction `failure_rate` of them is refused with the transient reply
`451 4.3.0 Try again later`, which a well-behaved client retries.

It also keeps the books the demo's summary is built from: how many messages arrived
under each `Message-ID` (more than one is a duplicate, the thing idempotency keys are
for) and the last message each recipient received (the demo reads its verification
code from there, like a user opening their inbox). Given a `maildir`, it also writes
every accepted message there as a file (`<n>.eml`), so another process (the demo's web
app, which shows the inbox on a page) can read it.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller

__all__ = ["FlakySMTPHandler", "Inbox", "MailStats", "SMTPServer", "free_port"]

#: The transient refusal sent for a "failed" message: 4xx tells the client to retry.
TRY_AGAIN = "451 4.3.0 Try again later"
#: The permanent refusal of a recipient: 5xx tells the client not to try again.
NO_SUCH_USER = "550 5.1.1 No such user here"
#: The reply to an accepted message.
ACCEPTED = "250 2.0.0 Message accepted for delivery"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now.

    aiosmtpd's `Controller` connects to its own port to check that it started, so it
    cannot be given port 0; we ask the OS for a free port first. Another process could
    take it in between, which is harmless for a demo on a laptop.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class MailStats:
    """A consistent snapshot of what the server has seen.

    Attributes:
        received: messages accepted (250), duplicates included.
        unique: distinct `Message-ID`s accepted.
        duplicates: messages accepted beyond the first under the same `Message-ID`.
        refused: messages answered `451` (each one should cause exactly one retry).
        recipients: distinct recipients that received at least one message.
    """

    received: int = 0
    unique: int = 0
    duplicates: int = 0
    refused: int = 0
    recipients: int = 0


@dataclass(slots=True)
class Inbox:
    """Everything one recipient received, oldest first."""

    messages: list[Message] = field(default_factory=list)

    @property
    def last(self) -> Message | None:
        return self.messages[-1] if self.messages else None


class FlakySMTPHandler:
    """An aiosmtpd handler that delays, sometimes refuses, and counts every message.

    Counters are guarded by a lock: the handler runs on the server's thread while the
    demo reads them from its own. `delay_s` and `failure_rate` may be changed while the
    server runs (to make the provider slow or flaky mid-demo).

    Args:
        delay_s: how long each message takes to be answered, in seconds.
        failure_rate: probability (0..1) that a message is refused with a 451.
        seed: seed of the refusal draw, so a run is reproducible.
        max_refusals: refuse one message (by `Message-ID`) at most this many times,
            then accept it; None for no limit. With fewer refusals than the sender's
            attempts, no message can run out of attempts by bad luck (tests use it).
    """

    def __init__(
        self,
        *,
        delay_s: float = 0.0,
        failure_rate: float = 0.0,
        seed: int = 0,
        max_refusals: int | None = None,
        maildir: Path | None = None,
    ) -> None:
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be within [0, 1], got {failure_rate}")
        self.delay_s = delay_s
        self.failure_rate = failure_rate
        self.max_refusals = max_refusals
        self.maildir = maildir
        #: Addresses (lower case) refused at RCPT with a permanent 550.
        self.unknown_recipients: set[str] = set()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._by_message_id: Counter[str] = Counter()
        self._refusals: Counter[str] = Counter()
        self._inboxes: dict[str, Inbox] = {}
        self._written = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        """aiosmtpd hook: refuse `unknown_recipients` for good (a 5xx, never retried)."""
        if address.lower() in self.unknown_recipients:
            return NO_SUCH_USER
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """aiosmtpd hook: called once per message, after the client sent its body."""
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        message = message_from_bytes(envelope.original_content or envelope.content)
        message_id = str(message.get("Message-ID", "")).strip() or f"<none-{id(message)}>"
        if self._refuse(message_id):
            return TRY_AGAIN
        self._record(message_id, message, list(envelope.rcpt_tos))
        if self.maildir is not None:
            self._write(envelope.original_content or envelope.content)
        return ACCEPTED

    def _write(self, raw: bytes) -> None:
        """The message as `<n>.eml` in the maildir, renamed into place whole, so a
        reader never sees half a message."""
        assert self.maildir is not None
        with self._lock:
            self._written += 1
            n = self._written
        temporary = self.maildir / f".{n:06d}.tmp"
        temporary.write_bytes(raw)
        temporary.rename(self.maildir / f"{n:06d}.eml")

    def _refuse(self, message_id: str) -> bool:
        with self._lock:
            if self.max_refusals is not None and self._refusals[message_id] >= self.max_refusals:
                return False
            if self._rng.random() >= self.failure_rate:
                return False
            self._refusals[message_id] += 1
            return True

    def _record(self, message_id: str, message: Message, recipients: list[str]) -> None:
        with self._lock:
            self._by_message_id[message_id] += 1
            for rcpt in recipients:
                self._inboxes.setdefault(rcpt.lower(), Inbox()).messages.append(message)

    def stats(self) -> MailStats:
        """The counters as of now."""
        with self._lock:
            received = sum(self._by_message_id.values())
            unique = len(self._by_message_id)
            return MailStats(
                received=received,
                unique=unique,
                duplicates=received - unique,
                refused=sum(self._refusals.values()),
                recipients=len(self._inboxes),
            )

    def copies(self, message_id: str) -> int:
        """How many times a message with this `Message-ID` was accepted."""
        with self._lock:
            return self._by_message_id[message_id]

    def inbox(self, address: str) -> Inbox:
        """A copy of what `address` received so far (empty if nothing)."""
        with self._lock:
            found = self._inboxes.get(address.lower())
            return Inbox(list(found.messages) if found else [])


class SMTPServer:
    """A `FlakySMTPHandler` served on 127.0.0.1 from a background thread.

    Use as a context manager (`with SMTPServer(delay_s=0.1) as smtp: ...`), or call
    `start()` and `stop()`.
    """

    def __init__(
        self,
        *,
        delay_s: float = 0.0,
        failure_rate: float = 0.0,
        seed: int = 0,
        max_refusals: int | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        maildir: Path | None = None,
    ) -> None:
        self.handler = FlakySMTPHandler(
            delay_s=delay_s, failure_rate=failure_rate, seed=seed, max_refusals=max_refusals,
            maildir=maildir,
        )  # fmt: skip
        self.host = host
        self.port = port or free_port(host)
        self._controller = Controller(self.handler, hostname=host, port=self.port)
        self._started = False

    def start(self) -> SMTPServer:
        """Start serving; returns once the server answers."""
        self._controller.start()
        self._started = True
        return self

    def stop(self) -> None:
        """Stop serving; idempotent."""
        if self._started:
            self._started = False
            self._controller.stop()

    def stats(self) -> MailStats:
        return self.handler.stats()

    def __enter__(self) -> SMTPServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
