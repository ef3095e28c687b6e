"""Fixtures for the WebSocket adapter's end-to-end tests: a real server on 127.0.0.1:0
(HTTP front + WebSocket adapter) over the memory layer, a Trio task standing in for
the application, and a raw wsproto client for what polite clients never send."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from csp_bus.adapters.http import HTTPConfig
from csp_bus.adapters.http import adapter as http_adapter
from csp_bus.adapters.websocket.server import WebSocketServerConfig
from csp_bus.adapters.websocket.server import adapter as ws_adapter
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Event, RejectConnection, RejectData, Request

from csp_bus.errors import LayerClosed
from csp_bus.layers import open_layer
from csp_bus.server import AccessLog, ServerConfig, ServerRuntime, run_server

CHANNELS = ("websocket.connect", "websocket.receive", "websocket.disconnect")


@dataclass
class WSServer:
    runtime: ServerRuntime
    layer: Any
    port: int
    log: io.StringIO
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    def url(self, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def record(self, channel: str, message: dict[str, Any]) -> None:
        self.received.append((channel, message))
        self.changed.set()
        self.changed = trio.Event()

    def of(self, channel: str) -> list[dict[str, Any]]:
        return [message for name, message in self.received if name == channel]

    async def wait_for(self, channel: str, count: int = 1, limit: float = 5) -> None:
        with trio.fail_after(limit):
            while len(self.of(channel)) < count:
                await self.changed.wait()


App = Callable[[WSServer, str, dict[str, Any]], Awaitable[None]]


async def echo_app(server: WSServer, channel: str, message: dict[str, Any]) -> None:
    """Accept every connection; echo every frame."""
    layer = server.layer
    if channel == "websocket.connect":
        await layer.send(message["reply_channel"], {"accept": True})
    elif channel == "websocket.receive":
        # send_wait: a burst of echoes may outrun the reply dispatcher for a moment
        if message["text"] is not None:
            await layer.send_wait(message["reply_channel"], {"text": message["text"]}, timeout=5)
        else:
            await layer.send_wait(message["reply_channel"], {"bytes": message["bytes"]}, timeout=5)


async def start(
    nursery: trio.Nursery,
    app: App | None = echo_app,
    *,
    ws: WebSocketServerConfig | None = None,
    layer_url: str = "memory://",
    channels: tuple[str, ...] = CHANNELS,
    server: ServerConfig | None = None,
    http: HTTPConfig | None = None,
) -> WSServer:
    """A layer, a server with the websocket adapter, and (unless ``app`` is None) a
    task receiving ``channels`` and running ``app`` for each message, in order."""
    holder: list[Any] = []

    async def hold_layer(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with open_layer(layer_url) as layer:
            holder.append(layer)
            task_status.started()
            await trio.sleep_forever()

    await nursery.start(hold_layer)
    layer = holder[0]
    log = io.StringIO()
    runtime: ServerRuntime = await nursery.start(
        lambda task_status: run_server(
            layer,
            server or ServerConfig(binds=(("127.0.0.1", 0),), graceful_timeout=5),
            [
                (http_adapter, http or HTTPConfig(serve_requests=False)),
                (ws_adapter, ws or WebSocketServerConfig()),
            ],
            access_log=AccessLog(log),
            task_status=task_status,
        )
    )
    port = int(runtime.addresses[0].rpartition(":")[2])
    served = WSServer(runtime, layer, port, log)

    if app is not None:

        async def consume() -> None:
            while True:
                try:
                    channel, message = await layer.receive(*channels)
                except LayerClosed:  # the test is over: the layer closed first
                    return
                served.record(channel, message)
                await app(served, channel, message)

        nursery.start_soon(consume)
    return served


@pytest.fixture
def serve() -> Callable[..., Awaitable[WSServer]]:
    return start


class RawClient:
    """A wsproto client over a Trio TCP stream: frames by hand, reads by hand."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.closed = False
        self.backlog: list[Event] = []

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str = "/",
        headers: list[tuple[bytes, bytes]] | None = None,
        subprotocols: list[str] | None = None,
    ) -> tuple[RawClient, Event]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = cls(stream)
        await stream.send_all(
            client.ws.send(
                Request(
                    host=f"127.0.0.1:{port}",
                    target=path,
                    extra_headers=headers or [],
                    subprotocols=subprotocols or [],
                )
            )
        )
        while True:
            events = await client.events(1)
            if not events:
                raise ConnectionError("the server closed during the handshake")
            event = events[0]
            client.backlog.extend(events[1:])
            if isinstance(event, AcceptConnection | RejectConnection):
                return client, event

    async def events(self, want: int = 1, limit: float = 5) -> list[Event]:
        """Read until at least ``want`` events (or the server closes)."""
        got: list[Event] = list(self.backlog)
        self.backlog.clear()
        with trio.fail_after(limit):
            while True:
                got.extend(e for e in self.ws.events() if not isinstance(e, RejectData))
                if len(got) >= want or self.closed:
                    return got
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    self.closed = True
                    self.ws.receive_data(None)
                    continue
                self.ws.receive_data(data)

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def wait_closed(self, limit: float = 5) -> bytes:
        """Read (and discard) until EOF; return what was read."""
        received = bytearray()
        with trio.fail_after(limit):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not data:
                    break
                received += data
        return bytes(received)

    async def aclose(self) -> None:
        await self.stream.aclose()


@pytest.fixture
def raw() -> type[RawClient]:
    return RawClient


@pytest.fixture
def echo() -> App:
    return echo_app
