"""Every exception csp-bus raises has one root, :class:`BusError`.

The tree says whose fault a failure is:

* :class:`UsageError` -- the caller misused the API (a bad channel name, a message that
  cannot be serialized, a closed layer, a bad layer URL). Fix the calling code.
* :class:`ChannelFull` -- backpressure, nobody's fault: the receiver is behind. Retry
  later, drop, or use :meth:`~csp_bus.layers.base.ChannelLayer.send_wait`.
* :class:`LayerError` -- the backend failed (Redis unreachable, timed out, answered an
  error). Usually temporary.
* :class:`RemoteProtocolError` -- a network peer misbehaved. It carries a *reply hint*
  (an HTTP status, a WebSocket close code, an SMTP reply code) so that the protocol glue
  answers the peer correctly without guessing.

Third-party exceptions are translated at the edge and chained with ``raise ... from``.
"""

from __future__ import annotations

__all__ = [
    "BusError",
    "ChannelFull",
    "InvalidChannelName",
    "InvalidGroupName",
    "InvalidLayerURL",
    "InvalidMessage",
    "LayerClosed",
    "LayerError",
    "LayerTimeout",
    "LayerUnavailable",
    "MessageTooLarge",
    "RemoteProtocolError",
    "UsageError",
]


class BusError(Exception):
    """Root of every csp-bus exception."""


class UsageError(BusError):
    """The caller used the API wrongly; retrying the same call fails the same way."""


class InvalidChannelName(UsageError, ValueError):
    """A channel name breaks the naming rules (DESIGN.md section 3)."""

    def __init__(self, name: object, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"invalid channel name {name!r}: {reason}")


class InvalidGroupName(InvalidChannelName):
    """A group name breaks the naming rules (channel rules without ``!`` or ``?``)."""

    def __init__(self, name: object, reason: str) -> None:
        super().__init__(name, reason)
        self.args = (f"invalid group name {name!r}: {reason}",)


class InvalidMessage(UsageError, TypeError):
    """A message is not a JSON-compatible dict; ``path`` locates the bad value."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class MessageTooLarge(InvalidMessage):
    """The serialized message is bigger than the layer's ``max_message_size``."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__("message", f"serialized size {size} bytes exceeds the limit of {limit}")


class InvalidLayerURL(UsageError, ValueError):
    """A layer URL has an unknown scheme or a bad parameter; the text lists what is accepted."""


class LayerClosed(UsageError):
    """The layer was closed (or its Trio program ended) before or during the call."""


class ChannelFull(BusError):
    """The channel is at capacity; the message was not sent."""

    def __init__(self, channel: str, capacity: int) -> None:
        self.channel = channel
        self.capacity = capacity
        super().__init__(f"channel {channel!r} is full (capacity {capacity})")


class LayerError(BusError):
    """The backend failed; the operation may or may not have taken effect."""


class LayerUnavailable(LayerError, ConnectionError):
    """The backend cannot be reached (connection refused, dropped, or reconnecting)."""


class LayerTimeout(LayerError, TimeoutError):
    """The backend did not answer within the configured timeout."""


class RemoteProtocolError(BusError):
    """A network peer broke its protocol.

    ``hint`` is what the glue should answer: an HTTP status (400, 413, 431...), a
    WebSocket close code (1002, 1007, 1009...) or an SMTP reply code (500, 552...).
    """

    def __init__(self, message: str, *, hint: int | None = None) -> None:
        self.hint = hint
        super().__init__(message)
