"""The interface-server runtime shared by every protocol adapter (DESIGN.md 5).

``csp-bus serve --adapter http`` builds a :class:`ServerConfig`, loads adapters through
the ``csp_bus.adapters`` entry points (:func:`resolve_adapters`) and runs
:func:`run_server`. Adapters implement :class:`Adapter`; see ``docs/server.md``.
"""

from __future__ import annotations

from .accesslog import AccessLog
from .adapter import (
    ENTRY_POINT_GROUP,
    Adapter,
    AdapterNotFound,
    ConnectionHandler,
    available_adapters,
    load_adapter,
    resolve_adapters,
)
from .config import ServerConfig, parse_bind
from .dispatcher import ReplyChannel, ReplyDispatcher, ReplyOverrun
from .proxy import TrustedProxies
from .runtime import Connection, ServerRuntime, run_server

__all__ = [
    "ENTRY_POINT_GROUP",
    "AccessLog",
    "Adapter",
    "AdapterNotFound",
    "Connection",
    "ConnectionHandler",
    "ReplyChannel",
    "ReplyDispatcher",
    "ReplyOverrun",
    "ServerConfig",
    "ServerRuntime",
    "TrustedProxies",
    "available_adapters",
    "load_adapter",
    "parse_bind",
    "resolve_adapters",
    "run_server",
]
