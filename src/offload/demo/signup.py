"""The demo application: a sign-up endpoint that answers at once, and the task that
sends the verification email later, on a worker.

    OFFLOAD_URL=sqlite:///offload.db OFFLOAD_DEMO_DB=users.db \\
        uvicorn offload.demo.web:web             # the web app (`web.py`)
    offload worker offload.demo.signup:app       # the workers

`POST /signup` (`web.py`) stores the user with a 6-digit code that expires after 15
minutes, enqueues `emails.send_verification` and answers 201: the request never
waits for the email provider, however slow or down it is. With a PostgreSQL
broker URL the users live in the broker's database instead of `OFFLOAD_DEMO_DB`, and
the user and its job commit in one transaction (`users_pg.py`): both or neither.

The email is sent once, whatever the retries. The job's idempotency key
`verify:{user_id}:{code}` makes a double enqueue return the same job; the handler
records `sent_at` so a run after a successful send (a lost lease, a crash before the
ack) does not send again; and the email carries a `Message-ID` derived from the key,
so the receiving side can drop the one duplicate neither can prevent (see
`Mailer.send_verification`).
"""

from __future__ import annotations

import os
import re
import smtplib
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from offload import Backoff, Bury, Cron, Offload, Task
from offload.demo import (
    CODE_TTL_S,
    ENV_CODE_TTL,
    ENV_DB,
    ENV_SMTP_HOST,
    ENV_SMTP_PORT,
    TASK_NAME,
)
from offload.demo.users import SendState, User, UserStore, Verification
from offload.job import Job
from offload.task import Enqueuer

if TYPE_CHECKING:
    import psycopg

    from offload.demo.users_pg import PostgresUserStore

__all__ = [
    "MAX_EMAIL_LENGTH",
    "CLEANUP_AFTER_S",
    "CLEANUP_CRON",
    "CLEANUP_TASK",
    "DemoConfig",
    "EMAIL_RATE_LIMIT",
    "Mailer",
    "SendState",
    "SignupDemo",
    "User",
    "UserStore",
    "validate_signup",
    "Verification",
    "app",
    "build",
    "message_id_for",
    "send_verification",
    "verification_key",
    "default",
]

#: Retries come quickly in the demo so a run finishes in seconds; a real provider
#: would get a larger base (the default is 1 s, capped at 5 minutes).
DEMO_BACKOFF = Backoff(base_s=0.2, cap_s=5.0)
#: Attempts before a verification email goes to the dead-letter queue.
MAX_ATTEMPTS = 8
#: Sends per second across every worker, as an email provider's API allows. Real
#: defaults are lower (Resend: 2 requests/s per team; Amazon SES: 1 email/s in its
#: sandbox, a higher quota once in production), which would make the demo crawl; set
#: your provider's figure here. A job over the limit waits without using an attempt.
EMAIL_RATE_LIMIT = "100/s"
#: Socket timeout of one SMTP conversation, in seconds. A sync handler with a task
#: `timeout` would run in a child process per job; the socket timeout bounds it enough.
SMTP_TIMEOUT_S = 30.0
#: The sender of every verification email.
SENDER = "Offload demo <no-reply@offload-demo.invalid>"
#: The nightly cleanup's task name, and when it runs (03:00 UTC, a quiet hour).
CLEANUP_TASK = "demo.cleanup"
CLEANUP_CRON = "0 3 * * *"
#: Unverified users whose code expired more than this long ago (7 days, in seconds)
#: are deleted by the cleanup, which frees their email for a new sign-up.
CLEANUP_AFTER_S = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """Where the users live, where email goes, and how long a code is valid."""

    db_path: str = "offload-demo-users.db"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    code_ttl_s: float = CODE_TTL_S

    @classmethod
    def from_env(cls) -> DemoConfig:
        """The configuration from `OFFLOAD_DEMO_*` variables (set by `offload demo`)."""
        default = cls()
        return cls(
            db_path=os.environ.get(ENV_DB, default.db_path),
            smtp_host=os.environ.get(ENV_SMTP_HOST, default.smtp_host),
            smtp_port=int(os.environ.get(ENV_SMTP_PORT, default.smtp_port)),
            code_ttl_s=float(os.environ.get(ENV_CODE_TTL, default.code_ttl_s)),
        )


