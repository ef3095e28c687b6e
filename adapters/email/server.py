"""Inbound SMTP: the Trio glue around :mod:`.protocol`. Mail in, ``email.receive`` out.

Nothing is lost: the client gets ``250`` for its DATA only once the message is on the bus.
When the ``email.receive`` channel stays full (``bus_wait`` seconds) or the layer is down,
the answer is ``451 4.3.0`` and the sending server keeps the message and retries later
(RFC 5321 4.5.4.1) -- the bus being at-most-once, the mail queue of the peer is the
durable store until we said 250.

One task per connection, one state machine, a cancel scope per timeout:

* ``command_timeout`` -- seconds a client may take to finish its next command (reset
  after each reply, RFC 5321 4.5.3.2 suggests 5 minutes);
* ``data_timeout`` -- seconds for the whole DATA phase (from ``354`` to the final dot),
  which also bounds a client that trickles one byte at a time;
* ``tls_handshake_timeout`` -- for STARTTLS.

Graceful shutdown (``stopping`` set): stop accepting; connections waiting for a command get
``421`` at once; a connection in the middle of a message finishes it first.
"""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from csp_bus.errors import BusError, ChannelFull, LayerError, MessageTooLarge, UsageError
from csp_bus.layers.base import ChannelLayer
from csp_bus.messages import validate_send_name

from .messages import RECEIVE_CHANNEL, receive_message
from .protocol import (
    NEED_DATA,
    AuthAttempt,
    ConnectionClosed,
    MessageReceived,
    SessionConfig,
    SMTPServerConnection,
    StartTLS,
    format_reply,
)

__all__ = ["SMTPServerConfig", "serve_smtp"]

logger = logging.getLogger("csp_bus.adapters.email")

Authenticator = Callable[[str, str], bool]
_RECEIVE_SIZE = 65536


