"""Trio glue: ``csp-bus serve --adapter websocket`` around :mod:`.protocol`.

The WebSocket adapter shares the HTTP listener (``requires = ("http",)``): the HTTP
front parses each request head (with its header size limit and timeout) and hands
``Upgrade: websocket`` requests to :meth:`WebSocketAdapter.handle_upgrade`. With
``--adapter websocket`` alone, plain HTTP requests get 404.

Per connection, one task (DESIGN.md 5) around one :class:`~.protocol.WebSocketConnection`.
It waits on the socket (``wait_readable``) and its next deadline (handshake timeout:
504; keep-alive ping; the wait for the peer's Close) at once. Replies wake no task: the
reply dispatcher calls :attr:`ReplyChannel.wakeup`, and the session turns them into
frames and writes them right there (neither blocks); it wakes the connection task only
when that must act (the accept, a close). An idle connection is that one parked task;
helpers run only while it is busy:

* reading: frames go to ``websocket.receive`` with a non-blocking ``send``. When that
  channel is full, a *drain* helper waits (``send_wait``) and the task stops reading the
  socket meanwhile: TCP flow control slows the client down instead of anything being
  dropped. Still full after ``--ws-receive-timeout``: close 1013 (try again later).
  Replies keep flowing while it waits.
* writing: frames are written straight to the socket without blocking; what it does
  not take goes to a *writer* helper, so one slow client never holds up the process's
  reply dispatcher. Bytes waiting for a slow client are bounded by
  ``--ws-max-send-buffer`` (one message is always let through, whatever its size): over
  it, the pending frames are dropped and the connection is closed with 1008 (policy
  violation: the client does not read).
* TLS streams (``--certfile``) are read by a *reader* helper and written by the writer
  helper: the direct paths need the plain socket.

Shutdown: when the server stops, every connection is closed with 1001 (going away),
or with ``runtime.extensions["websocket.shutdown_code"]`` when a restarting server set
it (1012). Handshakes still waiting for the application are refused with 503.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import logging
import math
import os
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
    """One WebSocket connection: one task, plus helpers only while it is busy."""

    # Thousands of idle connections each hold one: slots keep them small.
    __slots__ = (
        "broken",
        "closing_deadline",
        "config",
        "connect_delivered",
        "draining",
        "ending",
        "fd",
        "handshake_deadline",
        "handshake_written",
        "kicked",
        "layer",
        "nursery",
        "parked",
        "pending",
        "pending_size",
        "read_scope",
        "registered_deadline",
        "reply",
        "server",
        "status",
        "stream",
        "upgrade",
        "wait_scope",
        "woken",
        "write_done",
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
        #: a plain TCP socket is read by the connection task itself and written to
        #: without blocking; another stream (TLS) gets a reader task and a writer task
        self.fd = self.stream.socket.fileno() if isinstance(self.stream, trio.SocketStream) else -1
        self.reply = reply
        self.ws = ws
        self.layer = server.runtime.layer
        self.config = server.config
        self.nursery: trio.Nursery | None = None
        #: frames waiting for the writer task (a list: usually empty, and a deque costs more)
        self.pending: list[bytes] = []
        self.pending_size = 0
        #: set while a writer task runs (the socket was full), and when it ends
        self.write_done: trio.Event | None = None
        self.handshake_written = False
        #: the socket failed: nothing more can be written
        self.broken = False
        #: the protocol is CLOSED: what is left is flushed, then the session ends
        self.ending = False
        self.read_scope: trio.CancelScope | None = None
        self.kicked = False
        #: a helper waits for room in a full websocket.receive (the socket is not read)
        self.draining = False
        #: websocket.connect reached the bus, so websocket.disconnect is owed
        self.connect_delivered = False
        self.wait_scope: trio.CancelScope | None = None
        #: the connection task is parked in its wait (only then is wait_scope cancelled)
        self.parked = False
        #: a wake-up came while the connection task was busy: it looks again first
        self.woken = False
        #: the deadline the server's timekeeper wakes this session at
        self.registered_deadline = math.inf
        self.handshake_deadline = math.inf
        self.closing_deadline = math.inf
        self.status = 0  # for the access log

    # -- output, never blocking ------------------------------------------------------------

    def flush(self) -> None:
        """Send what the protocol wants to send: straight to the socket when it takes it
        all, else queued for a writer task."""
        data = self.ws.data_to_send()
        if data and not self.broken:
            if self.write_done is None and self.fd >= 0:
                try:
                    sent = os.write(self.fd, data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self.broken = True
                    self.ws.connection_lost()
                    sent = len(data)
                if sent == len(data):
                    self.handshake_written = True
                else:
                    self.queue(data[sent:] if sent else data)
            else:
                self.queue(data)
        state = self.ws.state
        if state is State.CLOSING and self.closing_deadline == math.inf:
            self.closing_deadline = trio.current_time() + self.config.close_timeout
            self.wake()
        elif state is State.CLOSED and not self.ending:
            self.end()

    def queue(self, data: bytes) -> None:
        self.pending.append(data)
        self.pending_size += len(data)
        if self.write_done is None:
            if self.nursery is None:  # the session is over
                self.broken = True
                return
            self.write_done = trio.Event()
            self.nursery.start_soon(self.writer)
        # One message is always let through, however big (the bus bounds it):
        # the limit is on what piles up behind it.
        if self.pending_size > self.config.max_send_buffer and len(self.pending) > 1:
            self.overflow()

    def end(self) -> None:
        """The protocol is done: the session flushes (for ``close_timeout`` at most)."""
        self.ending = True
        self.wake()

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

    def wake(self) -> None:
        """Make the connection task look again (a deadline, a new state, the accept).

        Its wait is cancelled only while it is parked there, never in the middle of
        handing a message to the bus; when busy, it sees ``woken`` before parking."""
        if self.parked and self.wait_scope is not None:
            self.wait_scope.cancel()
        else:
            self.woken = True

    # -- the connection task and its helpers -----------------------------------------------

    async def writer(self) -> None:
        """Helper while the socket does not take everything: write what is pending."""
        try:
            while self.pending and not self.broken:
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
        finally:
            self.pending.clear()
            self.pending_size = 0
            done, self.write_done = self.write_done, None
            if done is not None:
                done.set()
            if self.broken and self.ws.state is State.CLOSED and not self.ending:
                self.end()
            self.wake()

    async def reader(self) -> None:
        # Helper for streams other than a plain socket (TLS): reads the stream and is
        # then the only task that takes events out of the protocol, so they reach the
        # bus in order. While the handshake waits for the application, its read can be
        # cancelled ("kicked") so that frames sent before the accept are handed over as
        # soon as it comes.
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

    def on_replies(self) -> None:
        """:attr:`ReplyChannel.wakeup`: the dispatcher's task applies the replies itself
        (turning one into frames and writing them never blocks), so a reply wakes no
        task; the connection task is woken only when it must act (accept, close)."""
        ws = self.ws
        try:
            while (message := self.reply.receive_nowait()) is not None:
                self.apply(message)
                self.flush()
        except ReplyOverrun:
            # The dispatcher gave up on us: replies came faster than we took them.
            # Close without waiting for the (equally slow) peer.
            ws.close(1008, "client too slow")
            ws.connection_lost()
            self.flush()
        except Exception:  # never let one connection's bug stop the dispatcher
            logger.exception("%s: applying a reply failed; dropping the connection", ws.client)
            self.broken = True
            ws.connection_lost()
            self.flush()

    async def serve(self) -> None:
        """The connection task: waits on the socket (when it reads it) until the server's
        timekeeper or a new state wakes it; replies are applied by :meth:`on_replies`.

        One cancel scope serves many waits (a scope costs more than a frame's whole
        handling): it is replaced only after a wake-up cancelled it."""
        ws = self.ws
        inline = self.fd >= 0
        fd = self.fd
        eof = False
        self.reply.wakeup = self.on_replies
        timekeeper = self.server.timekeeper
        while True:
            with trio.CancelScope() as self.wait_scope:
                while True:
                    self.woken = False
                    if self.kicked and inline and not self.draining:
                        self.kicked = False
                        await self.handle_events(wait=False)
                        continue
                    # From here to the wait nothing awaits: a wake-up that comes
                    # meanwhile sets ``woken`` and is seen before parking.
                    self.on_replies()  # those that came before the hook was set
                    deadline = self.next_deadline()
                    if ws.state is not State.CLOSED and trio.current_time() >= deadline:
                        self.on_deadline(trio.current_time())
                        deadline = self.next_deadline()
                    self.flush()
                    if self.ending:
                        return
                    if self.woken or (self.kicked and inline and not self.draining):
                        continue
                    if deadline != self.registered_deadline:
                        self.registered_deadline = deadline
                        timekeeper.add(deadline, self)
                    self.parked = True
                    closed = False
                    try:
                        if inline and not eof and not self.draining:
                            try:
                                await trio.lowlevel.wait_readable(fd)
                            except trio.ClosedResourceError:
                                # closed under us: the end of input, and no read of a
                                # descriptor number the process may have reused already
                                closed = True
                        else:
                            await trio.sleep_forever()
                    finally:
                        self.parked = False
                    try:
                        data = b"" if closed else os.read(fd, _READ_SIZE)
                    except BlockingIOError:
                        continue
                    except OSError:  # reset by the peer
                        data = b""
                    if not data:
                        eof = True
                    ws.receive_data(data)
                    await self.handle_events(wait=False)
            self.wait_scope = None

    def kick_reader(self) -> None:
        """Make the task that takes events (the connection task, or the reader helper
        over TLS) look at the protocol's events now: frames that came before the
        accept, or a disconnect. A cancelled read loses no data."""
        self.kicked = True
        if self.read_scope is not None:
            self.read_scope.cancel()
        self.wake()

    async def handle_events(self, *, final: bool = False, wait: bool = True) -> None:
        """Hand the protocol's events to the bus. With ``wait=False`` (the connection
        task), a full ``websocket.receive`` is waited for by a helper task, which takes
        over the events meanwhile; the connection task stops reading the socket."""
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
                elif wait:
                    await self.send_receive(event.message)
                elif not await self.send_receive(event.message, wait=False):
                    assert self.nursery is not None
                    self.draining = True
                    self.nursery.start_soon(self.drain, event.message)
                    return
            elif isinstance(event, Disconnected) and self.connect_delivered:
                await self.send_disconnect(event.message)

    async def drain(self, message: dict[str, Any]) -> None:
        """Helper while ``websocket.receive`` is full: wait for room (then go on with
        the events read so far), or close with 1013 after ``--ws-receive-timeout``."""
        try:
            await self.send_receive(message)
            await self.handle_events()
            self.flush()
        finally:
            self.draining = False
            self.wake()

    async def send_receive(self, message: dict[str, Any], *, wait: bool = True) -> bool:
        """Send ``websocket.receive``; False when ``wait`` is off and the channel is full."""
        try:
            if wait:
                await self.layer.send_wait(
                    self.config.receive_channel, message, timeout=self.config.receive_timeout
                )
            else:
                try:
                    await self.layer.send(self.config.receive_channel, message)
                except ChannelFull:
                    return False
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
        return True

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
            self.wake()

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
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
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
                if not self.ending:
                    if self.fd < 0:
                        nursery.start_soon(self.reader)
                    await self.serve()
                # Flush what is left (for close_timeout at most), then stop the helpers.
                done = self.write_done
                if done is not None:
                    with trio.move_on_after(self.config.close_timeout):
                        await done.wait()
                nursery.cancel_scope.cancel()
        finally:
            self.nursery = None
            self.reply.wakeup = None
            self.registered_deadline = math.inf  # its timekeeper entries are stale now
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


class _Timekeeper:
    """Wakes sessions at their deadlines (handshake timeout, keep-alive, closing): one
    task and one heap per server process instead of a deadline scope per wait. An entry
    whose session has since registered another deadline is skipped."""

    def __init__(self, sessions: set[_Session]) -> None:
        self.heap: list[tuple[float, int, _Session]] = []
        self.count = itertools.count()
        self.scope: trio.CancelScope | None = None
        self.sessions = sessions

    def add(self, deadline: float, session: _Session) -> None:
        if deadline == math.inf:
            return
        heap = self.heap
        if len(heap) > 2 * len(self.sessions) + 64:
            # Stale entries (moved deadlines, ended sessions) would keep ended
            # sessions alive until their deadline: drop them, amortized O(1) per add.
            heap[:] = [entry for entry in heap if entry[2].registered_deadline == entry[0]]
            heapq.heapify(heap)
        heapq.heappush(heap, (deadline, next(self.count), session))
        scope = self.scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    async def run(self) -> None:
        heap = self.heap
        while True:
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as self.scope:
                await trio.sleep_forever()
            self.scope = None
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                deadline, _, session = heapq.heappop(heap)
                if session.registered_deadline == deadline:
                    session.registered_deadline = math.inf
                    session.wake()


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
        self.timekeeper = _Timekeeper(self.sessions)

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
        async with trio.open_nursery() as nursery:
            nursery.start_soon(state.timekeeper.run)
            front(runtime).add_upgrade_handler("websocket", state.handle_upgrade)
            task_status.started()
            await state.watch_shutdown()
            await trio.sleep_forever()


adapter = WebSocketAdapter()
