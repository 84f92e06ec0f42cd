"""A local SQS-compatible server for tests: moto's server mode (`moto[server]` from
PyPI), a real process on a free port, so the broker talks HTTP to it exactly as it
would to AWS. Never a mock inside the test process.

moto keeps its queues in memory: `restart()` starts a fresh, empty server on the same
port (what a real SQS never does: SQS is durable). So a restart tests what survives a
lost connection, not what survives the server; see `tests/chaos/test_sqs_faults.py`.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

__all__ = ["MotoServer", "free_tcp_port"]


def free_tcp_port() -> int:
    """A TCP port free now on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoServer:
    """`moto_server` on 127.0.0.1:`port`, its output in `log`; a context manager."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.port = port or free_tcp_port()
        self.log = directory / f"moto-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, prefix: str, **options: str) -> str:
        """An `sqs://` URL for this server, with test credentials and `prefix`."""
        query = "&".join(f"{k}={v}" for k, v in {"region": "us-east-1", "prefix": prefix,
                                                  **options}.items())  # fmt: skip
        return f"sqs://testing:testing@{self.endpoint}/?{query}"

    def start(self) -> None:
        """Start the server and wait until it answers (at most 30 s)."""
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto_server exited: see {self.log}")
            try:
                with urllib.request.urlopen(
                    f"http://{self.endpoint}/moto-api/data.json", timeout=1
                ):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint} within 30 s")

    def stop(self) -> None:
        """Kill the server (SIGKILL: nothing of it survives) and wait for it."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections open, calls hang, as a stalled
        service or a network partition looks to a client."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused server (SIGCONT): it answers the calls that waited."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Kill the server and start an empty one on the same port."""
        self.stop()
        self.start()

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
