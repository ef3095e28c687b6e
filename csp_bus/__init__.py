"""csp-bus: a Go-style CSP message bus for Python.

Named channels carry JSON-compatible dict messages; five operations (``send``,
``receive``, ``group_add``, ``group_discard``, ``send_group``) move them. Importing this
package does nothing but define names: no event loop, no settings, no logging setup.
"""

from __future__ import annotations

from .errors import (
    BusError,
    ChannelFull,
    InvalidChannelName,
    InvalidGroupName,
    InvalidLayerURL,
    InvalidMessage,
    LayerClosed,
    LayerError,
    LayerTimeout,
    LayerUnavailable,
    MessageTooLarge,
    RemoteProtocolError,
    UsageError,
)
from .layers import ChannelLayer, open_layer
from .layers.options import LayerOptions

__version__ = "0.1.0"

__all__ = [
    "BusError",
    "ChannelFull",
    "ChannelLayer",
    "InvalidChannelName",
    "InvalidGroupName",
    "InvalidLayerURL",
    "InvalidMessage",
    "LayerClosed",
    "LayerError",
    "LayerOptions",
    "LayerTimeout",
    "LayerUnavailable",
    "MessageTooLarge",
    "RemoteProtocolError",
    "UsageError",
    "__version__",
    "open_layer",
]