# -- email ------------------------------------------------------------------------------


def verification_key(user_id: int, code: str) -> str:
    """The idempotency key of the job that mails `code` to user `user_id`."""
    return f"verify:{user_id}:{code}"


def message_id_for(key: str) -> str:
    """A `Message-ID` derived from the job's key: every attempt sends the same one."""
    return f"<{key.replace(':', '.')}@offload-demo.invalid>"


class Mailer:
    """Sends verification emails over SMTP, at most once per code as far as it can tell.

    Errors are sorted for the worker: a 4xx reply or a connection failure is transient
    and raised as is (the worker retries with backoff); a 5xx reply is permanent and
    raised as `Bury`, since retrying would only be refused again.
    """

    def __init__(
        self, users: UserStore | PostgresUserStore, host: str, port: int, *, code_ttl_s: float
    ) -> None:
        self.users = users
        self.host = host
        self.port = port
        self.code_ttl_s = code_ttl_s

    def send_verification(self, user_id: int, email: str, code: str) -> str:
        """Send the code unless it was already sent or superseded; returns what happened.

        Between the SMTP server's 250 and `mark_sent` there is a window: a worker
        killed there has sent the email without recording it, and the retry sends it
        again (so do two runs of one job at once, after a lease lapsed while its worker
        stalled). No sender can close that window (the send and the record are two
        systems), which is why the message carries a `Message-ID` derived from the
        idempotency key: receivers drop repeats by `Message-ID`, as email providers'
        idempotency keys do. The demo's SMTP server counts such repeats as duplicates.
        """
        state = self.users.send_state(user_id, code)
        if state is not SendState.PENDING:
            return state.value
        message_id = message_id_for(verification_key(user_id, code))
        message = verification_message(email, code, message_id, self.code_ttl_s)
        self.deliver(message)
        self.users.mark_sent(user_id, code)
        return "sent"

    def deliver(self, message: EmailMessage) -> None:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=SMTP_TIMEOUT_S) as client:
                client.send_message(message)
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code >= 500:
                raise Bury(f"SMTP refused the message permanently: {exc}") from exc
            raise
        except smtplib.SMTPRecipientsRefused as exc:
            if all(code >= 500 for code, _ in exc.recipients.values()):
                raise Bury(f"SMTP refused the recipient permanently: {exc}") from exc
            raise


def verification_message(email: str, code: str, message_id: str, ttl_s: float) -> EmailMessage:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = email
    message["Subject"] = f"Your verification code: {code}"
    message["Message-ID"] = message_id
    message.set_content(
        f"Welcome!\n\nYour verification code is {code}."
        f" It expires {ttl_s / 60:g} minutes after you asked for it.\n"
    )
    return message


# -- the Offload app ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignupDemo:
    """Everything the demo's processes share: the Offload app with its task, the
    users, the mailer, and the web app. `build()` makes one."""

    config: DemoConfig
    app: Offload
    users: UserStore | PostgresUserStore
    mailer: Mailer
    send_verification: Task[[int, str, str], str]

    async def enqueue_verification(self, user: User) -> Job:
        """Queue the email for the user's current code; returns at once.

        The job expires with the code, so an email is never sent with a code that no
        longer works (a retry waiting past the expiry is expired too). The key makes a
        second enqueue for the same code return the first job.
        """
        return await self._enqueuer(user).enqueue_async(user.id, user.email, user.code)

    async def enqueue_verification_in(self, conn: psycopg.AsyncConnection[Any], user: User) -> Job:
        """`enqueue_verification` inside the open transaction on `conn` (PostgreSQL):
        the job exists if and when that transaction commits."""
        enqueuer = self._enqueuer(user)
        return await enqueuer.enqueue_in_async(conn, user.id, user.email, user.code)

    def _enqueuer(self, user: User) -> Enqueuer[[int, str, str]]:
        expires = datetime.fromtimestamp(user.code_expires_at, UTC)
        return self.send_verification.options(
            key=verification_key(user.id, user.code), expires=expires
        )


