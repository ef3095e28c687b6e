"""Trio glue: one task per HTTP connection around :class:`HTTPServerProtocol`.

Per request: read the head (408 when too slow), hand an Upgrade to its registered
handler or send ``http.request`` (503 when the channel is full), stream a large body over
``body_channel`` with flow control, then wait for the response on the connection's
``reply_channel`` (504 after ``response_timeout``, except on long-poll paths) while
watching for the client leaving (``http.disconnect``), and write the response out.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

from csp_bus.errors import BusError, ChannelFull, InvalidMessage, LayerError
from csp_bus.messages import Message
from csp_bus.server.dispatcher import ReplyChannel, ReplyDispatcher, ReplyOverrun
from csp_bus.server.runtime import Connection, ServerRuntime

from .protocol import (
    NEED_DATA,
    PAUSED,
    BodyData,
    BodyEnd,
    ClientClosed,
    HTTPProtocolError,
    HTTPServerProtocol,
    InvalidResponse,
    RequestHead,
    request_message,
)
from .static import BLOCK, StaticMount, find_static, not_modified, open_static

__all__ = [
    "HTTPConfig",
    "HTTPFront",
    "UpgradeHandler",
    "UpgradeRequest",
    "front",
    "linger_close",
]

logger = logging.getLogger("csp_bus.adapters.http")

_READ_SIZE = 64 * 1024
#: Pipelined bytes read ahead while a response is pending; beyond it we stop reading.
_READ_AHEAD_LIMIT = 64 * 1024
#: How long a closing connection keeps draining what the client still sends, so that
#: the kernel does not reset the connection and destroy the response in flight.
_LINGER = 1.0
#: How long a response is awaited before a task starts watching for the client leaving.
_FAST_WAIT = 0.5


@dataclass(frozen=True, kw_only=True)
class HTTPConfig:
    """The HTTP adapter's options (seconds; ``math.inf`` disables a timeout)."""

    max_header_size: int = 16 * 1024
    max_body_size: int | None = 64 * 1024 * 1024
    #: request bodies up to this size travel in ``http.request``; larger ones are
    #: streamed over ``body_channel`` in chunks of this size
    body_chunk_size: int = 256 * 1024
    header_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    body_timeout: float = 30.0
    response_timeout: float = 60.0
    long_poll_paths: tuple[str, ...] = ()
    #: serve ordinary requests (False when only an upgrade adapter such as websocket runs)
    serve_requests: bool = True
    #: answer every request with the built-in welcome page (no app configured)
    welcome_page: bool = False
    #: URL prefixes served from directories by the server itself (``--static``)
    static: tuple[StaticMount, ...] = ()
    _long_poll: tuple[re.Pattern[str], ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_header_size < 1024:
            raise ValueError("max_header_size must be at least 1024 bytes")
        if self.body_chunk_size < 1:
            raise ValueError("body_chunk_size must be positive")
        for name in ("header_timeout", "keep_alive_timeout", "body_timeout", "response_timeout"):
            value = getattr(self, name)
            if math.isnan(value) or value <= 0:
                raise ValueError(f"{name} must be positive")
        object.__setattr__(self, "_long_poll", tuple(re.compile(p) for p in self.long_poll_paths))

    def is_long_poll(self, path: str) -> bool:
        return any(pattern.search(path) for pattern in self._long_poll)


@dataclass(eq=False, slots=True)
class UpgradeRequest:
    """What an upgrade handler gets (see ``docs/server.md``).

    It holds only what the handler needs: the HTTP parser of the connection is released
    before the handler runs (an upgraded connection may stay open for hours), and
    :attr:`request` and :attr:`message` are made on access from one compact copy of the
    request head, not kept twice for the life of the connection.
    """

    stream: trio.abc.Stream
    trailing_data: bytes
    connection: Connection
    _head: RequestHead = field(repr=False)
    _client: Any = field(repr=False)  # after proxy headers
    _scheme: str = field(repr=False)
    _root_path: str = field(repr=False)

    @property
    def request(self) -> h11.Request:
        """The request as an ``h11.Request`` (method, target, headers, http_version)."""
        head = self._head
        return h11.Request(
            method=head.method,
            target=head.target,
            headers=head.headers,
            http_version=head.http_version,
        )

    @property
    def message(self) -> dict[str, Any]:
        """The fields an ``http.request`` would carry (a new dict on each access)."""
        message = request_message(
            self._head,
            reply_channel="",
            scheme=self._scheme,
            client=self._client,
            server=self.connection.server,
            root_path=self._root_path,
        )
        del message["reply_channel"], message["body"]
        return message

    async def reject(
        self, status: int, headers: Iterable[Sequence[Any]] = (), body: bytes = b""
    ) -> None:
        """Answer with a plain HTTP response; the connection then closes."""
        request = self.request
        # h11 writes a response only in answer to a request it has read: a fresh parser
        # reads the request line again (with Host, which HTTP/1.1 needs) and answers it.
        proto = HTTPServerProtocol()
        proto.receive_data(
            b"%s %s HTTP/%s\r\nhost: -\r\n\r\n"
            % (request.method, request.target, request.http_version)
        )
        proto.next_event()
        data = proto.start_response(status, headers, body, close=True)
        await self.stream.send_all(data)


UpgradeHandler = Callable[[UpgradeRequest], Awaitable[None]]


_IDLE_PHASE = 0  # between requests: expiry closes quietly
_HEAD_PHASE = 1  # part of a request head received: expiry answers 408
_BUSY_PHASE = 2  # no deadline
_FAST_WAIT_PHASE = 3  # waiting for the response without a watcher: expiry resumes
_WRITE_PHASE = 4  # writing: expiry means the client stopped reading


@dataclass(eq=False)
class _Cycle:
    """Per-connection state the rolling timer's expiry is interpreted with."""

    timer: trio.CancelScope = field(default_factory=trio.CancelScope)
    phase: int = _IDLE_PHASE
    first: bool = True
    reply: ReplyChannel | None = None
    head: RequestHead | None = None
    pending: tuple[RequestHead, _Progress, float] | None = None
    early: Message | None = None
    ready: RequestHead | None = None


@dataclass(slots=True)
class _Progress:
    """How far one response got (for the access log and connection reuse)."""

    close: bool = False
    status: int = 0
    sent: int = 0
    failed: bool = False
    gone: bool = False
    body_done: bool = False


class _ClientGone(Exception):
    """The client closed or reset the connection."""


class HTTPFront:
    """The ``"http"`` listener protocol of one server process.

    Reached with :func:`front`; adapters that take over upgraded connections register
    with :meth:`add_upgrade_handler`.
    """

    def __init__(self, runtime: ServerRuntime, config: HTTPConfig) -> None:
        self.runtime = runtime
        self.config = config
        self.upgrade_handlers: dict[str, UpgradeHandler] = {}
        self.dispatcher: ReplyDispatcher | None = None
        self.requests_channel = "http.request"
        self.disconnect_channel = "http.disconnect"

    def add_upgrade_handler(self, token: str, handler: UpgradeHandler) -> None:
        """Hand requests with ``Connection: upgrade`` and ``Upgrade: token`` to ``handler``."""
        self.upgrade_handlers[token.lower()] = handler

    # -- one connection ------------------------------------------------------------------

    async def handle_connection(self, stream: trio.abc.Stream, conn: Connection) -> None:
        upgrade = await self._serve_http(stream, conn)
        if upgrade is not None:
            # The HTTP state of the connection (parser, head, timer, reply channel) went
            # with _serve_http's frame: only the UpgradeRequest lives on.
            handler, request = upgrade
            await handler(request)

    async def _serve_http(
        self, stream: trio.abc.Stream, conn: Connection
    ) -> tuple[UpgradeHandler, UpgradeRequest] | None:
        """Serve HTTP requests; the upgrade to hand the connection to, if one came."""
        config = self.config
        proto = HTTPServerProtocol(
            max_header_size=config.max_header_size, max_body_size=config.max_body_size
        )
        cycle = _Cycle()
        try:
            while True:
                # One rolling timer per connection: each phase moves its deadline (cheap)
                # instead of entering a cancel scope per wait. Expiry is terminal for the
                # connection except during the fast wait, which resumes below.
                with trio.CancelScope() as timer:
                    cycle.timer = timer
                    if cycle.pending is not None:
                        head, state, deadline = cycle.pending
                        early, cycle.pending, cycle.early = cycle.early, None, None
                        ok = await self._respond_watching(
                            stream, conn, proto, head, cycle, None, 0, state, deadline, early
                        )
                        if not await self._next_cycle(stream, proto, ok):
                            return None
                    return await self._serve_connection(stream, conn, proto, cycle)
                if cycle.phase == _FAST_WAIT_PHASE or cycle.ready is not None:
                    continue  # resume: the response with a watcher task, or the ready head
                if cycle.phase == _HEAD_PHASE:  # part of a request: RFC 9110 15.5.9
                    await self._send_error(stream, proto, 408, conn, None)
                    await linger_close(stream)
                elif cycle.phase == _WRITE_PHASE and cycle.head is not None:
                    await self._disconnected(cycle, cycle.head)  # it stopped reading
                return None  # idle keep-alive connection timed out: just close
        finally:
            if cycle.reply is not None:
                cycle.reply.close()

    async def _next_cycle(
        self, stream: trio.abc.Stream, proto: HTTPServerProtocol, ok: bool
    ) -> bool:
        """After a response: True when the connection goes on to the next request."""
        if not ok:
            await linger_close(stream)
            return False
        if self.runtime.stopping.is_set():
            return False
        proto.start_next_cycle()
        return True

    async def _serve_connection(
        self,
        stream: trio.abc.Stream,
        conn: Connection,
        proto: HTTPServerProtocol,
        cycle: _Cycle,
    ) -> tuple[UpgradeHandler, UpgradeRequest] | None:
        while True:
            head, cycle.ready = cycle.ready, None
            if head is None:
                head = await self._read_head(stream, conn, proto, cycle)
            if head is None:
                return None
            cycle.head = head
            if head.upgrade is not None and head.upgrade in self.upgrade_handlers:
                return self._upgrade(stream, conn, proto, head)
            reply = cycle.reply
            if reply is None and self.dispatcher is not None:
                reply = cycle.reply = self.dispatcher.open_channel()  # made lazily
            elif reply is not None:
                # Anything that arrived between requests answers no request (a late
                # send_group to a long-poll group the connection is still in): drop it,
                # or it would be taken for this request's response.
                try:
                    while reply.receive_nowait() is not None:
                        logger.debug("%s: dropped a message sent between requests", reply.name)
                except ReplyOverrun:
                    return None
            ok = await self._serve_request(stream, conn, proto, head, cycle)
            if not await self._next_cycle(stream, proto, ok):
                return None

    async def _receive(self, stream: trio.abc.Stream) -> bytes:
        """The next bytes from the client; ``b""`` when it closed or reset."""
        if type(stream) is trio.SocketStream:
            # A plain TCP stream is read straight from its descriptor: wait, then one
            # read(). receive_some() would try the read first (it fails with EAGAIN
            # between requests: the client is waiting for our response) and then
            # checkpoint once more after it, several Trio layers for every request.
            fd = stream.socket.fileno()
            if fd < 0:
                await trio.lowlevel.checkpoint()
                return b""
            try:
                while True:
                    await trio.lowlevel.wait_readable(fd)
                    try:
                        return os.read(fd, _READ_SIZE)
                    except BlockingIOError:
                        continue
            except (trio.ClosedResourceError, OSError):
                return b""
        try:
            return bytes(await stream.receive_some(_READ_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def _read_head(
        self,
        stream: trio.abc.Stream,
        conn: Connection,
        proto: HTTPServerProtocol,
        cycle: _Cycle,
    ) -> RequestHead | None:
        """The next request head; ``None`` when the connection should just close. A
        timeout leaves through ``cycle.timer`` (handled by :meth:`handle_connection`)."""
        config = self.config
        timer = cycle.timer
        started = proto.buffered > 0
        now = trio.current_time()
        if started or cycle.first:
            cycle.phase = _HEAD_PHASE if started else _IDLE_PHASE
            timer.deadline = now + config.header_timeout
        else:
            cycle.phase = _IDLE_PHASE
            timer.deadline = now + config.keep_alive_timeout
        cycle.first = False
        head_started = False
        if not started:
            conn.set_idle(True, self.runtime)
        try:
            while True:
                try:
                    event = proto.next_event()
                except HTTPProtocolError as exc:
                    timer.deadline = math.inf
                    conn.set_idle(False, self.runtime)
                    await self._send_error(stream, proto, exc.status, conn, None)
                    await linger_close(stream)
                    return None
                if type(event) is RequestHead:
                    if timer.cancel_called:
                        # The timer expired just as the head arrived: keep the head and
                        # continue in a fresh timer (moving a deadline cannot un-cancel).
                        cycle.ready = event
                        await trio.lowlevel.checkpoint()  # raises Cancelled
                    timer.deadline = math.inf
                    cycle.phase = _BUSY_PHASE
                    return event
                if type(event) is ClientClosed or event is PAUSED:
                    return None
                if head_started:
                    # Set only now: a head that came whole in one read never needs it.
                    timer.deadline = trio.current_time() + config.header_timeout
                    head_started = False
                data = await self._receive(stream)
                if data and not started:
                    started = head_started = True
                    conn.set_idle(False, self.runtime)
                    cycle.phase = _HEAD_PHASE
                proto.receive_data(data)
        finally:
            conn.idle = False

    async def _send_error(
        self,
        stream: trio.abc.Stream,
        proto: HTTPServerProtocol,
        status: int,
        conn: Connection,
        head: RequestHead | None,
        text: str | None = None,
    ) -> None:
        data = proto.error_response(status, text)
        if not data:
            return
        with trio.move_on_after(self.config.body_timeout):
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
        self._log(conn, head, status, None)

    def _log(
        self, conn: Connection, head: RequestHead | None, status: int, size: int | None
    ) -> None:
        log = self.runtime.access_log
        if log is None:
            return
        client = conn.client
        if head is None:
            line = "-"
        else:
            target = head.target.decode("latin-1")
            line = f"{head.method} {target} HTTP/{head.http_version}"
            if self.runtime.proxies is not None:  # log the client the app was told about
                client = self._base_message(conn, head)[0]
        log.log(client, line, status, size)

    def _base_message(self, conn: Connection, head: RequestHead) -> tuple[Any, str]:
        client = conn.client
        scheme = conn.scheme
        proxies = self.runtime.proxies
        if proxies is not None:
            client, scheme = proxies.resolve(client, scheme, head.headers)
        return client, scheme

    def _upgrade(
        self,
        stream: trio.abc.Stream,
        conn: Connection,
        proto: HTTPServerProtocol,
        head: RequestHead,
    ) -> tuple[UpgradeHandler, UpgradeRequest]:
        client, scheme = self._base_message(conn, head)
        handler = self.upgrade_handlers[head.upgrade or ""]
        request = UpgradeRequest(
            stream, proto.trailing_data, conn, head, client, scheme, self.runtime.config.root_path
        )
        return handler, request

    # -- one request ---------------------------------------------------------------------

    async def _serve_request(
        self,
        stream: trio.abc.Stream,
        conn: Connection,
        proto: HTTPServerProtocol,
        head: RequestHead,
        cycle: _Cycle,
    ) -> bool:
        """Serve one request; True when the connection may carry another."""
        reply = cycle.reply
        if self.config.static:
            mount = find_static(self.config.static, head.path)
            if mount is not None:
                return await self._serve_static(stream, conn, proto, head, mount)
        if self.config.welcome_page or not self.config.serve_requests or reply is None:
            return await self._serve_locally(stream, conn, proto, head)
        config = self.config
        layer = self.runtime.layer
        chunk_size = min(config.body_chunk_size, layer.options.max_message_size // 2)
        # Read the body up to one chunk: small bodies travel inside http.request.
        body = bytearray()
        complete = False
        try:
            complete = await self._read_body(stream, proto, body, chunk_size)
        except HTTPProtocolError as exc:
            await self._send_error(stream, proto, exc.status, conn, head)
            return False
        except _ClientGone:
            return False
        except trio.TooSlowError:
            await self._send_error(stream, proto, 408, conn, head)
            return False
        client, scheme = self._base_message(conn, head)
        body_channel = None if complete else await layer.new_channel("http.request.body?")
        message = request_message(
            head,
            reply_channel=reply.name,
            scheme=scheme,
            client=client,
            server=conn.server,
            root_path=self.runtime.config.root_path,
            body=bytes(body),
            body_channel=body_channel,
        )
        try:
            await layer.send(self.requests_channel, message)
        except ChannelFull:
            await self._send_error(stream, proto, 503, conn, head, "Service Unavailable: busy")
            return False
        except InvalidMessage:  # MessageTooLarge: the head alone is over the layer's limit
            await self._send_error(stream, proto, 431, conn, head)
            return False
        except LayerError as exc:
            logger.warning("cannot send http.request: %s", exc)
            await self._send_error(stream, proto, 503, conn, head)
            return False
        del message, body  # a long-poll holds this frame: keep it small
        return await self._respond(stream, conn, proto, head, cycle, body_channel, chunk_size)

    async def _read_body(
        self,
        stream: trio.abc.Stream,
        proto: HTTPServerProtocol,
        into: bytearray,
        limit: int,
    ) -> bool:
        """Read body bytes into ``into`` until the request ends (True) or ``limit``
        bytes are held (False). Raises HTTPProtocolError, _ClientGone, TooSlowError."""
        while True:
            event = proto.next_event()
            kind = type(event)
            if kind is BodyData:
                data = event.data  # type: ignore[union-attr]
                room = limit - len(into)
                if len(data) > room:
                    proto.push_back(data[room:])
                    data = data[:room]
                into += data
                if len(into) >= limit:
                    return False
            elif kind is BodyEnd:
                return True
            elif event is NEED_DATA:
                if proto.waiting_for_100_continue:
                    try:
                        await stream.send_all(proto.send_continue())
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        raise _ClientGone from None
                with trio.fail_after(self.config.body_timeout):
                    data = await self._receive(stream)
                if not data:
                    raise _ClientGone
                proto.receive_data(data)
            else:  # ClientClosed cannot happen mid-request; PAUSED neither
                raise _ClientGone

    async def _pump_body(
        self,
        stream: trio.abc.Stream,
        proto: HTTPServerProtocol,
        body_channel: str,
        chunk_size: int,
    ) -> None:
        """Stream the rest of the body to ``body_channel``, reading the socket only as
        fast as the channel takes chunks (``send_wait``): flow control end to end."""
        layer = self.runtime.layer
        try:
            while True:
                chunk = bytearray()
                try:
                    complete = await self._read_body(stream, proto, chunk, chunk_size)
                except (HTTPProtocolError, _ClientGone, trio.TooSlowError) as exc:
                    await layer.send_wait(body_channel, {"closed": True}, timeout=1.0)
                    if isinstance(exc, HTTPProtocolError):
                        raise
                    raise _ClientGone from None
                await layer.send_wait(
                    body_channel,
                    {"content": bytes(chunk), "more_content": not complete},
                    timeout=self.config.body_timeout,
                )
                if complete:
                    return
        except (ChannelFull, LayerError):
            raise _ClientGone from None  # nobody reads the body: give up on it

    async def _watch_client(self, stream: trio.abc.Stream, proto: HTTPServerProtocol) -> None:
        """While a response is pending: return when the client leaves; buffer pipelined
        requests meanwhile (up to a limit, then stop reading: TCP pushes back)."""
        while proto.buffered < _READ_AHEAD_LIMIT:
            data = await self._receive(stream)
            if not data:
                return
            proto.receive_data(data)
        await trio.sleep_forever()

    async def _respond(
        self,
        stream: trio.abc.Stream,
        conn: Connection,
        proto: HTTPServerProtocol,
        head: RequestHead,
        cycle: _Cycle,
        body_channel: str | None,
        chunk_size: int,
    ) -> bool:
        """Wait for the response on the reply channel and write it; True when the
        connection may serve another request."""
        config = self.config
        reply = cycle.reply
        assert reply is not None
        timeout = math.inf if config.is_long_poll(head.path) else config.response_timeout
        now = trio.current_time()
        deadline = now + timeout
        state = _Progress(close=body_channel is not None)
        if body_channel is None:
            # Fast path: most responses come within milliseconds, so the first message
            # is awaited without a task watching the client. If none comes within
            # _FAST_WAIT, the rolling timer fires and handle_connection resumes with
            # _respond_watching: a client that leaves is noticed at most that late.
            timer = cycle.timer
            cycle.phase = _FAST_WAIT_PHASE
            cycle.pending = (head, state, deadline)
            timer.deadline = min(deadline, now + _FAST_WAIT)
            try:
                message = await reply.receive()
            except ReplyOverrun:
                return False
            if timer.cancel_called:
                # The deadline passed after the message was handed over but before this
                # task ran: the timer is spent. Resume in handle_connection, which writes
                # this message first (moving the deadline cannot un-cancel a scope).
                cycle.early = message
                await trio.lowlevel.checkpoint()  # raises Cancelled, phase FAST_WAIT
            cycle.pending = None
            # The timer bounds what of the write has to wait (_write moves its deadline):
            # a client that stops reading is cut off.
            cycle.phase = _WRITE_PHASE
            try:
                if not await self._write(stream, proto, head, message, state, conn, timer=timer):
                    return False
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self._disconnected(cycle, head)
                return False
            cycle.phase = _BUSY_PHASE
            if proto.response_done:
                self._log(conn, head, state.status, state.sent)
                if proto.keep_alive:
                    # The next step sets the deadline before it awaits anything (the
                    # next head's, in _read_head): moving it to inf here first is waste.
                    return True
                timer.deadline = math.inf
                return False
            timer.deadline = math.inf
        return await self._respond_watching(
            stream, conn, proto, head, cycle, body_channel, chunk_size, state, deadline
        )

    async def _respond_watching(
        self,
        stream: trio.abc.Stream,
        conn: Connection,
        proto: HTTPServerProtocol,
        head: RequestHead,
        cycle: _Cycle,
        body_channel: str | None,
        chunk_size: int,
        state: _Progress,
        deadline: float,
        early: Message | None = None,
    ) -> bool:
        """The response (or its rest) while a second task reads: the rest of the body,
        then only to notice the client leaving. Either task ends the other. ``early``:
        a first message already received."""
        reply = cycle.reply
        assert reply is not None

        async def reader(cancel: trio.CancelScope) -> None:
            if body_channel is not None:
                try:
                    await self._pump_body(stream, proto, body_channel, chunk_size)
                    state.body_done = True
                except _ClientGone:
                    state.gone = True
                    cancel.cancel()
                    return
                except HTTPProtocolError as exc:  # e.g. a chunked body over the limit
                    state.failed = True
                    if not proto.response_started:  # the writer is not writing: safe
                        await self._send_error(stream, proto, exc.status, conn, head)
                    cancel.cancel()
                    return
            await self._watch_client(stream, proto)
            state.gone = True
            cancel.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, nursery.cancel_scope)
            try:
                while not proto.response_done:
                    if early is not None:
                        message, early = early, None
                    elif proto.response_started:
                        message = await reply.receive()
                    else:
                        found = None
                        with trio.move_on_at(deadline):
                            found = await reply.receive()
                        if found is None:
                            await self._send_error(stream, proto, 504, conn, head)
                            break
                        message = found
                    if not await self._write(stream, proto, head, message, state, conn):
                        break
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                state.gone = True
            except ReplyOverrun:
                pass
            nursery.cancel_scope.cancel()
        if state.gone and not proto.response_done:
            await self._disconnected(cycle, head)
        if state.status:
            self._log(conn, head, state.status, state.sent)
        if not proto.response_done or state.failed:
            return False
        # Reusable only when the request was read to its end and nothing forbids it.
        return proto.keep_alive and (body_channel is None or state.body_done)

    async def _write(
        self,
        stream: trio.abc.Stream,
        proto: HTTPServerProtocol,
        head: RequestHead,
        message: Message,
        state: _Progress,
        conn: Connection,
        *,
        timer: trio.CancelScope | None = None,
    ) -> bool:
        """Write one response message; False when the response cannot go on (an
        invalid message: 500 if nothing was sent yet, else the connection is cut).
        What the socket does not take at once is written within ``body_timeout``: in a
        scope of its own, or by moving the deadline of ``timer``, the caller's scope."""
        content = message.get("content", b"")
        more = bool(message.get("more_content", False))
        try:
            if proto.response_started:
                data = proto.send_body(content, more)
            else:
                close = state.close or self.runtime.stopping.is_set()
                data = proto.start_response(
                    message.get("status"), message.get("headers", ()), content, more, close=close
                )
                state.status = message["status"]
        except InvalidResponse as exc:
            logger.error("%s %s: %s", head.method, head.path, exc)
            state.failed = True
            if not proto.response_started:
                if timer is not None:  # the 500 gets a write's time, not what was left
                    timer.deadline = trio.current_time() + self.config.body_timeout
                await self._send_error(stream, proto, 500, conn, head)
            return False
        if head.method != "HEAD":
            state.sent += len(content)
        data = _write_now(stream, data)
        if not data:
            return True
        if timer is not None:  # the caller's scope: it bounds the rest of the write
            timer.deadline = trio.current_time() + self.config.body_timeout
            await stream.send_all(data)
        else:
            await self._send(stream, data)  # a client that stops reading is cut off
        return True

    async def _disconnected(self, cycle: _Cycle, head: RequestHead) -> None:
        if cycle.reply is None:
            return
        message: Message = {"reply_channel": cycle.reply.name, "path": head.path}
        try:
            with trio.CancelScope(shield=True):
                await self.runtime.layer.send(self.disconnect_channel, message)
        except (ChannelFull, LayerError):
            # ASGI 1.x: http.disconnect is dropped when its channel is full.
            logger.debug("http.disconnect for %s dropped: channel full or layer down", message)

    # -- served without the bus ----------------------------------------------------------

    async def _send(self, stream: trio.abc.Stream, data: bytes) -> None:
        """``send_all`` bounded by ``body_timeout``: a client that stops reading is cut."""
        with trio.move_on_after(self.config.body_timeout) as sending:
            await stream.send_all(data)
        if sending.cancelled_caught:
            raise trio.BrokenResourceError("the client stopped reading the response")

    async def _discard_body(
        self,
        stream: trio.abc.Stream,
        conn: Connection,
        proto: HTTPServerProtocol,
        head: RequestHead,
    ) -> bool:
        """Read and drop a request body nobody wants; False when the connection is done
        (an error was answered or the client left)."""
        try:
            while not await self._read_body(stream, proto, bytearray(), _READ_SIZE):
                pass
        except HTTPProtocolError as exc:
            await self._send_error(stream, proto, exc.status, conn, head)
            return False
        except (_ClientGone, trio.TooSlowError):
            return False
        return True

    async def _serve_static(
        self,
        stream: trio.abc.Stream,
        conn: Connection,
        proto: HTTPServerProtocol,
        head: RequestHead,
        mount: StaticMount,
    ) -> bool:
        if not await self._discard_body(stream, conn, proto, head):
            return False
        close = self.runtime.stopping.is_set()
        text = [(b"content-type", b"text/plain; charset=utf-8")]
        if head.method not in ("GET", "HEAD"):
            status, data = (
                405,
                proto.start_response(
                    405, [*text, (b"allow", b"GET, HEAD")], b"Method Not Allowed\n", close=close
                ),
            )
            size = 19
        else:
            found = open_static(mount, head.path)
            if found is None:
                status, data = 404, proto.start_response(404, text, b"Not Found\n", close=close)
                size = 10
            else:
                try:
                    return await self._send_file(stream, conn, proto, head, found, close)
                finally:
                    os.close(found.fd)
        try:
            await self._send(stream, data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        self._log(conn, head, status, size if head.method != "HEAD" else 0)
        return proto.keep_alive

    async def _send_file(
        self,
        stream: trio.abc.Stream,
        conn: Connection,
        proto: HTTPServerProtocol,
        head: RequestHead,
        found: Any,
        close: bool,
    ) -> bool:
        try:
            if not_modified(found, head.headers):
                headers = [h for h in found.headers if h[0] in (b"etag", b"last-modified")]
                await self._send(stream, proto.start_response(304, headers, close=close))
                self._log(conn, head, 304, 0)
                return proto.keep_alive
            await self._send(
                stream, proto.start_response(200, found.headers, b"", True, close=close)
            )
            sent = 0
            while head.method != "HEAD" and sent < found.size:
                block = os.read(found.fd, min(BLOCK, found.size - sent))
                if not block:
                    break  # the file shrank: the connection cannot be reused
                sent += len(block)
                await self._send(stream, proto.send_body(block, True))
            if head.method != "HEAD" and sent != found.size:
                return False
            await self._send(stream, proto.send_body(b"", False))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return False
        self._log(conn, head, 200, sent)
        return proto.keep_alive

    async def _serve_locally(
        self,
        stream: trio.abc.Stream,
        conn: Connection,
        proto: HTTPServerProtocol,
        head: RequestHead,
    ) -> bool:
        from .welcome import not_served_response, welcome_response

        if not await self._discard_body(stream, conn, proto, head):
            return False
        if self.config.welcome_page:
            status, headers, body = welcome_response(self.runtime, head)
        else:
            status, headers, body = not_served_response(self.runtime, head)
        data = proto.start_response(status, headers, body, close=self.runtime.stopping.is_set())
        try:
            await self._send(stream, data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        self._log(conn, head, status, len(body) if head.method != "HEAD" else 0)
        return proto.keep_alive


def _write_now(stream: trio.abc.Stream, data: bytes) -> bytes:
    """Write what a plain TCP socket takes without blocking; the rest (``b""``: all
    sent). A small response fits the socket buffer: no Trio round for it. Raises
    ``trio.BrokenResourceError`` when the client is gone."""
    if type(stream) is not trio.SocketStream or not data:
        return data
    fd = stream.socket.fileno()
    if fd < 0:
        return data  # send_all raises ClosedResourceError
    try:
        sent = os.write(fd, data)
    except BlockingIOError:
        return data
    except OSError as exc:
        raise trio.BrokenResourceError(f"the client is gone: {exc}") from exc
    return data[sent:]


async def linger_close(stream: trio.abc.Stream) -> None:
    """End a connection gracefully: half-close, then drain what the client still sends.

    Closing a socket with unread input makes the kernel send RST, which can destroy the
    last bytes still on their way: an HTTP error response (RFC 9112 9.6 "tear-down"), a
    WebSocket Close frame (RFC 6455 7.1.1: the server closes the TCP connection first).
    So a TCP stream sends FIN and reads (discarding) until the client closes too, for at
    most one second; TLS streams cannot half-close and send close_notify instead. Errors
    of a connection already gone are ignored. An upgrade handler may await it as its
    last step; the runtime closes the stream afterwards either way.
    """
    with trio.move_on_after(_LINGER):
        try:
            if isinstance(stream, trio.SocketStream):
                await stream.send_eof()
                while await stream.receive_some(_READ_SIZE):
                    pass
            else:
                await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, BusError, OSError):
            pass


def front(runtime: ServerRuntime) -> HTTPFront:
    """The HTTP front of ``runtime`` (made by the HTTP adapter's ``run``).

    Raises ``LookupError`` when the HTTP adapter is not part of this server; an adapter
    needing it declares ``requires = ("http",)``.
    """
    found = runtime.extensions.get("http.front")
    if not isinstance(found, HTTPFront):
        raise LookupError("the http adapter is not running in this server; add requires=('http',)")
    return found
