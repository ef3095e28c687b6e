"""Trio glue: ``csp-bus serve --adapter websocket`` around :mod:`.protocol`.

The WebSocket adapter shares the HTTP listener (``requires = ("http",)``): the HTTP
front parses each request head (with its header size limit and timeout) and hands
``Upgrade: websocket`` requests to :meth:`WebSocketAdapter.handle_upgrade`. With
``--adapter websocket`` alone, plain HTTP requests get 404.

Per connection, three small tasks share one :class:`~.protocol.WebSocketConnection`:

* the *reader* reads the socket and sends ``websocket.receive``. It waits
  (``send_wait``) while that channel is full, and reading the socket stops meanwhile:
  TCP flow control slows the client down instead of anything being dropped. Still
  full after ``--ws-receive-timeout``: close 1013 (try again later).
* the *replier* takes what the application sends on ``reply_channel`` and never
  blocks on the socket, so one slow client cannot hold up the process's reply
  dispatcher. It also runs the handshake timeout (504), keep-alive pings, and the wait
  for the peer's Close.
* the *writer* writes. Bytes waiting for a slow client are bounded by
  ``--ws-max-send-buffer`` (one message is always let through, whatever its size):
  over it, the pending frames are dropped and the connection is closed with 1008
  (policy violation: the client does not read).

Shutdown: when the server stops, every connection is closed with 1001 (going away),
or with ``runtime.extensions["websocket.shutdown_code"]`` when a restarting server set
it (1012). Handshakes still waiting for the application are refused with 503.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import trio

from csp_bus.errors import ChannelFull, InvalidMessage, LayerError, UsageError
from csp_bus.server.adapter import Adapter
from csp_bus.server.config import ServerConfig, parse_positive_size, parse_seconds
from csp_bus.server.dispatcher import ReplyChannel, ReplyDispatcher, ReplyOverrun
from csp_bus.server.runtime import ServerRuntime

from ..http import UpgradeRequest, front, linger_close
from .protocol import (
    NEED_DATA,
    ConnectRequest,
    Disconnected,
    InvalidReply,
    MessageReceived,
    State,
    WebSocketConfig,
    WebSocketConnection,
    WebSocketProtocolError,
)

__all__ = ["WebSocketAdapter", "WebSocketServerConfig", "adapter"]

logger = logging.getLogger("csp_bus.adapters.websocket")

_READ_SIZE = 64 * 1024


@dataclass(frozen=True, kw_only=True)
class WebSocketServerConfig:
    """The adapter's options (seconds; ``math.inf`` disables a timeout)."""

    protocol: WebSocketConfig = field(default_factory=WebSocketConfig)
    #: how long a handshake waits for the application's accept/reject (then 504)
    handshake_timeout: float = 5.0
    #: how long to wait for the peer's Close after ours, and to flush the last frames
    close_timeout: float = 5.0
    #: how long the reader waits for room in a full ``websocket.receive`` (then 1013)
    receive_timeout: float = 10.0
    #: bytes of outgoing frames held for a client that does not read (then 1008)
    max_send_buffer: int = 4 * 1024 * 1024
    #: messages buffered between the reply dispatcher and one connection
    reply_buffer: int = 64
    #: WebSocket connections at once; more are refused with 503 (``None``: only the
    #: server's ``--max-connections`` applies)
    max_connections: int | None = None
    connect_channel: str = "websocket.connect"
    receive_channel: str = "websocket.receive"
    disconnect_channel: str = "websocket.disconnect"

    def __post_init__(self) -> None:
        for name in ("handshake_timeout", "close_timeout", "receive_timeout"):
            value = getattr(self, name)
            if math.isnan(value) or value <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_send_buffer < 1024:
            raise ValueError("max_send_buffer must be at least 1024 bytes")
        if self.reply_buffer < 1:
            raise ValueError("reply_buffer must be at least 1")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")


