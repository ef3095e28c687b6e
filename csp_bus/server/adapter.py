"""The adapter interface: how a protocol adapter plugs into ``csp-bus serve``.

An *adapter* turns one network protocol into bus messages and back (DESIGN.md 4). The
server runtime (:mod:`csp_bus.server.runtime`) owns everything adapters share: the
channel layer, the listening sockets, the per-process reply dispatcher, the connection
registry and its limits, graceful shutdown and the access log. An adapter owns its
protocol and nothing else.

Finding an adapter
    ``csp-bus serve --adapter NAME`` looks ``NAME`` up in the entry-point group
    ``csp_bus.adapters``; the entry point names a *module* whose attribute ``adapter``
    is an :class:`Adapter` instance::

        [project.entry-points."csp_bus.adapters"]
        http = "csp_bus.adapters.http"

    Third-party adapters register the same way. :func:`load_adapter` does the lookup.

Life of an adapter in one server process
    1. ``add_arguments(group)``: contribute CLI options to an argparse group of the
       ``serve`` command (prefix them with the adapter name when they could clash:
       ``--ws-ping-interval``, ``--smtp-hostname``).
    2. ``configure(args, server)``: build a *frozen* config object from the parsed
       arguments (raise :class:`~csp_bus.errors.UsageError` with a clear message for a
       bad value). ``server`` is the already-built :class:`ServerConfig`.
    3. ``run(runtime, config, task_status=...)``: runs inside the server's nursery until
       cancelled. Before calling ``task_status.started()`` it registers what it
       contributes (a connection handler, an upgrade handler, a reply dispatcher); the
       runtime starts accepting connections only after every adapter has started.
       Adapters start in dependency order (``requires`` first).

Connection-accepting adapters
    ``listener_protocol`` names the wire protocol spoken on the server's listeners
    (``--bind``/``--unix``/``--fd``, TLS or not): ``"http"`` for the HTTP and WebSocket
    adapters (they share one port), ``"smtp"`` for an SMTP server. All adapters of one
    process must agree on it; one of them calls
    :meth:`~csp_bus.server.runtime.ServerRuntime.set_connection_handler` in ``run``.
    The runtime then calls ``handler(stream, connection)`` once per accepted connection,
    in its own task, with a :class:`~csp_bus.server.runtime.Connection` describing the
    peer. When the handler returns, the runtime closes the stream.

    The HTTP adapter serves the ``"http"`` listener protocol and offers an upgrade hook:
    an adapter that takes over HTTP connections (WebSocket) declares
    ``requires = ("http",)`` and, in ``run``, calls
    ``csp_bus.adapters.http.front(runtime).add_upgrade_handler("websocket", handler)``;
    see ``docs/server.md``. With ``--adapter websocket`` alone the same HTTP listener code
    runs, and plain HTTP requests are answered 404 unless ``http`` was asked for too.

Adapters without connections (an IRC client, an email sender) leave
``listener_protocol`` as ``None`` and just run their loops in ``run``.

Shutdown
    ``runtime.stopping`` (a :class:`trio.Event`) is set on SIGTERM/SIGINT: listeners
    are closed, and each connection should finish what is in flight and end (HTTP: finish
    the current response, close idle keep-alive connections; WebSocket: close with 1001).
    After ``--graceful-timeout`` seconds the runtime cancels whatever is left, adapters'
    ``run`` tasks included.
"""

from __future__ import annotations

import abc
import argparse
import importlib
from collections.abc import Awaitable, Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

import trio

from ..errors import UsageError

if TYPE_CHECKING:
    from .config import ServerConfig
    from .runtime import Connection, ServerRuntime

__all__ = [
    "ENTRY_POINT_GROUP",
    "Adapter",
    "AdapterNotFound",
    "ConnectionHandler",
    "available_adapters",
    "load_adapter",
    "resolve_adapters",
]

