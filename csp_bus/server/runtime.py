"""The interface-server runtime: one Trio nursery per server process (DESIGN.md 5).

:func:`run_server` opens the listeners, starts every adapter, accepts connections
within ``--max-connections`` and shuts down gracefully when :meth:`ServerRuntime.shutdown`
is called (the CLI calls it on SIGTERM/SIGINT):

1. stop accepting: listeners are closed, so new connections are refused by the kernel;
2. ``runtime.stopping`` is set: idle connections close at once, busy ones finish
   their response (HTTP) or close with 1001 (WebSocket);
3. after ``graceful_timeout`` seconds, whatever is left is cancelled.
"""

from __future__ import annotations

import itertools
import logging
import math
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from ..errors import UsageError
from ..layers.base import ChannelLayer
from .accesslog import AccessLog
from .adapter import Adapter, ConnectionHandler
from .config import ServerConfig
from .dispatcher import ReplyDispatcher
from .listeners import BoundSocket, make_sockets, make_ssl_context, to_listeners
from .proxy import TrustedProxies

__all__ = ["Connection", "ServerRuntime", "run_server"]

logger = logging.getLogger("csp_bus.server")


@dataclass(eq=False, slots=True)
class Connection:
    """One accepted connection, as the runtime tracks it.

    ``client``/``server`` are ``(host, port)``, or ``None`` on a Unix socket. The handler
    sets ``idle`` to True while nothing is in flight (an HTTP keep-alive connection
    between requests): graceful shutdown may then close it at once.
    """

    id: int
    client: tuple[str, int] | None
    server: tuple[str, int] | None
    tls: bool
    idle: bool = False
    #: cancelled by the runtime to close this connection now (idle at shutdown)
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def scheme(self) -> str:
        """``http`` or ``https`` before proxy headers (adapters map to ``ws``/``wss``)."""
        return "https" if self.tls else "http"

    def set_idle(self, idle: bool, runtime: ServerRuntime) -> None:
        """Mark idle/busy; an idle connection during shutdown is closed at once."""
        self.idle = idle
        if idle and runtime.stopping.is_set():
            self.cancel_scope.cancel()


def _address(sock: Any, peer: bool) -> tuple[str, int] | None:
    try:
        name = sock.getpeername() if peer else sock.getsockname()
    except OSError:
        return None
    if isinstance(name, tuple) and len(name) >= 2:
        return (str(name[0]), int(name[1]))
    return None


def _socket_of(stream: trio.abc.Stream) -> Any:
    inner: Any = stream
    while not isinstance(inner, trio.SocketStream):
        inner = getattr(inner, "transport_stream", None)
        if inner is None:
            return None
    return inner.socket


def _is_disconnect(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_disconnect(inner) for inner in exc.exceptions)
    return isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError)