def build(config: DemoConfig, url: str | None = None) -> SignupDemo:
    """An Offload app (broker `url`, else `OFFLOAD_URL`, else the SQLite default) with
    the verification task registered, bound to `config`'s users and SMTP server."""
    offload = Offload(url)
    users = _user_store(config, offload.broker.url)
    mailer = Mailer(users, config.smtp_host, config.smtp_port, code_ttl_s=config.code_ttl_s)

    @offload.task(
        name=TASK_NAME,
        expires=config.code_ttl_s,
        max_attempts=MAX_ATTEMPTS,
        backoff=DEMO_BACKOFF,
        rate_limit=EMAIL_RATE_LIMIT,
    )
    def send_verification(user_id: int, email: str, code: str) -> str:
        """Mail the verification code; runs on a worker, in its thread pool."""
        return mailer.send_verification(user_id, email, code)

    @offload.task(name=CLEANUP_TASK)
    def cleanup(older_than_s: float = CLEANUP_AFTER_S) -> int:
        """Nightly: forget sign-ups that were never verified (see `delete_expired`)."""
        return users.delete_expired(older_than_s)

    offload.schedule(cleanup, Cron(CLEANUP_CRON), misfire="run_once")

    return SignupDemo(config, offload, users, mailer, send_verification)


def _user_store(config: DemoConfig, broker_url: str) -> UserStore | PostgresUserStore:
    """With a PostgreSQL broker the users live beside the jobs, so that a sign-up can
    store the user and enqueue the email in one transaction (`users_pg.py`); otherwise
    in their own SQLite file."""
    if urlsplit(broker_url).scheme in ("postgresql", "postgres"):
        from offload.demo.users_pg import PostgresUserStore

        return PostgresUserStore(broker_url)
    return UserStore(config.db_path)


#: The demo as its processes see it, configured from the environment: `app` for
#: `offload worker offload.demo.signup:app` (`web.py` serves the same one over HTTP).
default = build(DemoConfig.from_env(), os.environ.get("OFFLOAD_URL"))
app = default.app
send_verification = default.send_verification


# -- the sign-up form's rules (the web app's JSON API and form both apply them) ----

#: Deliberately loose: one @, no spaces, a dot in the domain. Real validation is
#: sending the email, which is what the code is for.
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
#: Longest accepted name, in characters.
MAX_NAME_LENGTH = 100
#: Longest accepted email address, in characters (RFC 5321's path limit, less the <>).
MAX_EMAIL_LENGTH = 254


def validate_signup(payload: Any) -> tuple[str, str, dict[str, str]]:
    """`(email, name, errors)`: the normalised fields, and a message per bad field."""
    if not isinstance(payload, dict):
        return "", "", {"body": "expected a JSON object with 'email' and 'name'"}
    errors: dict[str, str] = {}
    email = payload.get("email")
    name = payload.get("name")
    if isinstance(email, str) and len(email.strip()) > MAX_EMAIL_LENGTH:
        errors["email"] = f"an email address has at most {MAX_EMAIL_LENGTH} characters"
    elif not isinstance(email, str) or not EMAIL_RE.match(email.strip()):
        errors["email"] = "a valid email address is required"
    if not isinstance(name, str) or not name.strip():
        errors["name"] = "a name is required"
    elif len(name.strip()) > MAX_NAME_LENGTH:
        errors["name"] = f"a name has at most {MAX_NAME_LENGTH} characters"
    if errors:
        return "", "", errors
    assert isinstance(email, str) and isinstance(name, str)
    return email.strip().lower(), name.strip(), {}
