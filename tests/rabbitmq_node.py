"""A RabbitMQ node of a test's own, on other ports than the shared server's, so that a
test may kill -9 and restart it (never the shared one). Its data and logs live in the
test's temporary directory; it runs without plugins."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

#: The server script run directly (the packaged wrapper would switch users).
SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
#: Starting a node takes 5 to 60 s on a loaded machine.
START_TIMEOUT_S = 180.0


class RabbitNode:
    """One node: `start()` (again after `kill()`, on the same data), `kill()` (SIGKILL
    of the Erlang VM: no shutdown, as a crash or an OOM kill), `url`."""

    def __init__(self, base: Path, *, port: int = 5673, dist_port: int = 25673) -> None:
        self.base, self.port = base, port
        self.name = f"offload-chaos-{port}@localhost"
        base.mkdir(parents=True, exist_ok=True)
        (base / "env.conf").write_text(f"NODENAME={self.name}\nERL_EPMD_ADDRESS=127.0.0.1\n")
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n"
        )
        (base / "enabled_plugins").write_text("[].\n")
        self.env = {
            **os.environ,
            "RABBITMQ_CONF_ENV_FILE": str(base / "env.conf"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "pid"),
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"amqp://guest:guest@127.0.0.1:{port}/"

    def start(self) -> None:
        (self.base / "pid").unlink(missing_ok=True)
        with open(self.base / "out.txt", "ab") as out:
            self.process = subprocess.Popen(
                [SERVER],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"RabbitMQ node exited; see {self.base / 'out.txt'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ node not up in {START_TIMEOUT_S} s")
            time.sleep(0.5)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM (and its wrapper), and wait until they are gone."""
        if self.process is None:
            return
        pid_file = self.base / "pid"
        if pid_file.exists() and pid_file.read_text().strip():
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(30)
        self.process = None
        while self._answers():
            time.sleep(0.1)
