"""Sans-IO WebSocket server core: bytes in, bus messages and bytes out.

One :class:`WebSocketConnection` per TCP connection. The caller (the Trio glue, or a
test) feeds what it reads with :meth:`~WebSocketConnection.receive_data` (``b""`` at end
of input), pulls events with :meth:`~WebSocketConnection.next_event` until it returns
:data:`NEED_DATA`, writes :meth:`~WebSocketConnection.data_to_send` to the socket, and
closes the socket once :attr:`~WebSocketConnection.state` is :attr:`State.CLOSED` and
everything was written. Nothing here does I/O, reads a clock or imports trio: time comes
in as an argument (:meth:`~WebSocketConnection.tick`).

The handshake is ours (RFC 6455 section 4.2, parsed by h11) rather than wsproto's
``H11Handshake``, for three reasons: the HTTP adapter hands over an already-parsed
``h11.Request`` plus the bytes read after it, the bytes a client sent right after its
request must not be lost (wsproto's server handshake drops them), and the negotiation of
permessage-deflate must pick one offer and bound decompression (see
:class:`PerMessageDeflate`). Frames are wsproto's ``Connection``.

Message formats are DESIGN.md section 4 (ASGI 1.x): ``websocket.connect`` (``order`` 0),
``websocket.receive`` (``order`` 1, 2, ...; ``text`` or ``bytes``, the other one
``None``), ``websocket.disconnect`` (``code``, ``order``), and the replies on
``reply_channel``: ``accept``, ``text``/``bytes``, ``close`` (``True`` or a code),
``subprotocol``.

Errors: a peer that breaks the protocol makes :meth:`~WebSocketConnection.next_event`
raise :class:`WebSocketProtocolError` (a :class:`~csp_bus.errors.RemoteProtocolError`)
whose ``hint`` is the HTTP status (during the handshake) or the close code (after it).
The answer (an HTTP error response, a Close frame) is already queued in
:meth:`~WebSocketConnection.data_to_send` when it is raised. A bad reply from the
application raises :class:`InvalidReply` and changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote_to_bytes, urlsplit

import h11
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, Opcode, RsvBits
from wsproto.utilities import LocalProtocolError

from csp_bus.errors import RemoteProtocolError, UsageError

__all__ = [
    "NEED_DATA",
    "ConnectRequest",
    "Disconnected",
    "InvalidReply",
    "MessageReceived",
    "NeedData",
    "PerMessageDeflate",
    "State",
    "WebSocketConfig",
    "WebSocketConnection",
    "WebSocketProtocolError",
    "accept_token",
    "negotiate_deflate",
    "origin_allowed",
]

# RFC 6455 section 1.3: the GUID the accept token is derived with.
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: Close codes an application may send (RFC 6455 section 7.4; 1004-1006 and 1015 are
#: reserved, 1012-1014 registered by IANA since).
_APP_CLOSE_CODES: Final = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})

_REASONS: Final = {
    101: b"Switching Protocols",
    400: b"Bad Request",
    403: b"Forbidden",
    405: b"Method Not Allowed",
    426: b"Upgrade Required",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}

# RFC 7230 section 3.2.6 token characters (subprotocol names are tokens, RFC 6455 4.1).
_TOKEN_CHARS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


class InvalidReply(UsageError, ValueError):
    """The application's reply on ``reply_channel`` is malformed; it was ignored."""


class WebSocketProtocolError(RemoteProtocolError):
    """The peer broke RFC 6455 (or RFC 7692).

    ``hint`` is the HTTP status answered during the handshake (400, 403, 405, 426, 431),
    or the close code sent after it (1002 protocol error, 1007 invalid payload such as
    bad UTF-8, 1009 message too big). The answer is already in ``data_to_send()``.
    """


class NeedData:
    """Type of :data:`NEED_DATA`: feed more bytes before asking for the next event."""

    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


class State(enum.Enum):
    """Where a connection is. Transitions only go down this list (or skip ahead)."""

    #: reading the HTTP upgrade request
    HANDSHAKE = "handshake"
    #: request parsed, ``websocket.connect`` handed out; waiting for the application
    CONNECTING = "connecting"
    #: accepted: frames flow both ways
    OPEN = "open"
    #: we sent a Close frame and wait for the peer's
    CLOSING = "closing"
    #: done: write ``data_to_send()`` and close the socket
    CLOSED = "closed"


@dataclass(frozen=True, kw_only=True)
class WebSocketConfig:
    """Limits and policies of the WebSocket adapter (one object per server)."""

    #: largest message accepted from a peer, after decompression; bigger: close 1009.
    max_message_size: int = 1024 * 1024
    #: seconds of silence from the peer before a keep-alive ping; ``None``: no pings.
    ping_interval: float | None = 20.0
    #: seconds to wait for any data after a keep-alive ping before dropping the peer.
    ping_timeout: float | None = 20.0
    #: allowed ``Origin`` values (see :func:`origin_allowed`); ``None``: any origin.
    allowed_origins: tuple[str, ...] | None = None
    #: negotiate permessage-deflate (RFC 7692) when the client offers it.
    compression: bool = True
    #: largest request head (request line + headers), and the most bytes a client may
    #: send before its handshake is answered; bigger: HTTP 431 / 400.
    max_handshake_size: int = 64 * 1024
    #: ``root_path`` put in ``websocket.connect`` (a mount point behind a proxy).
    root_path: str = ""

    def __post_init__(self) -> None:
        if self.max_message_size <= 0:
            raise ValueError("max_message_size must be positive")
        if self.max_handshake_size <= 0:
            raise ValueError("max_handshake_size must be positive")
        for name in ("ping_interval", "ping_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None")
        if self.allowed_origins is not None and isinstance(self.allowed_origins, str):
            raise ValueError("allowed_origins is a tuple of strings, not one string")


