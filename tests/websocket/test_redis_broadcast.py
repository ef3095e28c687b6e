"""Group broadcast across two ``csp-bus serve`` processes sharing a Redis layer.

Client A talks to server 1, client B to server 2; a message A sends reaches both,
through ``send_group`` on the shared layer and each server's own reply prefix.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

pytestmark = pytest.mark.redis

APP = """
from csp_bus.consumers import Group
from csp_bus.routing import route


def connect(message):
    Group("room").add(message.reply_channel)
    message.reply_channel.send({"accept": True})


def receive(message):
    Group("room").send({"text": message["text"]})


def disconnect(message):
    Group("room").discard(message.reply_channel)


routes = [
    route("websocket.connect", connect),
    route("websocket.receive", receive),
    route("websocket.disconnect", disconnect),
]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], limit: float = 15) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read() if process.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@pytest.fixture
def two_servers(redis_url: str, tmp_path: Path) -> Iterator[tuple[int, int]]:
    (tmp_path / "bcast.py").write_text(APP)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    ports = (free_port(), free_port())
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "csp_bus",
                "serve",
                "--adapter",
                "websocket",
                "--app",
                "bcast:routes",
                "--layer",
                redis_url,
                "--bind",
                f"127.0.0.1:{port}",
                "--no-access-log",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for port in ports
    ]
    try:
        for port, process in zip(ports, processes, strict=True):
            wait_listening(port, process)
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()


def test_group_broadcast_across_two_server_processes(two_servers: tuple[int, int]) -> None:
    first, second = two_servers
    with (
        connect(f"ws://127.0.0.1:{first}/room/") as alice,
        connect(f"ws://127.0.0.1:{second}/room/") as bob,
    ):
        alice.send("hello from server 1")
        assert alice.recv(timeout=10) == "hello from server 1"
        assert bob.recv(timeout=10) == "hello from server 1"
        bob.send("and back from server 2")
        assert alice.recv(timeout=10) == "and back from server 2"
        assert bob.recv(timeout=10) == "and back from server 2"
