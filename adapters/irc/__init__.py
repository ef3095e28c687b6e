"""The IRC adapter: a client of IRC servers that turns IRC traffic into bus messages.

``protocol.py`` is the sans-IO core (lines, tags, CTCP, registration, flood control);
``client.py`` is the Trio glue (sockets, TLS, reconnects, the bus). ``docs/irc.md``
documents the ``irc-client.*`` messages.

Importing this package imports neither trio nor the glue: ``csp_bus.adapters.irc.client``
is loaded when a server actually runs the adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["IrcConfig", "IrcServerConfig", "adapter", "run_irc"]

if TYPE_CHECKING:
    from .client import IrcConfig, IrcServerConfig, run_irc
    from .plugin import adapter


def __getattr__(name: str) -> Any:
    # Lazy: `import csp_bus.adapters.irc` must stay cheap and side-effect free. The
    # server runtime reads `adapter` (entry point irc = "csp_bus.adapters.irc").
    if name == "adapter":
        from .plugin import adapter

        return adapter
    if name in __all__:
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
