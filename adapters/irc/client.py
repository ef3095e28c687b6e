"""The Trio glue of the IRC adapter: connections to IRC servers, on the bus.

:func:`run_irc` keeps one connection per configured server (TCP, TLS optional) and
reconnects with exponential backoff and jitter. IRC traffic goes to the layer as
``irc-client.connect`` / ``irc-client.join`` / ``irc-client.receive`` /
``irc-client.disconnect``; control messages come back on each connection's
``reply_channel`` (process-local, one receive loop for the process, stable across
reconnects). Protocol rules live in :mod:`.protocol`; this module only moves bytes,
messages and time. See ``docs/irc.md``.

Per connection, in one nursery: the reader (this task: bytes -> events -> bus), a writer
(lines out at the pace of the flood-control bucket), the control task (bus -> lines), a
lag checker, and one sleeper per pending rejoin. Nothing buffers without bound: the
layer refuses with ``ChannelFull`` (receive events are logged and dropped, never
waited for), control messages wait in a bounded memory channel, outgoing lines in the
client's bounded outbox.
"""

from __future__ import annotations

import logging
import math
import os
import random
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from csp_bus.errors import ChannelFull, LayerClosed, LayerError, UsageError
from csp_bus.layers.base import ChannelLayer
from csp_bus.messages import Message
from csp_bus.server.dispatcher import ReplyDispatcher, ReplyOverrun

from .protocol import (
    ClientSettings,
    CommandFailed,
    InvalidControl,
    IrcClient,
    IrcProtocolError,
    Joined,
    Kicked,
    LagMeasured,
    NickChanged,
    OutboxFull,
    Received,
    Registered,
    RegistrationFailed,
    ServerError,
    check_safe,
)

__all__ = [
    "CONNECT_CHANNEL",
    "DISCONNECT_CHANNEL",
    "JOIN_CHANNEL",
    "RECEIVE_CHANNEL",
    "IrcConfig",
    "IrcConnectionState",
    "IrcServerConfig",
    "run_irc",
]

logger = logging.getLogger("csp_bus.adapters.irc")

CONNECT_CHANNEL = "irc-client.connect"
JOIN_CHANNEL = "irc-client.join"
RECEIVE_CHANNEL = "irc-client.receive"
DISCONNECT_CHANNEL = "irc-client.disconnect"


