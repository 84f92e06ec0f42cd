"""A throwaway local Redis Cluster (and single servers) for tests: real processes on
free ports, in a temporary directory, stopped when the context ends."""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

__all__ = ["RedisProcess", "free_port", "start_cluster"]


_NO_REPLICAS = ("--cluster-replicas", "0")


def free_port() -> int:
    """A TCP port free now, whose cluster bus port (+10000) is free too."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 >= 65536:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _cli(port: int, *args: str, timeout: float = 10) -> str:
    done = subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.stdout


def _server_pid(port: int, password: str | None = None) -> int | None:
    """The pid of the redis-server answering on `port`, None if none answers."""
    auth = ["--no-auth-warning", "-a", password] if password else []
    for line in _cli(port, *auth, "info", "server").splitlines():
        if line.startswith("process_id:"):
            return int(line.partition(":")[2])
    return None


def _loaded(port: int, password: str | None = None) -> bool:
    """Whether the server has its data loaded: a restart with an AOF answers `INFO`
    at once but every command with LOADING until it has read the file back (a producer
    then gets `BrokerUnavailable`, as it should; a test that restarts it wants it back)."""
    auth = ["--no-auth-warning", "-a", password] if password else []
    return "loading:0" in _cli(port, *auth, "info", "persistence")


class RedisProcess:
    """One `redis-server` without persistence, stopped by `stop()`; `start()` again
    brings it back on the same port (for restart tests)."""

    def __init__(self, directory: Path, port: int | None = None, *extra: str) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed")
        self.directory = directory
        self.port = port or free_port()
        self.extra = extra
        #: The `--requirepass` among `extra`, so that start() can ask the server its pid.
        self.password = next(
            (v for k, v in itertools.pairwise(extra) if k == "--requirepass"), None
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10) -> RedisProcess:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        args += ["--dir", str(self.directory), *self.extra]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        # Ask for the answering server's pid, not just a PONG: a port found free may be
        # taken meanwhile by another test run's server, and ours then exits at once.
        while _server_pid(self.port, self.password) != self.process.pid or not _loaded(
            self.port, self.password
        ):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


class Cluster:
    def __init__(self, nodes: list[RedisProcess]) -> None:
        self.nodes = nodes
        self.ports = [node.port for node in nodes]

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(directory: Path, masters: int = 3, timeout: float = 30) -> Cluster:
    """Start `masters` cluster-enabled servers, join them with `redis-cli --cluster
    create`, and wait until every node reports `cluster_state:ok`."""
    nodes: list[RedisProcess] = []
    try:
        for _ in range(masters):
            port = free_port()
            config = f"--cluster-config-file nodes-{port}.conf"
            node = RedisProcess(directory, port, "--cluster-enabled", "yes", *config.split())
            nodes.append(node.start())
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, *_NO_REPLICAS, "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if created.returncode != 0:
            output = (created.stdout + created.stderr)[-500:]
            raise RuntimeError(f"redis-cli --cluster create failed: {output}")
        deadline = time.monotonic() + timeout
        while not all("cluster_state:ok" in _cli(n.port, "cluster", "info") for n in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.05)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return Cluster(nodes)
