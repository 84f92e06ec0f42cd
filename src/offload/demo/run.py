"""The orchestrator behind `offload demo`: start every part, drive sign-ups, report.

Parts, each as it would run in production:

- a local SMTP server, slow and flaky on purpose (in this process, on a thread);
- the Starlette sign-up app (`web.py`) on uvicorn (a subprocess);
- `offload worker offload.demo.signup:app` (one subprocess per worker);
- the broker: a SQLite file in the work directory (the embedded default), or `url`;
- offload's dashboard, mounted in the web app at `/dashboard` (its URL and sign-in
  token are printed).

`serve_demo` (`offload demo --serve`) starts the same parts and no load: it prints the
URLs of the sign-up page, the inbox (the messages the SMTP server accepted) and the
dashboard, and serves until SIGTERM or Ctrl-C.

SIGTERM (like Ctrl-C) stops every part before the demo exits; a demo killed outright
leaves no orphans either, since its children watch their parent (`ENV_PARENT_PID`)
and stop when it is gone.

Then a few hundred sign-ups go over HTTP while a live display follows the emails, one
user walks through the resend story (`story.py`), and a summary (`summary.py`) puts the
sign-up latency beside the SMTP delay the request did not wait for, with the delivery
accounting: delivered, duplicates, retries, dead letters, expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from offload._redact import redact_url
from offload.app import Offload
from offload.demo import (
    ENV_DASHBOARD_TOKEN,
    ENV_DB,
    ENV_MAILDIR,
    ENV_PARENT_PID,
    ENV_SMTP_HOST,
    ENV_SMTP_PORT,
    DemoError,
)
from offload.demo.smtp import SMTPServer, free_port
from offload.demo.story import Story
from offload.demo.summary import DemoSummary, percentile, render_summary
from offload.envelope import ACTIVE_STATES, JobState

#: `DemoError` lives in `offload.demo`, and `DemoSummary`, `percentile` and
#: `render_summary` in `offload.demo.summary`: re-exported, so their old paths work.
__all__ = ["DemoError", "DemoSummary", "percentile", "render_summary", "run_demo", "serve_demo"]

#: How long the web server may take to answer its first request, in seconds.
STARTUP_TIMEOUT_S = 30.0
#: How long a process gets to exit after SIGTERM before it is killed, in seconds.
STOP_TIMEOUT_S = 15.0
#: How often the live display polls the broker and the SMTP server, in seconds.
REFRESH_S = 0.1
#: Workers look for due retries this often (seconds); the SQLite broker wakes workers
#: for new jobs by itself, but a retry that becomes due wakes nobody.
WORKER_POLL_S = 0.1
#: Sign-up requests in flight at once, like that many users clicking "Sign up".
HTTP_CLIENTS = 20
#: Under `--serve`, the SMTP server refuses each message this many times (451) before
#: it accepts it, so every sign-up shows its job fail, retry and succeed.
SERVE_REFUSALS = 2


@dataclass(frozen=True, slots=True)
class _Options:
    signups: int
    workers: int
    concurrency: int
    smtp_delay: float
    failure_rate: float
    max_refusals: int | None
    timeout_s: float
    rate: float


@dataclass(slots=True)
class _Load:
    """The sign-up load as it happens: latencies of 201s, and the users created."""

    latencies: list[float] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    failures: int = 0
    done: bool = False


@dataclass(frozen=True, slots=True)
class _Snapshot:
    active: int
    finished: int
    dead: int
    expired: int


def run_demo(
    *,
    signups: int = 300,
    workers: int = 2,
    concurrency: int = 20,
    smtp_delay: float = 0.25,
    failure_rate: float = 0.2,
    url: str | None = None,
    workdir: str | Path | None = None,
    console: Console | None = None,
    rate: float = 100.0,
    max_refusals: int | None = None,
    timeout: float = 300.0,
) -> DemoSummary:
    """Run the whole demo and return its measurements (printed to `console` as well).

    Args:
        signups: sign-ups to drive over HTTP.
        rate: sign-ups started per second (at most `HTTP_CLIENTS` in flight).
        workers: worker processes; `concurrency` jobs run at once in each.
        smtp_delay: seconds the SMTP server takes per message.
        failure_rate: fraction of messages the SMTP server refuses with a 451.
        url: broker URL (default: a SQLite file in `workdir`); its broker should hold
            no jobs yet, since the accounting counts every job it holds.
        workdir: where the databases and process logs go (default: a new temp dir);
            an existing one must not hold the users of an earlier run.
        max_refusals: refuse one message at most this many times (None: no limit);
            tests set it below the task's attempts so no email can die by bad luck.
        timeout: seconds to wait for every email before giving up.

    Raises:
        DemoError: the web server or a worker did not start, or `url` names a broker
            that other processes cannot share (`memory://`).
    """
    options = _Options(
        signups, workers, concurrency, smtp_delay, failure_rate, max_refusals, timeout, rate
    )
    demo = _make_demo(options, url, workdir, console, serve=False)
    try:
        return asyncio.run(demo.run())
    except asyncio.CancelledError:
        if demo.signalled is None:
            raise
        raise DemoError(f"stopped by {demo.signalled}; every part was stopped") from None


def serve_demo(
    *,
    workers: int = 2,
    concurrency: int = 20,
    smtp_delay: float = 0.25,
    url: str | None = None,
    workdir: str | Path | None = None,
    console: Console | None = None,
) -> str:
    """Start every part of the demo and serve until SIGTERM or Ctrl-C, for a person:
    the sign-up page, the inbox page and the dashboard (their URLs are printed). The
    SMTP server refuses each message `SERVE_REFUSALS` times before accepting it.

    Returns:
        The name of the signal that stopped it; every part was stopped first.

    Raises:
        DemoError: a part did not start, or exited while serving.
    """
    options = _Options(1, workers, concurrency, smtp_delay, 1.0, SERVE_REFUSALS, 0.0, 1.0)
    demo = _make_demo(options, url, workdir, console, serve=True)
    try:
        asyncio.run(demo.serve())
    except asyncio.CancelledError:
        if demo.signalled is None:
            raise
    return demo.signalled or "exit"


def _make_demo(
    options: _Options,
    url: str | None,
    workdir: str | Path | None,
    console: Console | None,
    *,
    serve: bool,
) -> _Demo:
    if url is not None and not Offload(url).broker.capabilities.cross_process:
        raise DemoError(
            f"{redact_url(url)} cannot be shared by the demo's processes; use sqlite://"
        )
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="offload-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    maildir = None
    if serve:
        maildir = root / "mail"
        maildir.mkdir(exist_ok=True)
    broker_url = url or f"sqlite:///{root / 'offload.db'}"
    return _Demo(options, root, broker_url, console or Console(), maildir)


class _Demo:
    """One run: owns the SMTP server, the processes, and the measurements."""

    def __init__(
        self, options: _Options, root: Path, url: str, console: Console, maildir: Path | None
    ) -> None:
        self.options = options
        self.root = root
        self.url = url
        self.console = console
        self.maildir = maildir
        self.smtp = SMTPServer(
            delay_s=options.smtp_delay,
            failure_rate=options.failure_rate,
            max_refusals=options.max_refusals,
            maildir=maildir,
        )
        #: Signs in to the dashboard the web app mounts; printed, never on a page.
        self.dashboard_token = secrets.token_urlsafe(18)
        self.web_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.web_port}"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[IO[bytes]] = []
        self.inspector = Offload(url)
        self.load = _Load()
        self.signalled: str | None = None
        self.stopping = False  # the run's `finally` has begun: cancel it no more

    def _on_signal(self, name: str, main: asyncio.Task[DemoSummary]) -> None:
        """SIGTERM or SIGINT cancels the run, so its `finally` stops the processes
        (Python's default SIGTERM would end this process at once and leave them
        running). The cancel is repeated until the run reaches its `finally`: one can
        be swallowed where an awaited call completes in the same instant (Python
        3.11's `wait_for`), and the demo would then run on."""
        self.signalled = self.signalled or name
        if not main.done() and not self.stopping:
            main.cancel()
            asyncio.get_running_loop().call_later(0.5, self._on_signal, name, main)

    def _handle_signals(self) -> None:
        main = asyncio.current_task()
        assert main is not None
        with contextlib.suppress(ValueError):  # not the main thread: no signals here
            for sig in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(sig, self._on_signal, sig.name, main)

    async def serve(self) -> None:
        """Every part, no load: serve a person until a signal cancels this."""
        self._handle_signals()
        self.console.rule("[bold]offload demo --serve")
        self.console.print(f"work directory: {self.root}")
        self.smtp.start()
        try:
            self._start_processes()
            async with httpx.AsyncClient(base_url=self.base_url, timeout=30.0) as client:
                await self._wait_for_web(client)
            await self._wait_for_workers()
            self.console.print(
                f"\n  sign up:   {self.base_url}/\n"
                f"  inbox:     {self.base_url}/inbox\n"
                f"  dashboard: {self.base_url}/dashboard/  "
                f"(sign in with the token {self.dashboard_token})\n\n"
                f"Every email is refused {SERVE_REFUSALS} times (451) before it is "
                "accepted: watch its job retry on the dashboard. Ctrl-C stops everything."
            )
            while True:
                self._check_processes()
                await asyncio.sleep(0.5)
        finally:
            self.stopping = True
            self._stop_processes()
            self.smtp.stop()
            await self.inspector.aclose()

    async def run(self) -> DemoSummary:
        started = time.monotonic()
        self._handle_signals()
        self.console.rule("[bold]offload demo")
        self.console.print(f"work directory: {self.root}")
        self.smtp.start()
        try:
            self._start_processes()
            async with httpx.AsyncClient(base_url=self.base_url, timeout=30.0) as client:
                await self._wait_for_web(client)
                await self._wait_for_workers()
                timed_out = not await self._drive(client)
                counts = await self._snapshot()
                retries = await self._retries()
                mail = self.smtp.stats()
                once = self._users_emailed_once()
                story = await Story(client, self.smtp).run()
        finally:
            self.stopping = True
            # Workers first, while the SMTP server still answers their last sends.
            self._stop_processes()
            self.smtp.stop()
            await self.inspector.aclose()
        summary = DemoSummary(
            signups=self.options.signups,
            accepted=len(self.load.latencies),
            latency_p50_ms=percentile(self.load.latencies, 50) * 1000,
            latency_p99_ms=percentile(self.load.latencies, 99) * 1000,
            smtp_delay_ms=self.options.smtp_delay * 1000,
            failure_rate=self.options.failure_rate,
            delivered=mail.unique,
            users_emailed_once=once,
            duplicates=mail.duplicates,
            retries=retries,
            refused=mail.refused,
            dead=counts.dead,
            expired=counts.expired,
            wall_s=time.monotonic() - started,
            timed_out=timed_out,
            workdir=str(self.root),
            story=tuple(story.lines),
            story_ok=story.ok,
        )
        self.console.print(render_summary(summary))
        return summary

    # -- processes --------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "OFFLOAD_URL": self.url,
            ENV_DB: str(self.root / "users.db"),
            ENV_SMTP_HOST: self.smtp.host,
            ENV_SMTP_PORT: str(self.smtp.port),
            ENV_PARENT_PID: str(os.getpid()),
            ENV_DASHBOARD_TOKEN: self.dashboard_token,
            **({ENV_MAILDIR: str(self.maildir)} if self.maildir is not None else {}),
        }

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.root / f"{name}.log").open("wb")
        self.logs.append(log)
        self.processes.append(
            subprocess.Popen(argv, env=self._env(), stdout=log, stderr=subprocess.STDOUT)
        )

    def _start_processes(self) -> None:
        """The web server, then the workers; their output goes to `<workdir>/*.log`."""
        self._spawn("web", _web_argv(self.web_port))
        for i in range(self.options.workers):
            self._spawn(f"worker-{i + 1}", _worker_argv(self.options.concurrency))
        self.console.print(
            f"started: SMTP server on :{self.smtp.port} "
            f"({self.options.smtp_delay * 1000:.0f} ms per message, "
            f"{self.options.failure_rate:.0%} refused with 451), web app on "
            f":{self.web_port}, {self.options.workers} workers x "
            f"{self.options.concurrency} concurrent jobs\n"
            f"dashboard: {self.base_url}/dashboard/ (sign in with the token "
            f"{self.dashboard_token})"
        )

    def _stop_processes(self) -> None:
        """SIGTERM everything (workers finish running jobs), then wait; kill stragglers."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.close()

    def _check_processes(self) -> None:
        for proc, log in zip(self.processes, self.logs, strict=True):
            if proc.poll() is not None:
                raise DemoError(
                    f"{Path(log.name).stem} exited with code {proc.returncode}; "
                    f"see {log.name}:\n{_tail(Path(log.name))}"
                )

    async def _wait_for_web(self, client: httpx.AsyncClient) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_processes()
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
        raise DemoError(f"the web server did not answer within {STARTUP_TIMEOUT_S:.0f} s")

    async def _wait_for_workers(self) -> None:
        """Wait until every worker has registered, so the load meets a running system
        (and the sign-ups are not measured against the workers' start-up)."""
        broker = await self.inspector.connected_broker()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while len(await broker.workers()) < self.options.workers:
            if time.monotonic() > deadline:
                raise DemoError(f"the workers did not start within {STARTUP_TIMEOUT_S:.0f} s")
            self._check_processes()
            await asyncio.sleep(0.05)

    # -- the load ---------------------------------------------------------------------

    async def _drive(self, client: httpx.AsyncClient) -> bool:
        """Sign everyone up while the display follows the emails; False on timeout."""
        with _progress(self.console) as progress:
            signed = progress.add_task("sign-ups answered", total=self.options.signups, note="")
            mailed = progress.add_task("emails delivered", total=self.options.signups, note="")
            sender = asyncio.create_task(self._sign_up_all(client, progress, signed))
            try:
                return await self._follow(progress, mailed)
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender

    async def _sign_up_all(
        self, client: httpx.AsyncClient, progress: Progress, bar: TaskID
    ) -> None:
        """Users arrive at `rate` per second (an open loop, like real traffic), with at
        most `HTTP_CLIENTS` requests in flight.

        A closed loop (every client firing again the moment it is answered) would
        measure how many requests per second this machine's HTTP stack can serve, not
        whether a sign-up waits for its email.
        """
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(HTTP_CLIENTS)
        start = loop.time()

        async def user(i: int) -> None:
            try:
                await self._sign_up(client, i)
                progress.advance(bar)
            finally:
                slots.release()

        users = []
        for i in range(self.options.signups):
            await asyncio.sleep(max(start + i / self.options.rate - loop.time(), 0.0))
            await slots.acquire()
            users.append(asyncio.create_task(user(i)))
        await asyncio.gather(*users)
        self.load.done = True

    async def _sign_up(self, client: httpx.AsyncClient, i: int) -> None:
        email = f"user{i:04d}@example.com"
        start = time.perf_counter()
        try:
            response = await client.post("/signup", json={"email": email, "name": f"User {i}"})
        except httpx.HTTPError:
            self.load.failures += 1
            return
        elapsed = time.perf_counter() - start
        if response.status_code == 201:
            self.load.latencies.append(elapsed)
            self.load.emails.append(email)
        else:
            self.load.failures += 1

    async def _follow(self, progress: Progress, bar: TaskID) -> bool:
        """Refresh the display until every accepted sign-up's job has finished."""
        deadline = time.monotonic() + self.options.timeout_s
        while True:
            snap = await self._snapshot()
            mail = self.smtp.stats()
            progress.update(
                bar,
                completed=mail.unique,
                note=f"retries {mail.refused}  dead {snap.dead}  expired {snap.expired}",
            )
            accepted = len(self.load.latencies)
            if self.load.done and snap.active == 0 and snap.finished >= accepted:
                return True
            if time.monotonic() > deadline:
                return False
            self._check_processes()
            await asyncio.sleep(REFRESH_S)

    # -- accounting -------------------------------------------------------------------

    async def _snapshot(self) -> _Snapshot:
        broker = await self.inspector.connected_broker()
        states: dict[JobState, int] = dict.fromkeys(JobState, 0)
        for stats in (await broker.counts()).values():
            for state, n in stats.states.items():
                states[state] += n
        active = sum(states[s] for s in ACTIVE_STATES)
        return _Snapshot(
            active=active,
            finished=sum(states.values()) - active,
            dead=states[JobState.DEAD],
            expired=states[JobState.EXPIRED],
        )

    async def _retries(self) -> int:
        """Attempts beyond the first, summed over every job the broker holds."""
        broker = await self.inspector.connected_broker()
        total, cursor = 0, None
        while True:
            page = await broker.list_jobs(limit=500, cursor=cursor)
            total += sum(max(job.attempt - 1, 0) for job in page.items)
            if page.cursor is None:
                return total
            cursor = page.cursor

    def _users_emailed_once(self) -> int:
        return sum(len(self.smtp.handler.inbox(e).messages) == 1 for e in self.load.emails)


# -- helpers ----------------------------------------------------------------------------


def _web_argv(port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "offload.demo.web:web",
        "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip


def _worker_argv(concurrency: int) -> list[str]:
    return [
        sys.executable, "-m", "offload", "worker", "offload.demo.signup:app",
        "--concurrency", str(concurrency), "--poll", str(WORKER_POLL_S),
    ]  # fmt: skip


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@contextlib.contextmanager
def _progress(console: Console) -> Iterator[Progress]:
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        yield progress