@dataclass(frozen=True, kw_only=True)
class IrcServerConfig:
    """One IRC server to stay connected to, and who to be there."""

    host: str
    port: int = 6667
    nick: str
    alt_nicks: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()  # "#a" or "#a key"
    tls: bool = False
    #: verify the server's certificate (against ``tls_ca_file`` or the system store)
    tls_verify: bool = True
    tls_ca_file: str | None = None
    username: str = "cspbus"
    realname: str = "csp-bus IRC adapter"
    password: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    sasl_required: bool = True

    def __post_init__(self) -> None:
        if not self.host:
            raise UsageError("IRC server host must not be empty")
        if not 0 < self.port < 65536:
            raise UsageError(f"IRC server port {self.port} is not in 1..65535")
        if self.tls_ca_file is not None and not os.path.isfile(self.tls_ca_file):
            raise UsageError(f"IRC server {self.address}: no CA file {self.tls_ca_file!r}")
        self.settings(IrcConfig(servers=()))  # validates nick, channels, SASL ...

    def settings(self, config: IrcConfig) -> ClientSettings:
        """The sans-IO client's settings for this server under ``config``."""
        try:
            return ClientSettings(
                nick=self.nick,
                alt_nicks=self.alt_nicks,
                username=self.username,
                realname=self.realname,
                password=self.password,
                sasl_username=self.sasl_username,
                sasl_password=self.sasl_password,
                sasl_required=self.sasl_required,
                channels=self.channels,
                flood_burst=config.flood_burst,
                flood_rate=config.flood_rate,
                outbox_limit=config.outbox_limit,
                version=config.version,
            )
        except InvalidControl as exc:
            raise UsageError(f"IRC server {self.host}:{self.port}: {exc}") from exc

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class IrcConfig:
    """Everything :func:`run_irc` needs; built once (CLI, config file, your code).

    Times are seconds. The defaults suit public networks; tests shrink them.
    """

    servers: tuple[IrcServerConfig, ...]
    #: flood control: lines at once, then lines per second (token bucket)
    flood_burst: int = 5
    flood_rate: float = 0.5
    #: outgoing lines held back by flood control before new ones are dropped
    outbox_limit: int = 500
    #: control messages buffered per connection between the bus and the IRC client
    control_buffer: int = 64
    #: reconnect backoff: min * 2**attempt, capped at max, times a random 0.5..1 (jitter)
    reconnect_min: float = 1.0
    reconnect_max: float = 120.0
    connect_timeout: float = 30.0
    registration_timeout: float = 60.0
    #: lag check: a PING every lag_interval; no PONG within lag_timeout -> reconnect
    lag_interval: float = 60.0
    lag_timeout: float = 120.0
    #: rejoin a channel this long after being kicked from it (None: never rejoin)
    rejoin_delay: float | None = 5.0
    quit_message: str = "csp-bus shutting down"
    #: how long shutdown waits to deliver QUIT (and one line write may take at most)
    write_timeout: float = 5.0
    #: bounded wait for room on irc-client.connect/join/disconnect before dropping
    event_send_timeout: float = 5.0
    version: str = "csp-bus IRC adapter"
    #: base of the process-local reply prefix (irc-client.<random>!)
    reply_base: str = "irc-client"

    def __post_init__(self) -> None:
        if self.flood_burst < 1 or self.flood_rate <= 0:
            raise UsageError("flood control needs burst >= 1 and rate > 0")
        if self.reconnect_min <= 0 or self.reconnect_max < self.reconnect_min:
            raise UsageError("reconnect backoff needs 0 < min <= max")
        if self.lag_interval <= 0 or self.lag_timeout <= 0:
            raise UsageError("lag_interval and lag_timeout must be positive")
        if self.control_buffer < 1 or self.outbox_limit < 1:
            raise UsageError("control_buffer and outbox_limit must be at least 1")
        check_safe("quit_message", self.quit_message)

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before reconnect ``attempt`` (0-based): exponential, capped,
        with jitter so that many bots cut off together do not return together."""
        ceiling = min(self.reconnect_max, self.reconnect_min * 2 ** min(attempt, 32))
        return float(ceiling * (rng or random).uniform(0.5, 1.0))


def _describe(exc: BaseException) -> str:
    """The error and its causes in one line (trio wraps ssl errors without a message)."""
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(parts) < 4:
        parts.append(str(current) or type(current).__name__)
        current = current.__cause__ or current.__context__
    return ": ".join(parts)


class _ConnectionLost(Exception):
    """Internal: the session ended (EOF, reset, lag timeout, failed registration)."""


@dataclass
class IrcConnectionState:
    """What :func:`run_irc` reports per server (``task_status.started`` gives a list):
    read it in tests and status pages."""

    server: IrcServerConfig
    reply_channel: str
    nick: str | None = None
    registered: bool = False
    connects: int = 0
    connect_failures: int = 0
    lag: float | None = None
    channels: tuple[str, ...] = ()
    dropped_events: int = 0
    dropped_controls: int = 0
    invalid_controls: int = 0
    changed: trio.Event = field(default_factory=trio.Event)

    def _touch(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class _Connection:
    def __init__(
        self,
        layer: ChannelLayer,
        config: IrcConfig,
        server: IrcServerConfig,
        dispatcher: ReplyDispatcher,
    ) -> None:
        self.layer = layer
        self.dispatcher = dispatcher
        reply = dispatcher.open_channel()
        self.config = config
        self.server = server
        self.reply = reply
        self.state = IrcConnectionState(server=server, reply_channel=reply.name)
        # Channels to (re)join on connect: the configured ones plus those joined later
        # through control messages (and minus those parted), so a reconnect restores them.
        self.wanted: dict[str, str] = {}
        for entry in server.channels:
            self.wanted[entry.partition(" ")[0].lower()] = entry
        self.client: IrcClient | None = None
        self._wake = trio.Event()
        self._lost: str | None = None  # the link is broken: no QUIT
        self._ended: str | None = None  # why a watchdog ended the session

    # -- the reconnect loop ---------------------------------------------------------------

    async def run(self) -> None:
        attempt = 0
        while True:
            registered = False
            try:
                stream = await self._open()
            except (OSError, trio.TooSlowError, ssl.SSLError, trio.BrokenResourceError) as exc:
                logger.warning("IRC %s: cannot connect: %s", self.server.address, _describe(exc))
                self.state.connect_failures += 1
                self.state._touch()
            else:
                registered = await self._session(stream)
            if registered:
                attempt = 0
            delay = self.config.backoff(attempt)
            attempt += 1
            logger.info("IRC %s: reconnecting in %.1f s", self.server.address, delay)
            with trio.move_on_after(delay):
                await self._drop_controls_while_offline()

    async def _open(self) -> trio.abc.Stream:
        server = self.server
        with trio.fail_after(self.config.connect_timeout):
            if not server.tls:
                return await trio.open_tcp_stream(server.host, server.port)
            context = ssl.create_default_context(cafile=server.tls_ca_file)
            if not server.tls_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            stream = await trio.open_ssl_over_tcp_stream(
                server.host, server.port, ssl_context=context
            )
            try:
                await stream.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            return stream

    async def _drop_controls_while_offline(self) -> None:
        while True:
            message = await self._next_control()
            if message is None:
                continue
            self.state.dropped_controls += 1
            logger.warning(
                "IRC %s: not connected; control message %r dropped",
                self.server.address,
                message.get("type"),
            )

    async def _next_control(self) -> Message | None:
        try:
            return await self.reply.receive()
        except ReplyOverrun:
            # Cannot happen while control messages are taken at once (they are: queueing
            # lines never waits); if it does, carry on under a new name and say so.
            self.reply = self.dispatcher.open_channel()
            self.state.reply_channel = self.reply.name
            logger.error(
                "IRC %s: control messages overran their buffer; new reply channel %s "
                "(announced with the next irc-client.connect)",
                self.server.address,
                self.reply.name,
            )
            return None

    # -- one connection ---------------------------------------------------------------------

    async def _session(self, stream: trio.abc.Stream) -> bool:
        """Run one connection until it ends; return whether it got registered."""
        settings = replace(self.server.settings(self.config), channels=tuple(self.wanted.values()))
        client = self.client = IrcClient(settings)
        client.start()
        state = self.state
        connects = state.connects
        self._lost = self._ended = None
        reason = "connection closed"
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, stream, client, nursery.cancel_scope)
                nursery.start_soon(self._controls, client)
                nursery.start_soon(self._registration_watchdog, client, nursery.cancel_scope)
                try:
                    reason = await self._reader(stream, client, nursery)
                except _ConnectionLost as exc:
                    reason = str(exc)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._lost = f"connection lost: {_describe(exc)}"
                nursery.cancel_scope.cancel()
        finally:
            reason = self._lost or self._ended or reason
            with trio.CancelScope(shield=True):
                await self._close(stream, client, self._lost is not None)
                if state.registered:
                    state.registered = False
                    state.channels = ()
                    state._touch()
                    await self._emit_event(
                        DISCONNECT_CHANNEL,
                        {
                            "reply_channel": self.reply.name,
                            "server": [self.server.host, self.server.port],
                            "nickname": client.nick,
                            "reason": reason,
                        },
                    )
            logger.info("IRC %s: disconnected (%s)", self.server.address, reason)
        return state.connects > connects

    async def _close(self, stream: trio.abc.Stream, client: IrcClient, dead: bool) -> None:
        """Say QUIT (unless the link is already dead or the server closed it), then
        close. Bounded by ``write_timeout``."""
        with trio.move_on_after(self.config.write_timeout):
            if not dead and client.state != "closed":
                try:
                    await stream.send_all(client.quit(self.config.quit_message))
                    # Let the server acknowledge (ERROR / close) so the QUIT is not lost
                    # to a reset when we close first.
                    with trio.move_on_after(1.0):
                        while await stream.receive_some(4096):
                            pass
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        await trio.aclose_forcefully(stream)

    async def _registration_watchdog(self, client: IrcClient, scope: trio.CancelScope) -> None:
        await trio.sleep(self.config.registration_timeout)
        if client.state == "registering":
            logger.warning(
                "IRC %s: not registered after %g s; reconnecting",
                self.server.address,
                self.config.registration_timeout,
            )
            self._ended = "registration timed out"
            scope.cancel()

    # -- reading ------------------------------------------------------------------------------

    async def _reader(
        self, stream: trio.abc.Stream, client: IrcClient, nursery: trio.Nursery
    ) -> str:
        while True:
            data = await stream.receive_some(16384)
            client.receive_data(data, trio.current_time())
            while True:
                try:
                    event = client.next_event()
                except IrcProtocolError as exc:
                    logger.warning("IRC %s: bad line skipped: %s", self.server.address, exc)
                    continue
                if event is None:
                    break
                reason = await self._handle(event, client, nursery)
                if reason is not None:
                    return reason
            self._wake.set()
            if not data:
                return "server closed the connection"

    async def _handle(self, event: Any, client: IrcClient, nursery: trio.Nursery) -> str | None:
        state = self.state
        address = self.server.address
        state.channels = tuple(client.channels.values())
        if isinstance(event, Received):
            await self._emit_receive(event.to_message(self.reply.name))
        elif isinstance(event, Joined):
            state._touch()
            await self._emit_event(JOIN_CHANNEL, event.to_message(self.reply.name))
        elif isinstance(event, Registered):
            logger.info("IRC %s: registered as %s", address, event.nick)
            state.registered = True
            state.nick = event.nick
            state.connects += 1
            state.reply_channel = self.reply.name
            state._touch()
            nursery.start_soon(self._lag_checker, client, nursery.cancel_scope)
            await self._emit_event(
                CONNECT_CHANNEL,
                event.to_message(self.reply.name, (self.server.host, self.server.port)),
            )
        elif isinstance(event, Kicked):
            logger.warning(
                "IRC %s: kicked from %s by %s (%s)", address, event.channel, event.by, event.reason
            )
            state._touch()
            if self.config.rejoin_delay is not None:
                nursery.start_soon(self._rejoin_later, client, event.channel)
        elif isinstance(event, NickChanged):
            logger.info("IRC %s: nick %s -> %s", address, event.old, event.new)
            state.nick = event.new
            state._touch()
        elif isinstance(event, LagMeasured):
            state.lag = event.seconds
            state._touch()
            logger.debug("IRC %s: lag %.3f s", address, event.seconds)
        elif isinstance(event, CommandFailed):
            logger.warning("IRC %s: server refused: %s", address, event)
        elif isinstance(event, ServerError):
            return f"server error: {event.reason}"
        elif isinstance(event, RegistrationFailed):
            logger.error("IRC %s: registration failed: %s", address, event.reason)
            return f"registration failed: {event.reason}"
        return None

    async def _emit_receive(self, message: Message) -> None:
        # Receive events are never waited for: a full channel drops the event (logged),
        # so a slow bot can never stall the socket reader (and the PONGs it sends).
        try:
            await self.layer.send(RECEIVE_CHANNEL, message)
        except ChannelFull:
            self.state.dropped_events += 1
            self.state._touch()
            logger.warning(
                "IRC %s: %s is full; %s event dropped",
                self.server.address,
                RECEIVE_CHANNEL,
                message.get("type"),
            )
        except LayerClosed:
            raise
        except LayerError as exc:
            self.state.dropped_events += 1
            logger.warning("IRC %s: layer error, event dropped: %s", self.server.address, exc)

    async def _emit_event(self, channel: str, message: Message) -> None:
        # Lifecycle events are rare and matter more: a bounded wait for room, then drop.
        try:
            await self.layer.send_wait(channel, message, timeout=self.config.event_send_timeout)
        except ChannelFull:
            self.state.dropped_events += 1
            logger.warning("IRC %s: %s is full; event dropped", self.server.address, channel)
        except LayerClosed:
            raise
        except LayerError as exc:
            self.state.dropped_events += 1
            logger.warning("IRC %s: layer error, %s dropped: %s", self.server.address, channel, exc)

    # -- writing ------------------------------------------------------------------------------

    async def _writer(
        self, stream: trio.abc.Stream, client: IrcClient, session: trio.CancelScope
    ) -> None:
        try:
            await self._write_loop(stream, client)
        except (trio.BrokenResourceError, trio.ClosedResourceError, _ConnectionLost) as exc:
            # Ends the session without an exception group: the reader is cancelled.
            self._lost = f"connection lost: {_describe(exc)}"
            session.cancel()

    async def _write_loop(self, stream: trio.abc.Stream, client: IrcClient) -> None:
        while True:
            self._wake = trio.Event()  # no checkpoint until the wait below: no lost wakeup
            line, wait = client.next_line(trio.current_time())
            if line is not None:
                # One line is written whole or the link is declared broken: a cancelled
                # half-written line would glue the next one (QUIT) onto its tail.
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + self.config.write_timeout
                    await stream.send_all(line)
                if scope.cancelled_caught:
                    raise _ConnectionLost("write timed out")
                await trio.lowlevel.checkpoint()
                continue
            with trio.move_on_after(wait if wait > 0 else math.inf):
                await self._wake.wait()

    async def _controls(self, client: IrcClient) -> None:
        address = self.server.address
        while True:
            message = await self._next_control()
            if message is None:
                continue
            try:
                client.control(message)
            except InvalidControl as exc:
                self.state.invalid_controls += 1
                logger.warning("IRC %s: control message refused: %s", address, exc)
                continue
            except OutboxFull as exc:
                self.state.dropped_controls += 1
                logger.warning("IRC %s: %s", address, exc)
                continue
            self._track_wanted(message)
            self._wake.set()

    def _track_wanted(self, message: Message) -> None:
        kind = message.get("type")
        channel = message.get("channel")
        if not isinstance(channel, str):
            return
        if kind == "join":
            key = message.get("key") or ""
            self.wanted[channel.lower()] = f"{channel} {key}".strip()
        elif kind == "part":
            self.wanted.pop(channel.lower(), None)

    async def _lag_checker(self, client: IrcClient, scope: trio.CancelScope) -> None:
        while True:
            await trio.sleep(self.config.lag_interval)
            if not client.lag_check(trio.current_time(), self.config.lag_timeout):
                logger.warning(
                    "IRC %s: no PONG for %g s; reconnecting",
                    self.server.address,
                    self.config.lag_timeout,
                )
                self._ended = f"no PONG within {self.config.lag_timeout:g} s (lag check)"
                scope.cancel()
                return
            self._wake.set()

    async def _rejoin_later(self, client: IrcClient, channel: str) -> None:
        await trio.sleep(self.config.rejoin_delay or 0.0)
        logger.info("IRC %s: rejoining %s", self.server.address, channel)
        client.rejoin(channel)
        self._wake.set()


async def run_irc(
    layer: ChannelLayer,
    config: IrcConfig,
    *,
    task_status: trio.TaskStatus[list[IrcConnectionState]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Stay connected to every server of ``config`` until cancelled.

    ``task_status.started(states)`` reports one :class:`IrcConnectionState` per server
    (its ``reply_channel`` is fixed for the life of this call). On cancellation each
    connection says QUIT (bounded by ``write_timeout``) and an ``irc-client.disconnect``
    is sent for each registered one.
    """
    if not config.servers:
        raise UsageError("no IRC server configured (--irc-server HOST:PORT or --irc-config)")
    dispatcher = ReplyDispatcher(layer, config.reply_base, buffer=config.control_buffer)
    async with trio.open_nursery() as nursery:
        await nursery.start(dispatcher.run)
        connections = [_Connection(layer, config, server, dispatcher) for server in config.servers]
        for connection in connections:
            nursery.start_soon(connection.run, name=f"irc {connection.server.address}")
        task_status.started([connection.state for connection in connections])