# ------------------------------------------------------------------------------ events


@dataclass(frozen=True, kw_only=True)
class ConnectRequest:
    """A valid upgrade request: send ``message`` to ``websocket.connect``, then wait for
    the application's reply (:meth:`WebSocketConnection.reply`) or time out
    (:meth:`WebSocketConnection.reject`)."""

    message: dict[str, Any]
    path: str
    subprotocols: tuple[str, ...] = ()
    origin: str | None = None


@dataclass(frozen=True, kw_only=True)
class MessageReceived:
    """A complete data message: send ``message`` to ``websocket.receive``."""

    message: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Disconnected:
    """The connection is over: send ``message`` to ``websocket.disconnect``.

    Produced exactly once, and only for a connection whose ``websocket.connect`` was
    handed out. ``code``: the code of the Close frame the peer sent; otherwise the one
    the server sent (1009, 1001...); 1006 when the connection ended with neither.
    """

    message: dict[str, Any]
    code: int


Event = ConnectRequest | MessageReceived | Disconnected


@dataclass(frozen=True)
class _Raise:
    """A queued error: raised by ``next_event`` after the events that came before it."""

    error: WebSocketProtocolError


# ---------------------------------------------------------------------- free functions


def accept_token(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def _normalize_origin(scheme: str, host: str, port: int | None) -> tuple[str, str, int | None]:
    default = {"http": 80, "ws": 80, "https": 443, "wss": 443}.get(scheme)
    return scheme, host, None if port == default else port


def origin_allowed(origin: str | None, allowed: Sequence[str] | None) -> bool:
    """Whether a handshake with this ``Origin`` header may proceed.

    ``allowed`` entries: ``"*"`` (any origin); a full origin ``"https://chat.example"``
    (scheme, host and port must match; default ports may be left out); a host
    ``"chat.example"`` or ``"chat.example:8000"`` (any scheme); a domain pattern
    ``"*.example.com"`` (that domain and its subdomains); ``"null"`` (sandboxed pages).
    ``allowed=None`` allows everything. A request without ``Origin`` is allowed: browsers
    always send one, so its absence is a non-browser client, which cross-site WebSocket
    hijacking (the attack this check stops) does not involve.
    """
    if allowed is None or origin is None:
        return True
    origin = origin.strip().lower()
    if origin == "null":
        return "null" in allowed or "*" in allowed
    try:
        parts = urlsplit(origin)
        scheme, host, port = parts.scheme, parts.hostname or "", parts.port
    except ValueError:
        return "*" in allowed
    if not scheme or not host:
        return "*" in allowed
    origin_key = _normalize_origin(scheme, host, port)
    for entry in allowed:
        entry = entry.strip().lower()
        if entry == "*":
            return True
        if "://" in entry:
            try:
                want = urlsplit(entry)
                if _normalize_origin(want.scheme, want.hostname or "", want.port) == origin_key:
                    return True
            except ValueError:
                continue
            continue
        entry_host, _, entry_port = entry.partition(":")
        if entry_port and (not entry_port.isdigit() or int(entry_port) != (port or -1)):
            continue
        if entry_host.startswith("*."):
            domain = entry_host[2:]
            if host == domain or host.endswith("." + domain):
                return True
        elif host == entry_host:
            return True
    return False


def _split_header(values: Sequence[bytes]) -> list[str]:
    items: list[str] = []
    for value in values:
        for item in value.decode("latin-1").split(","):
            item = item.strip()
            if item:
                items.append(item)
    return items


def _http_response(
    status: int, headers: Sequence[tuple[bytes, bytes]] = (), body: bytes = b""
) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Error"))]
    lines.extend(name + b": " + value for name, value in headers)
    if status != 101:
        lines.append(b"content-length: %d" % len(body))
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# ------------------------------------------------------------------- permessage-deflate


class PerMessageDeflate(Extension):
    """permessage-deflate (RFC 7692) for the server side of one connection.

    Differences from wsproto's own class: decompression is bounded (``max_length``) by
    what is left of ``max_message_size`` for the current message, so a small
    compressed frame cannot inflate into gigabytes (a "zip bomb" closes with 1009);
    a control frame between two fragments no longer resets the message's compressed
    flag; inflation always uses a 32 KiB window (valid for any window the client used);
    and ``server_max_window_bits=8``, which zlib cannot deflate with, is honoured by
    Huffman-only coding (no back-references at all, so any window is enough).
    """

    name = "permessage-deflate"

    def __init__(
        self,
        *,
        max_message_size: int,
        server_no_context_takeover: bool = False,
        client_no_context_takeover: bool = False,
        server_max_window_bits: int = 15,
    ) -> None:
        self.max_message_size = max_message_size
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.server_max_window_bits = server_max_window_bits
        self._compressor: Any = None
        self._decompressor: Any = None
        self._control = False
        self._in_message = False
        self._inbound_compressed = False
        self._inbound_size = 0

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool | str:
        return False  # server side only: negotiate_deflate() answers offers

    def accept(self, offer: str) -> bool | str | None:
        return None  # unused: negotiate_deflate() answers offers

    def frame_inbound_header(
        self, proto: Any, opcode: Opcode, rsv: RsvBits, payload_length: int
    ) -> CloseReason | RsvBits:
        if opcode.iscontrol():
            # RFC 7692 section 6.1: control frames are never compressed.
            if rsv.rsv1:
                return CloseReason.PROTOCOL_ERROR
            self._control = True
            return RsvBits(False, False, False)
        self._control = False
        if opcode is Opcode.CONTINUATION:
            # RFC 7692 section 6.1: only the first frame of a message carries RSV1.
            if rsv.rsv1:
                return CloseReason.PROTOCOL_ERROR
        else:
            if self._in_message:
                # RFC 6455 section 5.4: a new message before the last one's final
                # fragment. Answered here, as wsproto's message decoder would (1002),
                # before its payload reaches the inflater (which could answer 1007
                # first when the payload arrives whole). wsproto may call this hook
                # again for the same header (when the mask key is still missing), so
                # the flag changes only when a frame completes.
                return CloseReason.PROTOCOL_ERROR
            self._inbound_compressed = rsv.rsv1
            self._inbound_size = 0
            if rsv.rsv1 and self._decompressor is None:
                self._decompressor = zlib.decompressobj(-15)
        return RsvBits(True, False, False)

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        room = self.max_message_size - self._inbound_size
        try:
            out: bytes = self._decompressor.decompress(data, room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        if len(out) > room or self._decompressor.unconsumed_tail:
            return CloseReason.MESSAGE_TOO_BIG
        self._inbound_size += len(out)
        return out

    def frame_inbound_payload_data(self, proto: Any, data: bytes) -> bytes | CloseReason:
        if self._control or not self._inbound_compressed:
            return data
        return self._inflate(data)

    def frame_inbound_complete(self, proto: Any, fin: bool) -> bytes | CloseReason | None:
        if self._control:
            return None
        self._in_message = not fin
        if not fin or not self._inbound_compressed:
            return None
        # RFC 7692 section 7.2.2: append the 4 octets 0x00 0x00 0xff 0xff.
        out = self._inflate(b"\x00\x00\xff\xff")
        self._inbound_compressed = False
        if self.client_no_context_takeover:
            self._decompressor = None
        return out

    def frame_outbound(
        self, proto: Any, opcode: Opcode, rsv: RsvBits, data: bytes, fin: bool
    ) -> tuple[RsvBits, bytes]:
        if opcode.iscontrol():
            return rsv, data
        if opcode is not Opcode.CONTINUATION:
            rsv = RsvBits(True, rsv.rsv2, rsv.rsv3)
        if self._compressor is None:
            bits = self.server_max_window_bits
            strategy = zlib.Z_DEFAULT_STRATEGY
            if bits < 9:
                bits, strategy = 9, zlib.Z_HUFFMAN_ONLY
            self._compressor = zlib.compressobj(
                zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -bits, 8, strategy
            )
        out: bytes = self._compressor.compress(data)
        if fin:
            out += self._compressor.flush(zlib.Z_SYNC_FLUSH)
            if out.endswith(b"\x00\x00\xff\xff"):
                out = out[:-4]
            if self.server_no_context_takeover:
                self._compressor = None
        return rsv, out

    def __repr__(self) -> str:
        return (
            f"PerMessageDeflate(server_max_window_bits={self.server_max_window_bits}, "
            f"server_no_context_takeover={self.server_no_context_takeover}, "
            f"client_no_context_takeover={self.client_no_context_takeover})"
        )


def _window_bits(value: str | None, *, required: bool) -> int | None:
    if value is None:
        if required:
            raise ValueError("a value is required")
        return None
    if not value.isdigit() or len(value) > 2 or not 8 <= int(value) <= 15:
        raise ValueError(f"window bits {value!r} not in 8..15")
    return int(value)


def negotiate_deflate(
    offers: Sequence[str], *, max_message_size: int
) -> tuple[PerMessageDeflate | None, bytes | None]:
    """Pick the first acceptable permessage-deflate offer (RFC 7692 section 5).

    ``offers`` are the comma-separated items of ``Sec-WebSocket-Extensions``. Returns
    the extension and the response header value, or ``(None, None)`` when no offer is
    acceptable (an offer with an unknown, repeated or out-of-range parameter is
    declined, section 5.1); other extensions are ignored.
    """
    for offer in offers:
        name, *raw_params = (part.strip() for part in offer.split(";"))
        if name.lower() != "permessage-deflate":
            continue
        params: dict[str, str | None] = {}
        try:
            for raw in raw_params:
                key, eq, value = raw.partition("=")
                key = key.strip().lower()
                if key in params:
                    raise ValueError(f"repeated parameter {key}")
                params[key] = value.strip().strip('"') if eq else None
            unknown = set(params) - {
                "server_no_context_takeover",
                "client_no_context_takeover",
                "server_max_window_bits",
                "client_max_window_bits",
            }
            if unknown:
                raise ValueError(f"unknown parameters {sorted(unknown)}")
            for flag in ("server_no_context_takeover", "client_no_context_takeover"):
                if flag in params and params[flag] is not None:
                    raise ValueError(f"{flag} takes no value")
            server_bits = (
                _window_bits(params["server_max_window_bits"], required=True)
                if "server_max_window_bits" in params
                else None
            )
            client_bits = (
                _window_bits(params["client_max_window_bits"], required=False)
                if "client_max_window_bits" in params
                else None
            )
        except ValueError:
            continue
        response = ["permessage-deflate"]
        if "server_no_context_takeover" in params:
            response.append("server_no_context_takeover")
        if "client_no_context_takeover" in params:
            response.append("client_no_context_takeover")
        if server_bits is not None:
            response.append(f"server_max_window_bits={server_bits}")
        if client_bits is not None:
            response.append(f"client_max_window_bits={client_bits}")
        extension = PerMessageDeflate(
            max_message_size=max_message_size,
            server_no_context_takeover="server_no_context_takeover" in params,
            client_no_context_takeover="client_no_context_takeover" in params,
            server_max_window_bits=server_bits or 15,
        )
        return extension, "; ".join(response).encode("ascii")
    return None, None


# ----------------------------------------------------------------------- the connection


def _utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


@dataclass(kw_only=True, slots=True)
class _Keepalive:
    interval: float
    timeout: float
    next_ping: float | None = None
    ping_sent_at: float | None = None
    heard: bool = False


@dataclass(kw_only=True, slots=True)
class _Inbound:
    parts: list[Any] = field(default_factory=list)
    size: int = 0
    text: bool = False


def _wsproto_state_readable() -> bool:
    """True when wsproto keeps its parser state where the frame fast path looks for it
    (``WebSocketConnection._fast_ready`` reads wsproto internals, checked against wsproto
    1.2 and 1.3); a wsproto that moved them gets the plain wsproto path, never an error."""
    try:
        connection = Connection(ConnectionType.SERVER)
        proto = connection._proto
        decoder = proto._frame_decoder
        return (
            not connection._events
            and not decoder.buffer.buffer
            and decoder.header is None
            and proto._message_decoder.opcode is None
        )
    except AttributeError:
        return False


class WebSocketConnection:
    """The server side of one WebSocket connection, without I/O.

    ``reply_channel`` names the connection on the bus (the caller makes it with the
    layer's ``new_channel``); ``client``/``server`` are ``(host, port)`` or ``None``;
    ``scheme`` is ``"ws"`` or ``"wss"``.
    """

    # Thousands of idle connections each hold one: slots keep them small.
    __slots__ = (
        "_connect_sent",
        "_deflate",
        "_deflate_header",
        "_disconnect_sent",
        "_early",
        "_early_eof",
        "_events",
        "_events_read",
        "_h11",
        "_inbound",
        "_keepalive",
        "_key",
        "_order",
        "_out",
        "_peer_code",
        "_pending",
        "_request",
        "_sent_code",
        "_ws",
        "client",
        "config",
        "path",
        "rejected_status",
        "reply_channel",
        "scheme",
        "server",
        "state",
        "subprotocol",
        "subprotocols",
    )

    def __init__(
        self,
        config: WebSocketConfig,
        *,
        reply_channel: str,
        client: tuple[str, int] | None = None,
        server: tuple[str, int] | None = None,
        scheme: str = "ws",
    ) -> None:
        self.config = config
        self.reply_channel = reply_channel
        self.client = client
        self.server = server
        self.scheme = scheme
        self.state = State.HANDSHAKE
        #: request path (percent-decoded) once the request was parsed
        self.path = ""
        #: subprotocols the client offered, in its order
        self.subprotocols: tuple[str, ...] = ()
        #: the subprotocol chosen in ``accept``, if any
        self.subprotocol: str | None = None
        #: the HTTP status of a rejected handshake, if it was rejected
        self.rejected_status: int | None = None
        self._h11: h11.Connection | None = h11.Connection(
            h11.SERVER, max_incomplete_event_size=config.max_handshake_size
        )
        self._request: h11.Request | None = None
        self._key = b""
        self._deflate: PerMessageDeflate | None = None
        self._deflate_header: bytes | None = None
        self._early = bytearray()  # bytes received before the handshake was answered
        self._early_eof = False
        self._ws: Connection | None = None
        self._out = bytearray()
        # A list read from an index rather than a deque: a deque costs 760 bytes even
        # empty, and thousands of idle connections each hold one of these.
        self._events: list[Event | _Raise] = []
        self._events_read = 0
        self._order = 0
        self._connect_sent = False
        self._disconnect_sent = False
        self._peer_code: int | None = None
        self._sent_code: int | None = None
        self._inbound = _Inbound()
        #: bytes kept from wsproto for the fast path (see :meth:`_read_fast`)
        self._pending = b""
        self._keepalive = (
            _Keepalive(interval=config.ping_interval, timeout=config.ping_timeout)
            if config.ping_interval is not None and config.ping_timeout is not None
            else None
        )

    # -- input ---------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes read from the peer; ``b""`` means the peer closed its side."""
        data = bytes(data) if type(data) is not bytes else data
        if self.state is State.HANDSHAKE:
            if self._h11 is None:  # the request came parsed (receive_request)
                if data:
                    self._early += data
                else:
                    self._early_eof = True
            elif self._h11.their_state is not h11.ERROR:
                self._h11.receive_data(data)
        elif self.state is State.CONNECTING:
            if not data:
                self._early_eof = True
            else:
                self._early += data
        elif self.state in (State.OPEN, State.CLOSING):
            assert self._ws is not None
            if self._keepalive is not None and data:
                self._keepalive.heard = True
            if self._ws.state is ConnectionState.CLOSED:
                return
            if data and (self._pending or self._fast_ready()):
                self._pending += data  # parsed by _read_frames
                return
            if self._pending:  # wsproto must see them first
                pending, self._pending = self._pending, b""
                self._ws.receive_data(pending)
            self._ws.receive_data(data if data else None)
        # CLOSED: whatever arrives now is ignored.

    def receive_request(
        self, request: h11.Request, trailing_data: bytes = b"", *, eof: bool = False
    ) -> None:
        """Start from a request another adapter parsed (the HTTP listener's upgrade
        hook) instead of raw bytes. ``trailing_data`` is what was read after it and
        ``eof`` whether the peer already closed its side (h11's ``trailing_data`` pair)."""
        if self.state is not State.HANDSHAKE or self._request is not None:
            raise UsageError("receive_request() must be the first input of a connection")
        self._h11 = None
        self._request = request
        self._early += trailing_data
        self._early_eof = eof

    # -- output --------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer now (and forget)."""
        data = bytes(self._out)
        self._out.clear()
        return data

    def next_event(self) -> Event | NeedData:
        """The next event, or :data:`NEED_DATA`.

        Raises :class:`WebSocketProtocolError` when the peer broke the protocol; the
        answer is then already queued in :meth:`data_to_send` and ``state`` is
        ``CLOSING`` or ``CLOSED``.
        """
        if not self._events:
            if self.state is State.HANDSHAKE:
                self._read_handshake()
            elif self.state is State.CONNECTING:
                if self._early_eof:
                    self._finish(1006)
                elif len(self._early) > self.config.max_handshake_size:
                    self.reject(400, "data sent before the handshake was answered")
                    self._events.append(
                        _Raise(WebSocketProtocolError("data before the handshake", hint=400))
                    )
            elif self.state in (State.OPEN, State.CLOSING):
                self._read_frames()
        events = self._events
        if not events:
            return NEED_DATA
        event = events[self._events_read]
        self._events_read += 1
        if self._events_read == len(events):
            events.clear()
            self._events_read = 0
        if isinstance(event, _Raise):
            raise event.error
        return event

    @property
    def connect_sent(self) -> bool:
        """Whether ``websocket.connect`` was handed out (a disconnect is then owed)."""
        return self._connect_sent

    # -- the handshake -------------------------------------------------------------------

    def _read_handshake(self) -> None:
        if self._request is None:
            assert self._h11 is not None
            while True:
                try:
                    event = self._h11.next_event()
                except h11.RemoteProtocolError as exc:
                    self._fail_handshake(exc.error_status_hint, str(exc), cause=exc)
                    return
                if event is h11.NEED_DATA:
                    return
                if isinstance(event, h11.ConnectionClosed):
                    self.state = State.CLOSED
                    return
                if isinstance(event, h11.Request):
                    self._request = event
                elif isinstance(event, h11.Data):
                    self._fail_handshake(400, "a WebSocket handshake request has no body")
                    return
                elif isinstance(event, h11.EndOfMessage):
                    # The request is complete (an upgrade request pauses h11 right
                    # after it); what follows it are early frames, kept for later.
                    data, closed = self._h11.trailing_data
                    self._early += data
                    self._early_eof = closed
                    break
        assert self._request is not None
        request, self._request, self._h11 = self._request, None, None
        self._process_request(request)

    def _fail_handshake(
        self,
        status: int,
        reason: str,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        cause: BaseException | None = None,
    ) -> None:
        self._reject(status, reason, headers)
        error = WebSocketProtocolError(f"bad WebSocket handshake: {reason}", hint=status)
        error.__cause__ = cause
        self._events.append(_Raise(error))

    def _process_request(self, request: h11.Request) -> None:
        # RFC 6455 section 4.2.1: what a server must check in the opening handshake.
        if request.http_version != b"1.1":
            return self._fail_handshake(400, "a WebSocket handshake needs HTTP/1.1")
        if request.method != b"GET":
            return self._fail_handshake(
                405, "a WebSocket handshake uses GET", headers=[(b"allow", b"GET")]
            )
        upgrade: list[bytes] = []
        connection: list[bytes] = []
        keys: list[bytes] = []
        versions: list[bytes] = []
        protocols: list[bytes] = []
        extensions: list[bytes] = []
        origins: list[bytes] = []
        wanted = {
            b"upgrade": upgrade,
            b"connection": connection,
            b"sec-websocket-key": keys,
            b"sec-websocket-version": versions,
            b"sec-websocket-protocol": protocols,
            b"sec-websocket-extensions": extensions,
            b"origin": origins,
        }
        size = len(request.target) + sum(len(n) + len(v) + 4 for n, v in request.headers)
        if size > self.config.max_handshake_size:
            return self._fail_handshake(431, "request headers too large")
        headers: list[list[bytes]] = []
        for name, value in request.headers:
            headers.append([bytes(name), bytes(value)])
            bucket = wanted.get(name)
            if bucket is not None:
                bucket.append(value)
        if "websocket" not in (token.lower() for token in _split_header(upgrade)):
            return self._fail_handshake(
                426,
                "this endpoint only speaks WebSocket (Upgrade: websocket)",
                headers=[(b"upgrade", b"websocket"), (b"connection", b"Upgrade")],
            )
        if "upgrade" not in (token.lower() for token in _split_header(connection)):
            return self._fail_handshake(400, "missing 'Connection: Upgrade'")
        if versions != [b"13"]:
            return self._fail_handshake(
                426,
                "unsupported Sec-WebSocket-Version (13 is)",
                headers=[(b"sec-websocket-version", b"13")],
            )
        if len(keys) != 1:
            return self._fail_handshake(400, "exactly one Sec-WebSocket-Key is required")
        try:
            if len(base64.b64decode(keys[0], validate=True)) != 16:
                raise ValueError("not 16 bytes")
        except (ValueError, binascii.Error) as exc:
            return self._fail_handshake(400, f"bad Sec-WebSocket-Key: {exc}", cause=exc)
        if len(origins) > 1:
            return self._fail_handshake(400, "more than one Origin header")
        origin = origins[0].decode("latin-1") if origins else None
        if not origin_allowed(origin, self.config.allowed_origins):
            return self._fail_handshake(403, f"origin {origin!r} is not allowed")
        target = bytes(request.target)
        if not target.startswith(b"/"):
            try:
                split = urlsplit(target.decode("ascii"))
            except (UnicodeDecodeError, ValueError) as exc:
                return self._fail_handshake(400, "bad request target", cause=exc)
            if not split.scheme:
                return self._fail_handshake(400, "bad request target")
            target = (split.path or "/").encode() + (
                b"?" + split.query.encode() if split.query else b""
            )
        raw_path, _, query_string = target.partition(b"?")
        try:
            path = unquote_to_bytes(raw_path).decode("utf-8")
        except UnicodeDecodeError as exc:
            return self._fail_handshake(400, "the path is not UTF-8", cause=exc)
        subprotocols = tuple(_split_header(protocols))
        for subprotocol in subprotocols:
            if not set(subprotocol) <= _TOKEN_CHARS:
                return self._fail_handshake(400, f"bad subprotocol name {subprotocol!r}")
        if self.config.compression:
            self._deflate, self._deflate_header = negotiate_deflate(
                _split_header(extensions), max_message_size=self.config.max_message_size
            )
        self._key = keys[0]
        self.path = path
        self.subprotocols = subprotocols
        self.state = State.CONNECTING
        self._connect_sent = True
        message: dict[str, Any] = {
            "reply_channel": self.reply_channel,
            "http_version": "1.1",
            "method": "GET",
            "scheme": self.scheme,
            "path": path,
            "query_string": query_string,
            "root_path": self.config.root_path,
            "headers": headers,
            "client": list(self.client) if self.client is not None else None,
            "server": list(self.server) if self.server is not None else None,
            "order": 0,
            "subprotocols": list(subprotocols),
        }
        self._events.append(
            ConnectRequest(message=message, path=path, subprotocols=subprotocols, origin=origin)
        )
        return None

    def _reject(
        self, status: int, reason: str, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        body = reason.encode("utf-8", "replace") + b"\n"
        self._out += _http_response(
            status, [(b"content-type", b"text/plain; charset=utf-8"), *headers], body
        )
        self.rejected_status = status
        self._finish(1006)

    def reject(self, status: int = 403, reason: str = "") -> None:
        """Refuse a pending handshake with an HTTP error (403 rejected by the
        application, 503 ``websocket.connect`` full or too many connections, 504 the
        application did not answer in time). Does nothing unless ``CONNECTING``."""
        if self.state is not State.CONNECTING:
            return
        default = _REASONS.get(status, b"rejected").decode()
        self._reject(status, reason or default)

    def _accept(self, subprotocol: str | None) -> None:
        if subprotocol is not None and subprotocol not in self.subprotocols:
            raise InvalidReply(
                f"subprotocol {subprotocol!r} was not offered (offered: {list(self.subprotocols)})"
            )
        headers = [
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", accept_token(self._key)),
        ]
        if subprotocol is not None:
            headers.append((b"sec-websocket-protocol", subprotocol.encode("ascii")))
        if self._deflate_header is not None:
            headers.append((b"sec-websocket-extensions", self._deflate_header))
        self._out += _http_response(101, headers)
        self.subprotocol = subprotocol
        self._ws = Connection(
            ConnectionType.SERVER, [self._deflate] if self._deflate is not None else None
        )
        self.state = State.OPEN
        early, self._early = bytes(self._early), bytearray()
        if early:
            self.receive_data(early)
        if self._early_eof:
            self.receive_data(b"")

    # -- frames --------------------------------------------------------------------------

    # The fast path: most frames a client sends are small, complete, masked, unfragmented
    # text or binary frames, and wsproto's generic parser costs more than the rest of
    # their handling. When wsproto holds nothing (no buffered bytes, no frame or
    # fragmented message under way, no queued event) and no extension was negotiated,
    # such frames are parsed here; anything else (control frames, fragments, RSV bits,
    # 64-bit lengths, a frame not complete yet, invalid UTF-8, a message over
    # ``max_message_size``) and everything after it goes to wsproto, which then answers
    # exactly as without the fast path (tests/websocket/test_fast_path.py compares both).
    _FAST_PATH = _wsproto_state_readable()

    def _fast_ready(self) -> bool:
        ws = self._ws
        if not self._FAST_PATH or self._deflate is not None or self.state is not State.OPEN:
            return False
        assert ws is not None
        proto = ws._proto
        decoder = proto._frame_decoder
        return (
            ws.state is ConnectionState.OPEN
            and not ws._events
            and not decoder.buffer.buffer
            and decoder.header is None
            and proto._message_decoder.opcode is None
            and not self._inbound.parts
        )

    def _read_fast(self) -> None:
        data, self._pending = self._pending, b""
        pos, end = 0, len(data)
        limit = self.config.max_message_size
        events = self._events
        while end - pos >= 6 and self.state is State.OPEN:
            first = data[pos]
            if first != 0x81 and first != 0x82:  # FIN, no RSV bit, text or binary
                break
            length = data[pos + 1]
            if length < 0x80:  # not masked
                break
            length &= 0x7F
            if length < 126:
                head = pos + 6
            elif length == 126 and end - pos >= 8:
                length = (data[pos + 2] << 8) | data[pos + 3]
                if length < 126:  # not the shortest form: wsproto fails it
                    break
                head = pos + 8
            else:
                break
            if length > limit or end - head < length:
                break
            payload = data[head : head + length]
            if length:
                mask = data[head - 4 : head] * ((length + 3) // 4)
                payload = (
                    int.from_bytes(payload, "little") ^ int.from_bytes(mask[:length], "little")
                ).to_bytes(length, "little")
            text: str | None = None
            if first == 0x81:
                try:
                    text = payload.decode("utf-8")
                except UnicodeDecodeError:
                    break  # wsproto answers 1007
            self._order += 1
            message = self._receive_message(text, None if text is not None else payload)
            events.append(MessageReceived(message=message))
            pos = head + length
        if pos < end:
            assert self._ws is not None
            self._ws.receive_data(data[pos:] if pos else data)

    def _read_frames(self) -> None:
        assert self._ws is not None
        if self._pending:
            self._read_fast()
        for event in self._ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                self._on_data(event)
            elif isinstance(event, Ping):
                if self._ws.state is ConnectionState.OPEN:
                    self._out += self._ws.send(event.response())
            elif isinstance(event, CloseConnection):
                self._on_close(event)
            # Pong: liveness was already noted in receive_data.

    def _on_data(self, event: TextMessage | BytesMessage) -> None:
        if self.state is not State.OPEN:
            return  # RFC 6455 section 7.1.2: after our Close, data may be discarded.
        inbound = self._inbound
        if not inbound.parts:
            inbound.text = isinstance(event, TextMessage)
        data = event.data
        inbound.size += _utf8_length(data) if isinstance(data, str) else len(data)
        if inbound.size > self.config.max_message_size:
            self._inbound = _Inbound()
            return self._fail(1009, f"message bigger than {self.config.max_message_size} bytes")
        inbound.parts.append(data)
        if event.message_finished:
            parts = inbound.parts
            self._inbound = _Inbound()
            if inbound.text:
                text = parts[0] if len(parts) == 1 else "".join(parts)
                self._order += 1
                self._events.append(MessageReceived(message=self._receive_message(text, None)))
            else:
                payload = bytes(parts[0]) if len(parts) == 1 else b"".join(parts)
                self._order += 1
                self._events.append(MessageReceived(message=self._receive_message(None, payload)))
        return None

    def _receive_message(self, text: str | None, payload: bytes | None) -> dict[str, Any]:
        return {
            "reply_channel": self.reply_channel,
            "path": self.path,
            "order": self._order,
            "text": text,
            "bytes": payload,
        }

    def _on_close(self, event: CloseConnection) -> None:
        assert self._ws is not None
        ws_state = self._ws.state
        if ws_state is ConnectionState.OPEN:
            # wsproto reports a frame it could not parse as a CloseConnection while it
            # stays OPEN: the failure is ours to answer (1002, 1007, 1009).
            code = int(event.code)
            self._fail(code, event.reason or "protocol error")
        elif ws_state is ConnectionState.LOCAL_CLOSING:
            # Garbage while we wait for the peer's Close: stop waiting.
            self._finish(self._sent_code or 1006)
        elif ws_state is ConnectionState.REMOTE_CLOSING:
            # The peer closes first: echo its code (RFC 6455 section 5.5.1), then we
            # close the TCP connection (section 7.1.1, the server closes first).
            self._peer_code = int(event.code)
            self._out += self._ws.send(CloseConnection(code=event.code))
            self._finish(self._peer_code)
        else:  # CLOSED: the answer to our Close, or the transport ended (1006).
            if event.code != CloseReason.ABNORMAL_CLOSURE:
                self._peer_code = int(event.code)
            self._finish(self._peer_code or self._sent_code or 1006)

    def _fail(self, code: int, reason: str) -> None:
        # RFC 6455 section 7.1.7, "Fail the WebSocket Connection": send a Close frame,
        # then close the connection without waiting for the peer's (wsproto cannot
        # parse anything after a bad frame anyway). The glue drains the socket a moment
        # before closing it so that the Close frame is not lost to a TCP reset.
        self._send_close(code, reason)
        self._events.append(_Raise(WebSocketProtocolError(reason, hint=code)))
        self._finish(code)

    def _send_close(self, code: int, reason: str = "") -> None:
        assert self._ws is not None
        if self._ws.state is ConnectionState.OPEN:
            self._out += self._ws.send(CloseConnection(code=code, reason=reason or None))
            self._sent_code = code
            self.state = State.CLOSING

    def _finish(self, code: int) -> None:
        self.state = State.CLOSED
        if self._connect_sent and not self._disconnect_sent:
            self._disconnect_sent = True
            self._order += 1
            message = {
                "reply_channel": self.reply_channel,
                "path": self.path,
                "code": code,
                "order": self._order,
            }
            self._events.append(Disconnected(message=message, code=code))

    # -- the application's side ----------------------------------------------------------

    def reply(self, message: Mapping[str, Any]) -> None:
        """Apply a message the application sent on ``reply_channel``.

        During the handshake: ``accept: True`` (optionally ``subprotocol``) accepts;
        ``accept: False`` or a ``close`` without data rejects with HTTP 403; data
        (``text``/``bytes``) implies accept. Once open: ``text``/``bytes`` become a
        frame, ``close`` (``True`` = 1000, or a code) starts the closing handshake.
        While closing or closed the message is dropped. Raises :class:`InvalidReply`
        (nothing changed) for a malformed message.
        """
        if not isinstance(message, Mapping):
            raise InvalidReply(f"a reply is a dict, not {type(message).__name__}")
        text = message.get("text")
        payload = message.get("bytes")
        close = message.get("close", False)
        accept = message.get("accept")
        subprotocol = message.get("subprotocol")
        if text is not None and payload is not None:
            raise InvalidReply("a reply carries 'text' or 'bytes', not both")
        if text is not None and not isinstance(text, str):
            raise InvalidReply(f"'text' must be a str, not {type(text).__name__}")
        if payload is not None and not isinstance(payload, bytes | bytearray):
            raise InvalidReply(f"'bytes' must be bytes, not {type(payload).__name__}")
        if close is True or close is False or close is None:
            close_code = 1000 if close else None
        elif isinstance(close, int) and (close in _APP_CLOSE_CODES or 3000 <= close <= 4999):
            close_code = close
        else:
            raise InvalidReply(f"'close' must be true or a close code, not {close!r}")
        if accept is not None and not isinstance(accept, bool):
            raise InvalidReply(f"'accept' must be a bool, not {accept!r}")
        if subprotocol is not None and not isinstance(subprotocol, str):
            raise InvalidReply(f"'subprotocol' must be a str, not {subprotocol!r}")
        has_data = text is not None or payload is not None
        if self.state is State.CONNECTING:
            if accept is True or has_data:
                self._accept(subprotocol)
            elif accept is False or close_code is not None:
                self.reject(403, "rejected by the application")
                return
            else:
                raise InvalidReply("during the handshake a reply accepts, rejects or sends")
        if self.state is not State.OPEN:
            return
        assert self._ws is not None
        if (
            self._FAST_PATH
            and self._deflate is None
            and self._ws.state is ConnectionState.OPEN
            and has_data
        ):
            # No extension: the frame is the header and the payload (as wsproto frames it).
            data = text.encode("utf-8") if text is not None else payload
            assert data is not None
            first = 0x81 if text is not None else 0x82  # FIN + text or binary
            length = len(data)
            out = self._out
            if length < 126:
                out += bytes((first, length))
            elif length < 65536:
                out += bytes((first, 126, length >> 8, length & 255))
            else:
                out += bytes((first, 127)) + length.to_bytes(8, "big")
            out += data
        elif text is not None:
            self._out += self._ws.send(TextMessage(data=text))
        elif payload is not None:
            self._out += self._ws.send(BytesMessage(data=bytes(payload)))
        if close_code is not None:
            self._send_close(close_code)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Server-initiated close: shutdown (1001), restart (1012), slow client (1008,
        1013), not answering the handshake... A pending handshake is refused with 503
        instead; a closing or closed connection is left alone."""
        if self.state is State.HANDSHAKE:
            self.state = State.CLOSED
        elif self.state is State.CONNECTING:
            self.reject(503, reason or "the server is going away")
        elif self.state is State.OPEN:
            try:
                self._send_close(code, reason)
            except LocalProtocolError:  # pragma: no cover - guarded by the state check
                self._finish(code)

    def connection_lost(self) -> None:
        """The transport is gone (or the glue gave up waiting for the peer's Close):
        the next :meth:`next_event` returns the owed :class:`Disconnected`, if any."""
        if self.state is not State.CLOSED:
            self._finish(self._peer_code or self._sent_code or 1006)

    # -- keep-alive ----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Keep-alive bookkeeping on the caller's clock (seconds, any origin).

        Call it at :meth:`next_deadline` (and whenever convenient). A peer silent for
        ``ping_interval`` gets a Ping; silent ``ping_timeout`` more, it is dropped:
        a best-effort Close 1011 is queued, ``state`` becomes ``CLOSED`` and the
        ``websocket.disconnect`` carries 1006 (no Close frame came back).
        """
        keepalive = self._keepalive
        if keepalive is None or self.state is not State.OPEN:
            return
        assert self._ws is not None
        if keepalive.heard or keepalive.next_ping is None:
            keepalive.heard = False
            keepalive.ping_sent_at = None
            keepalive.next_ping = now + keepalive.interval
        elif keepalive.ping_sent_at is not None:
            if now >= keepalive.ping_sent_at + keepalive.timeout:
                self._out += self._ws.send(
                    CloseConnection(code=1011, reason="keep-alive ping timeout")
                )
                self._sent_code = 1011
                self._finish(1006)
        elif now >= keepalive.next_ping:
            self._out += self._ws.send(Ping(payload=b"csp-bus keep-alive"))
            keepalive.ping_sent_at = now

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must run next; ``None``: no keep-alive pending."""
        keepalive = self._keepalive
        if keepalive is None or self.state is not State.OPEN or keepalive.next_ping is None:
            return None
        if keepalive.heard:
            return keepalive.next_ping  # tick() then reschedules from "now"
        if keepalive.ping_sent_at is not None:
            return keepalive.ping_sent_at + keepalive.timeout
        return keepalive.next_ping
