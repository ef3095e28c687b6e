"""A worker and a delay service outlive a Redis restart (a real redis-server, killed)."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from csp_bus import open_layer
from csp_bus.consumers import Message
from csp_bus.delay import DelayService
from csp_bus.embedded import run_workers
from csp_bus.routing import route

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")


class RedisProcess:
    """A private redis-server on a fixed port that the test may stop and start again."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="csp-bus-outage-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    server = RedisProcess()
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


async def test_worker_survives_a_redis_restart(
    redis_process: RedisProcess, until: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="csp_bus")
    handled: list[int] = []

    def consumer(message: Message) -> None:
        handled.append(message["n"])

    url = f"redis://127.0.0.1:{redis_process.port}/0?prefix=outage"
    async with open_layer(url) as layer, trio.open_nursery() as nursery:
        worker = await nursery.start(run_workers, layer, [route("jobs", consumer)])
        service = await nursery.start(DelayService(layer).run)
        await layer.send("jobs", {"n": 1})
        await until(lambda: handled == [1], 10)
        redis_process.stop()
        await trio.sleep(0.5)  # receives fail meanwhile: logged, retried with backoff
        redis_process.start()
        with trio.fail_after(15):
            while True:
                try:
                    await layer.send("jobs", {"n": 2})
                    break
                except Exception:
                    await trio.sleep(0.1)
        await until(lambda: handled == [1, 2], 15)
        # The delay service is alive too.
        await layer.send("asgi.delay", {"channel": "jobs", "content": {"n": 3}, "delay": 10})
        await until(lambda: handled == [1, 2, 3], 15)
        worker.stop()
        service.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert any("receive failed" in m for m in messages)
    assert any("receiving again" in m for m in messages)