@dataclass(frozen=True, kw_only=True)
class SMTPServerConfig:
    """Everything the inbound server needs, built once (CLI or code) and shared.

    ``certfile``/``keyfile`` enable STARTTLS. ``authenticator(username, password)`` is
    called (in a worker thread: it is user code and may hash) for AUTH PLAIN/LOGIN, which
    is offered only when ``session.auth`` is set -- and, unless
    ``session.auth_requires_tls`` is cleared, only after STARTTLS.
    """

    binds: tuple[tuple[str, int], ...] = (("127.0.0.1", 8025),)
    session: SessionConfig = field(default_factory=SessionConfig)
    channel: str = RECEIVE_CHANNEL
    certfile: str | None = None
    keyfile: str | None = None
    authenticator: Authenticator | None = None
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    tls_handshake_timeout: float = 30.0
    #: seconds to wait for room on a full ``email.receive`` before answering 451
    bus_wait: float = 1.0
    max_connections: int = 1000

    def __post_init__(self) -> None:
        validate_send_name(self.channel)
        if not self.binds:
            raise UsageError("the SMTP server needs at least one address to listen on")
        if not self.session.accepted_domains:
            raise UsageError(
                "the SMTP server needs the domains it accepts mail for (--smtp-domains); "
                "it never relays"
            )
        if (self.certfile is None) != (self.keyfile is None):
            raise UsageError("--smtp-certfile and --smtp-keyfile go together")
        if self.certfile is not None and not self.session.starttls:
            object.__setattr__(self, "session", replace(self.session, starttls=True))
        if self.session.starttls and self.certfile is None:
            raise UsageError("STARTTLS needs a certificate (--smtp-certfile/--smtp-keyfile)")
        if self.session.auth and self.authenticator is None:
            raise UsageError("AUTH needs an authenticator (--smtp-auth-file)")
        for name in ("command_timeout", "data_timeout", "tls_handshake_timeout"):
            value = getattr(self, name)
            if math.isnan(value) or value <= 0:
                raise UsageError(f"{name} must be a positive number of seconds")
        if math.isnan(self.bus_wait) or self.bus_wait < 0:
            raise UsageError("bus_wait must be 0 or more seconds")
        if self.max_connections < 1:
            raise UsageError("max_connections must be at least 1")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The STARTTLS server context, or ``None`` without a certificate."""
        if self.certfile is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load the SMTP certificate {self.certfile}: {exc}") from exc
        return context


class _Server:
    """Shared state of one ``serve_smtp`` call: its connections and their idle scopes."""

    def __init__(
        self,
        layer: ChannelLayer,
        config: SMTPServerConfig,
        stopping: trio.Event | None,
        access_log: Any,
    ) -> None:
        self.layer = layer
        self.config = config
        self.ssl_context = config.ssl_context()
        self.stopping = stopping
        self.access_log = access_log
        self.active = 0
        # A connection waiting for its next command parks its receive here; shutdown
        # cancels these scopes, the connection answers 421 and ends.
        self.idle_scopes: set[trio.CancelScope] = set()
        self.messages_accepted = 0
        self.messages_deferred = 0

    def stop_idle(self) -> None:
        for scope in list(self.idle_scopes):
            scope.cancel()

    async def accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                logger.warning("SMTP accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(self.handle, stream)

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            peer = stream.socket.getpeername()
            client: tuple[str, int] | None = (str(peer[0]), int(peer[1]))
        except (OSError, IndexError, TypeError):
            client = None
        if self.active >= self.config.max_connections:
            # RFC 5321 3.1: a server may refuse a session with 421 instead of 220.
            with trio.move_on_after(5):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(format_reply(421, "4.7.0 Too many connections"))
            await trio.aclose_forcefully(stream)
            return
        self.active += 1
        try:
            await _Session(self, stream, client).run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            logger.debug("SMTP client %s went away", client)
        except Exception:
            logger.exception("SMTP connection from %s failed", client)
        finally:
            self.active -= 1


class _Session:
    """One connection: the receive loop around one :class:`SMTPServerConnection`."""

    def __init__(self, server: _Server, stream: trio.abc.Stream, client: Any) -> None:
        self.server = server
        self.config = server.config
        self.stream: trio.abc.Stream = stream
        self.client = client
        self.conn = SMTPServerConnection(self.config.session)
        self.deadline = trio.current_time() + self.config.command_timeout
        self.data_deadline: float | None = None

    async def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            # A client that pipelines commands but never reads the replies would block
            # this send for ever once the socket buffers are full: bound it too.
            with trio.move_on_after(self.config.command_timeout) as scope:
                await self.stream.send_all(out)
            if scope.cancelled_caught:
                raise trio.BrokenResourceError("the client does not read its replies")
            if not self.conn.in_data:
                self.deadline = trio.current_time() + self.config.command_timeout

    async def run(self) -> None:
        try:
            while True:
                event = self.conn.next_event()
                if event is NEED_DATA:
                    await self.flush()
                    await self.receive()
                elif isinstance(event, MessageReceived):
                    await self.deliver(event)
                elif isinstance(event, StartTLS):
                    await self.flush()
                    if not await self.start_tls():
                        return
                elif isinstance(event, AuthAttempt):
                    self.conn.auth_result(await self.authenticate(event))
                elif isinstance(event, ConnectionClosed):
                    with trio.move_on_after(5):
                        await self.flush()
                    with trio.move_on_after(1):
                        await self.stream.aclose()
                    return
                else:  # PAUSED cannot happen: every pausing event is answered above
                    raise AssertionError(f"unexpected {event!r}")
        finally:
            await trio.aclose_forcefully(self.stream)

    async def receive(self) -> None:
        stopping = self.server.stopping
        if self.conn.in_data:
            if self.data_deadline is None:
                self.data_deadline = trio.current_time() + self.config.data_timeout
            deadline = self.data_deadline
            idle = False
        else:
            self.data_deadline = None
            deadline = self.deadline
            idle = True
            if stopping is not None and stopping.is_set():
                self.conn.shutdown()
                return
        with trio.CancelScope(deadline=deadline) as scope:
            if idle:
                self.server.idle_scopes.add(scope)
            try:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
            finally:
                self.server.idle_scopes.discard(scope)
        if scope.cancelled_caught:
            if stopping is not None and stopping.is_set() and idle:
                self.conn.shutdown()
            else:
                self.conn.timeout()
            return
        self.conn.receive_data(data)

    async def deliver(self, event: MessageReceived) -> None:
        """Put the message on the bus, then answer: 250 only once it is there."""
        server = self.server
        code, text = 250, "2.0.0 OK: queued on the bus"
        try:
            message = receive_message(event, client=self.client)
            if self.config.bus_wait > 0:
                await server.layer.send_wait(
                    self.config.channel, message, timeout=self.config.bus_wait
                )
            else:
                await server.layer.send(self.config.channel, message)
        except MessageTooLarge:
            code, text = 552, "5.3.4 Message too big for the bus"
        except ChannelFull:
            code, text = 451, "4.3.1 Mail system full (bus channel at capacity), try again later"
        except (LayerError, BusError) as exc:
            # LayerClosed, LayerUnavailable, LayerTimeout: temporary for the sender.
            logger.warning("email.receive not sent (%s): answering 451", exc)
            code, text = 451, "4.3.0 Mail system temporarily unavailable, try again later"
        except Exception:
            logger.exception("building or sending email.receive failed: answering 451")
            code, text = 451, "4.3.0 Local error in processing, try again later"
        if code == 250:
            server.messages_accepted += 1
            self.conn.accept_message(text)
        else:
            server.messages_deferred += code == 451
            self.conn.reject_message(code, text)
        if server.access_log is not None:
            server.access_log.log(
                self.client,
                f"DATA from=<{event.sender or ''}> rcpts={len(event.recipients)}",
                code,
                len(event.data),
            )

    async def start_tls(self) -> bool:
        assert self.server.ssl_context is not None
        tls = trio.SSLStream(self.stream, self.server.ssl_context, server_side=True)
        with trio.move_on_after(self.config.tls_handshake_timeout):
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError as exc:
                logger.info("STARTTLS handshake with %s failed: %s", self.client, exc)
                return False
            self.stream = tls
            self.conn.tls_started()
            return True
        logger.info("STARTTLS handshake with %s timed out", self.client)
        return False

    async def authenticate(self, event: AuthAttempt) -> bool:
        check = self.config.authenticator
        if check is None:
            return False
        try:
            return bool(await trio.to_thread.run_sync(check, event.username, event.password))
        except Exception:
            logger.exception("the SMTP authenticator failed; refusing the login")
            return False


async def serve_smtp(
    layer: ChannelLayer,
    config: SMTPServerConfig,
    *,
    stopping: trio.Event | None = None,
    access_log: Any = None,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept SMTP connections on ``config.binds`` until cancelled (or ``stopping``).

    ``task_status.started()`` receives the bound ``(host, port)`` addresses (port 0 is
    resolved). When ``stopping`` is set: stop accepting, close idle sessions with 421,
    let the messages in flight finish, then return.
    """
    server = _Server(layer, config, stopping, access_log)
    options = getattr(layer, "options", None)
    bus_limit = getattr(options, "max_message_size", None)
    if isinstance(bus_limit, int) and 2 * config.session.max_message_size + 4096 > bus_limit:
        # email.receive carries the raw bytes and the decoded parts: about twice the mail.
        logger.warning(
            "SMTP max message size %d may not fit the layer's max_message_size %d once "
            "parsed (raw + decoded parts); such mail is refused with 552",
            config.session.max_message_size,
            bus_limit,
        )
    listeners: list[trio.SocketListener] = []
    try:
        for host, port in config.binds:
            listeners.extend(await trio.open_tcp_listeners(port, host=host or None))
    except OSError as exc:
        for listener in listeners:
            await listener.aclose()
        raise UsageError(f"cannot listen for SMTP on {config.binds}: {exc}") from exc
    addresses = []
    for listener in listeners:
        name = listener.socket.getsockname()
        addresses.append((str(name[0]), int(name[1])))
    try:
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as acceptors:
                for listener in listeners:
                    acceptors.start_soon(server.accept_loop, listener, connections)
                task_status.started(addresses)
                if stopping is None:
                    await trio.sleep_forever()
                await stopping.wait()
                acceptors.cancel_scope.cancel()
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            server.stop_idle()
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
