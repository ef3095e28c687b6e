"""Real ``redis-server`` processes the Redis tests start, stop and restart themselves.

``redis_servers`` is a factory: ``server = redis_servers.start("--requirepass", "pw")``
gives a :class:`RedisProcess` on a free port (no persistence, a private directory),
stopped at the end of the test. The machine's shared Redis is only ever touched through
the ``redis_url`` fixture's private prefix.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(port: int, password: str | None = None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            if password:
                sock.sendall(f"AUTH {password}\r\n".encode())
                sock.recv(64)
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
            # a server that wants a password is up too
            return reply.startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisProcess:
    """One ``redis-server`` on 127.0.0.1; ``stop()`` then ``start()`` keeps its port."""

    def __init__(self, args: tuple[str, ...], workdir: Path, port: int | None = None) -> None:
        self.args = args
        self.port = port or free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        assert REDIS_SERVER is not None
        return [
            REDIS_SERVER,
            *self.args,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
        ]

    def start(self, *, password: str | None = None, wait: bool = True) -> RedisProcess:
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if wait:
            self.wait_ready(password)
        return self

    def wait_ready(self, password: str | None = None) -> None:
        deadline = time.monotonic() + 10
        while not answers(self.port, password):
            assert self.process is not None
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server {self.args} on {self.port} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def cli(self, *args: str, stdin: bytes | None = None) -> bytes:
        assert REDIS_CLI is not None
        return subprocess.run(
            [REDIS_CLI, "-p", str(self.port), *args],
            input=stdin,
            capture_output=True,
            check=True,
            timeout=10,
        ).stdout


class RedisServers:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[RedisProcess] = []

    def new(self, *args: str, port: int | None = None) -> RedisProcess:
        workdir = Path(tempfile.mkdtemp(prefix="redis-", dir=self.root))
        server = RedisProcess(args, workdir, port)
        self.started.append(server)
        return server

    def start(self, *args: str, password: str | None = None) -> RedisProcess:
        return self.new(*args).start(password=password)

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[RedisServers]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    servers = RedisServers(tmp_path)
    try:
        yield servers
    finally:
        servers.stop_all()