def parse_server(text: str) -> tuple[str, int]:
    """``"host:port"``, ``"host"`` (port 6667), ``"[::1]:6697"`` -> ``(host, port)``."""
    host, port = text, "6667"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or not port.isdigit():
        raise UsageError(
            f"IRC server {text!r} must look like HOST:PORT (e.g. irc.libera.chat:6697)"
        )
    return host, int(port)


def servers_from(items: Sequence[dict[str, Any]]) -> tuple[IrcServerConfig, ...]:
    """Server configs from plain dicts (a config file's ``[[server]]`` tables)."""
    known = set(IrcServerConfig.__dataclass_fields__)
    servers = []
    for index, item in enumerate(items):
        unknown = set(item) - known
        if unknown:
            raise UsageError(
                f"server {index + 1}: unknown key(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        values = dict(item)
        for key in ("alt_nicks", "channels"):
            if isinstance(values.get(key), str):
                values[key] = tuple(filter(None, (c.strip() for c in values[key].split(","))))
            elif key in values:
                values[key] = tuple(values[key])
        if "host" in values and ":" in str(values["host"]) and "port" not in values:
            values["host"], values["port"] = parse_server(str(values["host"]))
        try:
            servers.append(IrcServerConfig(**values))
        except TypeError as exc:
            raise UsageError(f"server {index + 1}: {exc}") from exc
    return tuple(servers)