class ServerRuntime:
    """What adapters get: the layer, the config, dispatchers, handlers, shutdown.

    Attributes: ``layer``, ``config`` (:class:`ServerConfig`), ``stopping`` (set when
    graceful shutdown begins), ``access_log`` (an :class:`AccessLog` or ``None``),
    ``proxies`` (:class:`TrustedProxies` or ``None`` when ``--proxy-headers`` is off),
    ``connections`` (id -> :class:`Connection`), ``addresses`` (URLs listened on),
    ``adapters`` (names running in this process), ``extensions`` (a dict adapters use
    to share objects, e.g. the HTTP adapter's front under ``"http.front"``).
    """

    def __init__(
        self,
        layer: ChannelLayer,
        config: ServerConfig,
        nursery: trio.Nursery,
        adapters: Sequence[str] = (),
        *,
        access_log: AccessLog | None = None,
    ) -> None:
        self.layer = layer
        self.config = config
        self.adapters = tuple(adapters)
        self.stopping = trio.Event()
        self.access_log = access_log
        self.proxies = (
            TrustedProxies.parse(config.forwarded_allow_ips) if config.proxy_headers else None
        )
        self.connections: dict[int, Connection] = {}
        self.addresses: list[str] = []
        self.extensions: dict[str, Any] = {}
        self.handler: ConnectionHandler | None = None
        self._nursery = nursery
        self._stop_requested = trio.Event()
        self._all_closed = trio.Event()
        self._ids = itertools.count(1)
        self.dispatchers: list[ReplyDispatcher] = []

    # -- what adapters call ------------------------------------------------------------

    def set_connection_handler(self, handler: ConnectionHandler) -> None:
        """Serve every accepted connection with ``handler`` (once per process)."""
        if self.handler is not None and self.handler is not handler:
            raise UsageError("a connection handler is already set for this server")
        self.handler = handler

    async def open_dispatcher(self, base: str) -> ReplyDispatcher:
        """A :class:`ReplyDispatcher` on a fresh prefix ``base.<random>!``, its receive
        loop running in the server's nursery until the server stops."""
        dispatcher = ReplyDispatcher(
            self.layer,
            base,
            buffer=self.config.reply_buffer,
            overrun_timeout=self.config.reply_overrun_timeout,
        )
        await self._nursery.start(dispatcher.run)
        self.dispatchers.append(dispatcher)
        return dispatcher

    def start_soon(self, fn: Any, *args: Any, name: str | None = None) -> None:
        """Run a background task in the server's nursery (cancelled at the end)."""
        self._nursery.start_soon(fn, *args, name=name)

    # -- shutdown ----------------------------------------------------------------------

    def shutdown(self) -> None:
        """Begin graceful shutdown (safe to call more than once, from Trio)."""
        self._stop_requested.set()

    # -- connections -------------------------------------------------------------------

    async def _serve_one(self, stream: trio.abc.Stream, limiter: trio.Semaphore, tls: bool) -> None:
        sock = _socket_of(stream)
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            client = _address(sock, peer=True)
            server = _address(sock, peer=False)
        else:
            client = server = None
        conn = Connection(next(self._ids), client, server, tls)
        self.connections[conn.id] = conn
        try:
            with conn.cancel_scope:
                assert self.handler is not None
                await self.handler(stream, conn)
        except Exception as exc:
            # The peer going away (or a failed TLS handshake) is normal, also when it
            # surfaces from a handler's nursery as an exception group.
            if not _is_disconnect(exc):
                logger.exception("connection %s from %s failed", conn.id, client)
        finally:
            await trio.aclose_forcefully(stream)
            del self.connections[conn.id]
            limiter.release()
            if self.stopping.is_set() and not self.connections:
                self._all_closed.set()

    async def _accept_loop(
        self,
        listener: trio.abc.Listener[trio.abc.Stream],
        limiter: trio.Semaphore,
        nursery: trio.Nursery,
        tls: bool,
    ) -> None:
        # At --max-connections we stop calling accept(): further clients wait in the
        # kernel's backlog instead of being accepted and refused.
        while True:
            await limiter.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:
                limiter.release()
                # EMFILE and friends: log and back off instead of spinning.
                logger.warning("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            except BaseException:
                limiter.release()
                raise
            nursery.start_soon(self._serve_one, stream, limiter, tls)


async def run_server(
    layer: ChannelLayer,
    config: ServerConfig,
    adapters: Sequence[tuple[Adapter, Any]],
    *,
    sockets: list[BoundSocket] | None = None,
    access_log: AccessLog | None = None,
    task_status: trio.TaskStatus[ServerRuntime] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until :meth:`ServerRuntime.shutdown` (graceful) or cancellation (hard).

    ``adapters`` are ``(adapter, config)`` pairs in start order (dependencies first, as
    :func:`~csp_bus.server.adapter.resolve_adapters` gives them). ``sockets`` are
    listening sockets made beforehand (``--workers``); otherwise they are made from
    ``config``. ``task_status.started(runtime)`` is called once connections are
    accepted, with ``runtime.addresses`` filled in.
    """
    if access_log is None and config.access_log:
        access_log = AccessLog()
    listen = any(adapter.listener_protocol for adapter, _ in adapters) and config.has_listeners
    own_sockets = sockets is None
    if listen and sockets is None:
        sockets = make_sockets(config)
    try:
        ssl_context = make_ssl_context(config) if listen else None
        async with trio.open_nursery() as nursery:
            runtime = ServerRuntime(
                layer,
                config,
                nursery,
                [adapter.name for adapter, _ in adapters],
                access_log=access_log,
            )
            for adapter, adapter_config in adapters:
                await nursery.start(adapter.run, runtime, adapter_config)
            if not (listen and runtime.handler is None):
                await _serve_connections(
                    runtime, sockets if listen else [], ssl_context, task_status
                )
            nursery.cancel_scope.cancel()
        if listen and runtime.handler is None:  # raised here, not as an exception group
            raise UsageError(
                "no adapter set a connection handler for the listening sockets "
                f"(adapters: {', '.join(runtime.adapters)})"
            )
    finally:
        if own_sockets and sockets:
            for item in sockets:
                item.sock.close()


async def _serve_connections(
    runtime: ServerRuntime,
    sockets: list[BoundSocket] | None,
    ssl_context: Any,
    task_status: trio.TaskStatus[ServerRuntime],
) -> None:
    config = runtime.config
    listeners = to_listeners(sockets or [], ssl_context)
    runtime.addresses = [item.url(config.tls) for item in sockets or []]
    limiter = trio.Semaphore(config.max_connections)
    async with trio.open_nursery() as connections:
        with trio.CancelScope() as accepting:
            async with trio.open_nursery() as acceptors:
                for listener in listeners:
                    acceptors.start_soon(
                        runtime._accept_loop, listener, limiter, connections, config.tls
                    )
                task_status.started(runtime)
                await runtime._stop_requested.wait()
                accepting.cancel()
        # 1. stop accepting
        for listener in listeners:
            await trio.aclose_forcefully(listener)
        # 2. let in-flight work finish; idle connections close now
        runtime.stopping.set()
        if not runtime.connections:
            runtime._all_closed.set()
        for conn in list(runtime.connections.values()):
            if conn.idle:
                conn.cancel_scope.cancel()
        timeout = config.graceful_timeout
        with trio.move_on_after(timeout if math.isfinite(timeout) else math.inf):
            await runtime._all_closed.wait()
        # 3. cancel the rest
        connections.cancel_scope.cancel()
