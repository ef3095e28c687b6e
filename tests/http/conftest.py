"""Fixtures for the HTTP adapter's end-to-end tests: a real server on 127.0.0.1:0 over
the memory layer, and a small Trio consumer standing in for workers."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from csp_bus.adapters.http import HTTPConfig, adapter

from csp_bus.layers import open_layer
from csp_bus.server import AccessLog, ServerConfig, ServerRuntime, run_server

App = Callable[[Any, dict[str, Any]], Awaitable[None]]


@dataclass
class Served:
    runtime: ServerRuntime
    layer: Any
    host: str
    port: int
    log: io.StringIO
    requests: list[dict[str, Any]] = field(default_factory=list)
    got_request: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


async def hello(layer: Any, message: dict[str, Any]) -> None:
    await layer.send(
        message["reply_channel"],
        {
            "status": 200,
            "headers": [[b"content-type", b"text/plain"]],
            "content": b"Hello, world!",
        },
    )


async def start(
    nursery: trio.Nursery,
    app: App | None = hello,
    *,
    layer_url: str = "memory://",
    http: HTTPConfig | None = None,
    server: ServerConfig | None = None,
) -> Served:
    """Start a layer, a server and (unless ``app`` is None) a consumer running ``app``
    for every ``http.request``, each in ``nursery``."""
    layer_ready: list[Any] = []

    async def hold_layer(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with open_layer(layer_url) as layer:
            layer_ready.append(layer)
            task_status.started()
            await trio.sleep_forever()

    await nursery.start(hold_layer)
    layer = layer_ready[0]
    log = io.StringIO()
    config = server or ServerConfig(binds=(("127.0.0.1", 0),))
    runtime: ServerRuntime = await nursery.start(
        lambda task_status: run_server(
            layer,
            config,
            [(adapter, http or HTTPConfig())],
            access_log=AccessLog(log),
            task_status=task_status,
        )
    )
    address = runtime.addresses[0] if runtime.addresses else "http://-:0"
    hostport = address.split("://", 1)[1]
    host, _, port = hostport.rpartition(":")
    served = Served(runtime, layer, host.strip("[]"), int(port or 0), log)

    if app is not None:

        async def consume() -> None:
            async with trio.open_nursery() as handlers:
                while True:
                    _, message = await layer.receive("http.request")
                    served.requests.append(message)
                    served.got_request.set()
                    handlers.start_soon(app, layer, message)

        nursery.start_soon(consume)
    return served


@pytest.fixture
def serve() -> Callable[..., Awaitable[Served]]:
    return start


async def raw_request(
    host: str, port: int, data: bytes, *, read_until_close: bool = True, limit: float = 5
) -> bytes:
    """Send raw bytes, return everything the server sends until it closes."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(data)
        received = bytearray()
        with trio.fail_after(limit):
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                received += chunk
                if not read_until_close and b"\r\n\r\n" in received:
                    break
        return bytes(received)


@pytest.fixture
def raw() -> Callable[..., Awaitable[bytes]]:
    return raw_request