class _Session:
    """One WebSocket connection: the three tasks and what they share."""

    # Thousands of idle connections each hold one: slots keep them small.
    __slots__ = (
        "broken",
        "closing_deadline",
        "config",
        "connect_delivered",
        "ending",
        "handshake_deadline",
        "handshake_written",
        "kicked",
        "layer",
        "pending",
        "pending_size",
        "read_scope",
        "reply",
        "server",
        "status",
        "stream",
        "upgrade",
        "wait_scope",
        "wake_writer",
        "write_scope",
        "ws",
    )

    def __init__(
        self,
        server: _Server,
        upgrade: UpgradeRequest,
        reply: ReplyChannel,
        ws: WebSocketConnection,
    ) -> None:
        self.server = server
        self.upgrade = upgrade
        self.stream = upgrade.stream
        self.reply = reply
        self.ws = ws
        self.layer = server.runtime.layer
        self.config = server.config
        #: frames waiting for the writer (a list: usually empty, and a deque costs more)
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.wake_writer = trio.lowlevel.ParkingLot()
        self.write_scope: trio.CancelScope | None = None
        self.handshake_written = False
        #: the socket failed: nothing more can be written
        self.broken = False
        #: the protocol is CLOSED: the writer flushes what is left, then the session ends
        self.ending = False
        self.read_scope: trio.CancelScope | None = None
        self.kicked = False
        #: websocket.connect reached the bus, so websocket.disconnect is owed
        self.connect_delivered = False
        self.wait_scope: trio.CancelScope | None = None
        self.handshake_deadline = math.inf
        self.closing_deadline = math.inf
        self.status = 0  # for the access log

    # -- output, never blocking ------------------------------------------------------------

    def flush(self) -> None:
        """Move what the protocol wants to send to the writer's queue."""
        data = self.ws.data_to_send()
        if data:
            self.pending.append(data)
            self.pending_size += len(data)
            self.wake_writer.unpark_all()
            # One message is always let through, however big (the bus bounds it):
            # the limit is on what piles up behind it.
            if self.pending_size > self.config.max_send_buffer and len(self.pending) > 1:
                self.overflow()
        state = self.ws.state
        if state is State.CLOSING and self.closing_deadline == math.inf:
            self.closing_deadline = trio.current_time() + self.config.close_timeout
            self.nudge()
        elif state is State.CLOSED and not self.ending:
            self.end()

    def end(self) -> None:
        """The protocol is done: let the writer flush (for ``close_timeout`` at most)."""
        self.ending = True
        self.wake_writer.unpark_all()
        if self.write_scope is not None:
            self.write_scope.deadline = min(
                self.write_scope.deadline, trio.current_time() + self.config.close_timeout
            )

    def overflow(self) -> None:
        # The client reads slower than the application writes. Frames not yet handed to
        # the socket are dropped whole (the one being written is finished), and a
        # Close 1008 goes after it: a bounded buffer, never unbounded growth.
        logger.info(
            "%s: client does not read (%d bytes pending); closing with 1008",
            self.ws.client,
            self.pending_size,
        )
        self.pending.clear()
        self.pending_size = 0
        if self.handshake_written:
            self.ws.close(1008, "client too slow to read")
            data = self.ws.data_to_send()
            self.pending.append(data)
            self.pending_size = len(data)
        else:
            self.broken = True  # the 101 itself is stuck: just drop the connection
        self.ws.connection_lost()

    def nudge(self) -> None:
        """Make the replier recompute its deadline (shutdown, closing, new state)."""
        if self.wait_scope is not None:
            self.wait_scope.deadline = trio.current_time()

    # -- the three tasks -------------------------------------------------------------------

    async def writer(self) -> None:
        """Write pending frames until the session ends (runs as the nursery's body)."""
        with trio.CancelScope() as self.write_scope:
            if self.ending:
                self.write_scope.deadline = trio.current_time() + self.config.close_timeout
            while not self.broken:
                if not self.pending:
                    if self.ending:
                        break
                    await self.wake_writer.park()
                    continue
                pending = self.pending
                data = pending[0] if len(pending) == 1 else b"".join(pending)
                pending.clear()
                self.pending_size = 0
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.broken = True
                    self.ws.connection_lost()
                    break
                self.handshake_written = True
        self.write_scope = None

    async def reader(self) -> None:
        # The reader is the only task that takes events out of the protocol (until the
        # session ends), so they reach the bus in order. While the handshake waits for
        # the application, its read can be cancelled ("kicked") so that frames sent
        # before the accept are handed over as soon as it comes.
        ws = self.ws
        while True:
            data: bytes | bytearray | None = None
            if not self.kicked:
                try:
                    if ws.state is State.CONNECTING:
                        with trio.CancelScope() as self.read_scope:
                            data = await self.stream.receive_some(_READ_SIZE)
                        self.read_scope = None
                    else:
                        data = await self.stream.receive_some(_READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
            self.kicked = False
            if data is not None:
                ws.receive_data(data)
            await self.handle_events()
            self.flush()
            if data == b"":
                return

    def kick_reader(self) -> None:
        """Make the reader look at the protocol's events now (a cancelled
        ``receive_some`` loses no data)."""
        self.kicked = True
        if self.read_scope is not None:
            self.read_scope.cancel()

    async def handle_events(self, *, final: bool = False) -> None:
        ws = self.ws
        while True:
            try:
                event = ws.next_event()
            except WebSocketProtocolError as exc:
                logger.debug("%s: %s (closing with %s)", ws.client, exc, exc.hint)
                self.flush()
                continue
            if event is NEED_DATA:
                return
            if isinstance(event, MessageReceived):
                if final:  # the connection is gone: no waiting for room any more
                    with contextlib.suppress(ChannelFull, InvalidMessage, LayerError):
                        await self.layer.send(self.config.receive_channel, event.message)
                else:
                    await self.send_receive(event.message)
            elif isinstance(event, Disconnected) and self.connect_delivered:
                await self.send_disconnect(event.message)

    async def send_receive(self, message: dict[str, Any]) -> None:
        try:
            await self.layer.send_wait(
                self.config.receive_channel, message, timeout=self.config.receive_timeout
            )
        except ChannelFull:
            logger.warning(
                "%s is full for %gs: closing %s with 1013",
                self.config.receive_channel,
                self.config.receive_timeout,
                self.ws.client,
            )
            self.ws.close(1013, "server busy, try again later")
            self.flush()
        except InvalidMessage:  # MessageTooLarge: over the layer's message size limit
            self.ws.close(1009, "message too big for the bus")
            self.flush()
        except LayerError as exc:
            logger.warning("cannot send %s: %s", self.config.receive_channel, exc)
            self.ws.close(1011, "the bus is unavailable")
            self.flush()

    async def send_disconnect(self, message: dict[str, Any]) -> None:
        # The application cleans up (group_discard) on this message: deliver it even
        # when the connection is being cancelled, but never wait for ever.
        with trio.CancelScope(shield=True), trio.move_on_after(self.config.close_timeout):
            try:
                await self.layer.send_wait(
                    self.config.disconnect_channel, message, timeout=self.config.close_timeout
                )
            except (ChannelFull, LayerError, InvalidMessage) as exc:
                logger.warning(
                    "websocket.disconnect for %s lost: %s", message["reply_channel"], exc
                )

    def next_deadline(self) -> float:
        state = self.ws.state
        if state is State.CONNECTING:
            return self.handshake_deadline
        if state is State.CLOSING:
            return self.closing_deadline
        deadline = self.ws.next_deadline()
        return math.inf if deadline is None else deadline

    async def replier(self) -> None:
        ws = self.ws
        while ws.state is not State.CLOSED:
            message = None
            with trio.CancelScope(deadline=self.next_deadline()) as scope:
                self.wait_scope = scope
                try:
                    message = await self.reply.receive()
                except ReplyOverrun:
                    # The dispatcher gave up on us: replies came faster than we took
                    # them. Close without waiting for the (equally slow) peer.
                    ws.close(1008, "client too slow")
                    ws.connection_lost()
            self.wait_scope = None
            if message is not None:
                self.apply(message)
            # (apply() and on_deadline() change ws.state: mypy's narrowing from the loop
            # condition does not see that.)
            elif (
                ws.state is not State.CLOSED  # type: ignore[comparison-overlap]
                and trio.current_time() >= self.next_deadline()
            ):
                self.on_deadline(trio.current_time())
            self.flush()

    def on_deadline(self, now: float) -> None:
        ws = self.ws
        if ws.state is State.CONNECTING:
            logger.info("%s: no answer to websocket.connect in time: 504", ws.client)
            ws.reject(504, "the application did not answer in time")
            self.status = 504
        elif ws.state is State.CLOSING:
            ws.connection_lost()
        else:
            ws.tick(now)

    def apply(self, message: dict[str, Any]) -> None:
        ws = self.ws
        was_connecting = ws.state is State.CONNECTING
        try:
            ws.reply(message)
        except InvalidReply as exc:
            logger.error("bad reply on %s: %s", self.reply.name, exc)
            if ws.state is State.CONNECTING:
                ws.reject(500, "the application sent an invalid answer")
        if was_connecting and ws.state is not State.CONNECTING:
            self.kick_reader()  # frames that came before the accept, or a disconnect
            self.status = 101 if ws.rejected_status is None else ws.rejected_status
            if ws.state is State.OPEN:
                ws.tick(trio.current_time())  # start the keep-alive clock

    def shutdown(self, code: int) -> None:
        """Server shutdown: close with ``code`` (pending handshakes get 503)."""
        if self.ws.state in (State.CONNECTING, State.OPEN):
            self.ws.close(code, "server shutting down" if code == 1001 else "server restarting")
            if self.status == 0 and self.ws.rejected_status is not None:
                self.status = self.ws.rejected_status
            self.flush()
            self.nudge()

    # -- the whole connection ---------------------------------------------------------------

    async def connect(self, event: ConnectRequest) -> None:
        """Send ``websocket.connect`` (or refuse the handshake when the bus cannot)."""
        ws = self.ws
        message = event.message
        base = self.upgrade.message  # what the HTTP front resolved (proxy headers)
        message["client"] = base.get("client", message["client"])
        message["server"] = base.get("server", message["server"])
        try:
            await self.layer.send(self.config.connect_channel, message)
            self.connect_delivered = True
        except ChannelFull:
            ws.reject(503, f"{self.config.connect_channel} is full; try again later")
        except InvalidMessage:
            ws.reject(431, "request too large for the bus")
        except LayerError as exc:
            logger.warning("cannot send %s: %s", self.config.connect_channel, exc)
            ws.reject(503, "the bus is unavailable")
        if ws.rejected_status is not None:
            self.status = ws.rejected_status
        self.handshake_deadline = trio.current_time() + self.config.handshake_timeout

    async def run(self) -> None:
        ws = self.ws
        try:
            event = ws.next_event()
        except WebSocketProtocolError as exc:
            self.status = exc.hint or 400
        else:
            assert isinstance(event, ConnectRequest)
            await self.connect(event)
            del event  # the connect message is not kept for the life of the connection
        self.flush()
        self.server.sessions.add(self)
        try:
            async with trio.open_nursery() as nursery:
                if not self.ending:
                    nursery.start_soon(self.reader)
                    nursery.start_soon(self.replier)
                await self.writer()
                nursery.cancel_scope.cancel()
        finally:
            self.server.sessions.discard(self)
            if ws.state is not State.CLOSED:
                ws.connection_lost()
            self.log()
            with trio.CancelScope(shield=True):
                await self.handle_events(final=True)  # the owed websocket.disconnect
        if not self.broken:
            await linger_close(self.stream)  # our Close frame is not lost to a reset

    def log(self) -> None:
        access_log = self.server.runtime.access_log
        if access_log is None:
            return
        request = self.upgrade.request
        line = (
            f"{request.method.decode('latin-1')} {request.target.decode('latin-1')} "
            f"HTTP/{request.http_version.decode('latin-1')}"
        )
        access_log.log(self.upgrade.connection.client, line, self.status or 101, None)


class _Server:
    """The adapter's state in one server process."""

    def __init__(
        self, runtime: ServerRuntime, config: WebSocketServerConfig, dispatcher: ReplyDispatcher
    ) -> None:
        self.runtime = runtime
        self.config = config
        self.dispatcher = dispatcher
        self.sessions: set[_Session] = set()
        self.active = 0

    async def handle_upgrade(self, upgrade: UpgradeRequest) -> None:
        limit = self.config.max_connections
        if limit is not None and self.active >= limit:
            await upgrade.reject(503, [(b"content-type", b"text/plain")], b"too many WebSockets\n")
            return
        if self.runtime.stopping.is_set():
            await upgrade.reject(503, [(b"content-type", b"text/plain")], b"shutting down\n")
            return
        self.active += 1
        try:
            with self.dispatcher.open_channel(self.config.reply_buffer) as reply:
                base = upgrade.message
                scheme = "wss" if base.get("scheme") == "https" else "ws"
                ws = WebSocketConnection(
                    self.config.protocol,
                    reply_channel=reply.name,
                    client=upgrade.connection.client,
                    server=upgrade.connection.server,
                    scheme=scheme,
                )
                ws.receive_request(upgrade.request, upgrade.trailing_data)
                await _Session(self, upgrade, reply, ws).run()
        finally:
            self.active -= 1

    async def watch_shutdown(self) -> None:
        await self.runtime.stopping.wait()
        code = int(self.runtime.extensions.get("websocket.shutdown_code", 1001))
        for session in list(self.sessions):
            session.shutdown(code)


class WebSocketAdapter(Adapter):
    """WebSocket (RFC 6455, permessage-deflate) -> ``websocket.*`` messages."""

    name = "websocket"
    summary = (
        "WebSocket (wsproto) on the HTTP port: websocket.connect / receive / disconnect, "
        "frames from reply_channel"
    )
    requires = ("http",)
    listener_protocol = "http"

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        defaults = WebSocketServerConfig()
        proto = defaults.protocol
        group.add_argument(
            "--ws-max-message-size",
            type=parse_positive_size,
            default=proto.max_message_size,
            metavar="BYTES",
            help="close with 1009 when a message is bigger (after decompression; "
            "default 1M; the layer's max_message_size must hold it too)",
        )
        group.add_argument(
            "--ws-ping-interval",
            type=parse_seconds,
            default=proto.ping_interval,
            metavar="SECONDS",
            help="ping a client silent for SECONDS ('off': never; default 20)",
        )
        group.add_argument(
            "--ws-ping-timeout",
            type=parse_seconds,
            default=proto.ping_timeout,
            metavar="SECONDS",
            help="drop a client silent for SECONDS after a ping (default 20)",
        )
        group.add_argument(
            "--allowed-origins",
            action="append",
            default=None,
            metavar="LIST",
            help="comma-separated Origin values allowed to open WebSockets, e.g. "
            "https://chat.example,*.example.com,localhost:8000 (repeatable); others get "
            "403. Default: any origin",
        )
        group.add_argument(
            "--ws-handshake-timeout",
            type=parse_seconds,
            default=defaults.handshake_timeout,
            metavar="SECONDS",
            help="answer 504 when websocket.connect gets no accept/reject in time (default 5)",
        )
        group.add_argument(
            "--ws-receive-timeout",
            type=parse_seconds,
            default=defaults.receive_timeout,
            metavar="SECONDS",
            help="while websocket.receive is full the socket is not read; still full "
            f"after SECONDS, close with 1013 (default {defaults.receive_timeout:g})",
        )
        group.add_argument(
            "--ws-max-connections",
            type=int,
            default=None,
            metavar="N",
            help="refuse more WebSockets than N with 503 (default: only --max-connections)",
        )
        group.add_argument(
            "--ws-max-send-buffer",
            type=parse_positive_size,
            default=defaults.max_send_buffer,
            metavar="BYTES",
            help="outgoing bytes held for a client that does not read before it is closed "
            "with 1008 (default 4M)",
        )
        group.add_argument(
            "--ws-compression",
            action=argparse.BooleanOptionalAction,
            default=proto.compression,
            help="accept permessage-deflate when clients offer it (default on)",
        )

    def configure(self, args: argparse.Namespace, server: ServerConfig) -> WebSocketServerConfig:
        origins: tuple[str, ...] | None = None
        if args.allowed_origins:
            origins = tuple(
                item.strip()
                for value in args.allowed_origins
                for item in value.split(",")
                if item.strip()
            )
        ping_interval = None if math.isinf(args.ws_ping_interval) else args.ws_ping_interval
        ping_timeout = None if math.isinf(args.ws_ping_timeout) else args.ws_ping_timeout
        try:
            return WebSocketServerConfig(
                protocol=WebSocketConfig(
                    max_message_size=args.ws_max_message_size,
                    ping_interval=ping_interval,
                    ping_timeout=ping_timeout,
                    allowed_origins=origins,
                    compression=args.ws_compression,
                    max_handshake_size=getattr(args, "max_header_size", 64 * 1024),
                    root_path=server.root_path,
                ),
                handshake_timeout=args.ws_handshake_timeout,
                receive_timeout=args.ws_receive_timeout,
                max_connections=args.ws_max_connections,
                max_send_buffer=args.ws_max_send_buffer,
            )
        except ValueError as exc:
            raise UsageError(f"websocket adapter: {exc}") from exc

    async def run(
        self,
        runtime: ServerRuntime,
        config: Any,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        config = config or WebSocketServerConfig()
        layer_limit = runtime.layer.options.max_message_size
        if config.protocol.max_message_size > layer_limit:
            logger.warning(
                "--ws-max-message-size %d is over the layer's max_message_size %d: bigger "
                "messages will be closed with 1009 when they reach the bus",
                config.protocol.max_message_size,
                layer_limit,
            )
        dispatcher = await runtime.open_dispatcher("websocket.send")
        state = _Server(runtime, config, dispatcher)
        runtime.extensions["websocket.server"] = state
        front(runtime).add_upgrade_handler("websocket", state.handle_upgrade)
        task_status.started()
        await state.watch_shutdown()
        await trio.sleep_forever()


adapter = WebSocketAdapter()