#: The entry-point group adapters register in (name -> module with an ``adapter`` attribute).
ENTRY_POINT_GROUP = "csp_bus.adapters"

#: ``await handler(stream, connection)``: serve one accepted connection until it ends.
ConnectionHandler = Callable[[trio.abc.Stream, "Connection"], Awaitable[None]]


class AdapterNotFound(UsageError, LookupError):
    """No adapter of that name is installed; the message lists the installed ones."""


class Adapter(abc.ABC):
    """One protocol adapter. Subclass it and expose an instance as ``module.adapter``."""

    #: The name used with ``--adapter`` (also the entry-point name).
    name: ClassVar[str]
    #: One line for ``csp-bus serve --help``.
    summary: ClassVar[str] = ""
    #: Adapters that must run in the same process (loaded and started first).
    requires: ClassVar[tuple[str, ...]] = ()
    #: Wire protocol on the server's listeners, or ``None`` for no listeners.
    listener_protocol: ClassVar[str | None] = None

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:  # noqa: B027
        """Add this adapter's options to the ``serve`` command (default: none)."""

    def configure(self, args: argparse.Namespace, server: ServerConfig) -> Any:
        """Build the adapter's frozen config from parsed arguments (default: ``None``).

        Raise :class:`~csp_bus.errors.UsageError` for a bad combination of options; the
        CLI prints it and exits with status 2.
        """
        return None

    @abc.abstractmethod
    async def run(
        self,
        runtime: ServerRuntime,
        config: Any,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until cancelled; call ``task_status.started()`` once ready.

        Before ``started()``: register handlers and open reply dispatchers. After it: run
        the adapter's own loops (an IRC client's connections, say). Return early only if
        there is nothing left to do; raising stops the whole server (log and recover
        from per-connection errors instead). Cancellation is the normal way to stop.
        """


def available_adapters() -> dict[str, str]:
    """Installed adapters: name -> module path, from the ``csp_bus.adapters`` group."""
    found: dict[str, str] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry.value)
    return found


def load_adapter(name: str) -> Adapter:
    """Import the adapter registered as ``name`` and return its ``adapter`` instance.

    Raises :class:`AdapterNotFound` (listing what is installed) or
    :class:`~csp_bus.errors.UsageError` when the module has no usable ``adapter``.
    """
    known = available_adapters()
    target = known.get(name)
    if target is None:
        listing = ", ".join(sorted(known)) or "none"
        raise AdapterNotFound(
            f"no adapter named {name!r} is installed (installed adapters: {listing}); "
            f"adapters register in the entry-point group {ENTRY_POINT_GROUP!r}"
        )
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"the {name!r} adapter cannot be loaded ({exc}); install its extra, e.g. "
            f"pip install 'csp-bus[{name}]'"
        ) from exc
    adapter = getattr(module, attribute or "adapter", None)
    if not isinstance(adapter, Adapter):
        raise UsageError(f"{target} (adapter {name!r}) does not provide an Adapter instance")
    return adapter


def resolve_adapters(names: list[str] | tuple[str, ...]) -> list[Adapter]:
    """Load ``names`` and their ``requires``, dependencies first, each once.

    Raises :class:`AdapterNotFound`, or :class:`~csp_bus.errors.UsageError` when the
    adapters disagree on the protocol of the shared listeners.
    """
    ordered: dict[str, Adapter] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in ordered:
            return
        if name in chain:
            raise UsageError(f"adapters require each other in a cycle: {' -> '.join(chain)}")
        adapter = load_adapter(name)
        for required in adapter.requires:
            visit(required, (*chain, name))
        ordered[name] = adapter

    for name in names:
        visit(name, ())
    protocols = {a.listener_protocol for a in ordered.values()} - {None}
    if len(protocols) > 1:
        raise UsageError(
            "these adapters need different protocols on the listening sockets "
            f"({', '.join(sorted(p for p in protocols if p))}); run them as separate "
            "'csp-bus serve' processes"
        )
    return list(ordered.values())
