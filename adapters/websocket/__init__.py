"""The WebSocket adapter: ``csp-bus serve --adapter websocket`` (DESIGN.md section 4).

* :mod:`csp_bus.adapters.websocket.protocol` -- the sans-IO core around wsproto:
  handshake, frames, close codes, keep-alive bookkeeping; no I/O, no trio.
* :mod:`csp_bus.adapters.websocket.server` -- the Trio glue: one task per connection,
  backpressure, shutdown.

Importing this package imports neither (``import csp_bus`` does nothing, STYLE.md).
"""

from __future__ import annotations

__all__: list[str] = []
