"""The sans-IO core of the IRC adapter: lines, tags, CTCP, and a client state machine.

Nothing here does I/O or imports trio (a test parses this module's imports to prove it).
The glue (``client.py``) feeds bytes in with :meth:`IrcClient.receive_data`, takes events
out with :meth:`IrcClient.next_event`, and writes the lines :meth:`IrcClient.next_line`
releases, at the pace the flood-control bucket allows. Time is always passed in by the
caller (``now``, seconds on any monotonic clock), so every rule here is testable without
a clock.

Grammar (RFC 1459 section 2.3.1, RFC 2812 section 2.3.1, IRCv3 message-tags)::

    line    = [ "@" tags SPACE ] [ ":" source SPACE ] command *( SPACE param )
              [ SPACE ":" trailing ]
    tags    = tag *( ";" tag ) ; tag = key [ "=" escaped-value ]
    command = 1*letter / 3digit

Decisions worth knowing (each documented in ``docs/irc.md``):

* A line is decoded as UTF-8 when it is valid UTF-8 and as latin-1 otherwise, per line:
  IRC has no charset negotiation and old clients still send latin-1. Decoding never fails.
* Incoming lines may be longer than 512 bytes (servers relay long lines; tags may add
  8191 bytes): up to :data:`MAX_INCOMING_LINE` is accepted, longer lines are discarded up
  to their end and reported as :class:`IrcProtocolError`.
* Outgoing lines are at most 512 bytes with CRLF, and long text is split so that the line
  *as relayed by the server* (``:nick!user@host PRIVMSG #chan :...``) still fits.
* No outgoing line ever carries CR, LF or NUL taken from message content: text bodies are
  split at line breaks into several messages, every other field (and ``raw`` lines) with
  such a character is refused with :class:`UnsafeLine`.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from csp_bus.errors import BusError, RemoteProtocolError, UsageError

__all__ = [
    "MAX_INCOMING_LINE",
    "MAX_LINE",
    "NEED_DATA",
    "ClientSettings",
    "CommandFailed",
    "Event",
    "FloodControl",
    "InvalidControl",
    "IrcClient",
    "IrcProtocolError",
    "Joined",
    "Kicked",
    "LagMeasured",
    "Line",
    "LineReader",
    "NickChanged",
    "OutboxFull",
    "Received",
    "Registered",
    "RegistrationFailed",
    "ServerError",
    "UnsafeLine",
    "UserMask",
    "check_safe",
    "decode_line",
    "escape_tag_value",
    "irc_lower",
    "parse_line",
    "split_text",
    "unescape_tag_value",
]

#: RFC 1459 section 2.3: 512 bytes per line, CR LF included.
MAX_LINE: Final = 512
#: The largest incoming line accepted: IRCv3 allows 8191 bytes of tags before the 512.
MAX_INCOMING_LINE: Final = 8191 + MAX_LINE

# ----------------------------------------------------------------------------- errors


class IrcProtocolError(RemoteProtocolError):
    """The IRC server sent a line that is not IRC (no command, a bad command, too long).

    Only that line is lost: the reader has already moved past it, so the glue logs the
    error and keeps reading. ``hint`` is ``None`` (IRC has no reply code for it).
    """


class InvalidControl(UsageError, ValueError):
    """A control message on an IRC ``reply_channel`` is malformed; the text says how."""


class UnsafeLine(InvalidControl):
    """A field would put CR, LF or NUL (or a bad separator) into an IRC line.

    ``field`` names the field, ``char`` the offending character and ``position`` its
    index in that field, so the caller sees exactly what was refused.
    """

    def __init__(self, field: str, char: str, position: int, why: str = "") -> None:
        self.field = field
        self.char = char
        self.position = position
        reason = why or "would end or corrupt the IRC line (command injection)"
        super().__init__(f"{field}: character {char!r} at position {position} {reason}")


class OutboxFull(BusError):
    """The connection's queue of outgoing lines is full (flood control is holding
    lines back and the bot sends faster than the bucket refills); the line was dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"IRC outgoing queue is full ({limit} lines waiting); line dropped")


# ------------------------------------------------------------------------------ lines

_FORBIDDEN: Final = {"\r": "CR", "\n": "LF", "\x00": "NUL"}
_COMMAND_RE: Final = re.compile(r"[A-Za-z]+|[0-9]{3}")
_TAG_KEY_RE: Final = re.compile(r"\+?(?:[A-Za-z0-9.-]+/)?[A-Za-z0-9-]+")

# IRCv3 message-tags escaping: ";" " " "\" CR LF travel as \: \s \\ \r \n.
_TAG_ESCAPES: Final = {";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"}
_TAG_UNESCAPES: Final = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}


def check_safe(field: str, value: str, *, space: bool = True, comma: bool = True) -> str:
    """Return ``value`` if it holds no CR, LF or NUL (nor, when refused, space or comma).

    Raises :class:`UnsafeLine` naming the field, the character and its position.
    """
    for position, char in enumerate(value):
        if char in _FORBIDDEN:
            raise UnsafeLine(field, char, position)
        if not space and char == " ":
            raise UnsafeLine(field, char, position, "is not allowed (it separates parameters)")
        if not comma and char == ",":
            raise UnsafeLine(field, char, position, "is not allowed (it separates targets)")
    return value


def escape_tag_value(value: str) -> str:
    """IRCv3 tag-value escaping."""
    return "".join(_TAG_ESCAPES.get(char, char) for char in value)


def unescape_tag_value(value: str) -> str:
    """Undo :func:`escape_tag_value`; an unknown escape ``\\x`` is ``x`` and a lone
    trailing backslash is dropped (IRCv3 message-tags, "Escaping values")."""
    if "\\" not in value:
        return value
    out: list[str] = []
    chars = iter(value)
    for char in chars:
        if char != "\\":
            out.append(char)
            continue
        following = next(chars, None)
        if following is None:
            break
        out.append(_TAG_UNESCAPES.get(following, following))
    return "".join(out)


def decode_line(raw: bytes) -> str:
    """UTF-8 when valid, latin-1 otherwise: decoding never fails."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


@dataclass(frozen=True, slots=True)
class UserMask:
    """A message source ``nick!user@host``; ``user``/``host`` are ``None`` when absent
    (a server name as source has only ``nick`` set to the server name)."""

    nick: str
    user: str | None = None
    host: str | None = None

    @classmethod
    def parse(cls, source: str) -> UserMask:
        nick, bang, rest = source.partition("!")
        if bang:
            user, at, host = rest.partition("@")
            return cls(nick, user, host if at else None)
        nick, at, host = source.partition("@")
        return cls(nick, None, host if at else None)

    def to_message(self) -> dict[str, str | None]:
        return {"nick": self.nick, "user": self.user, "host": self.host}

    def __str__(self) -> str:
        text = self.nick
        if self.user is not None:
            text += "!" + self.user
        if self.host is not None:
            text += "@" + self.host
        return text


@dataclass(frozen=True, kw_only=True, slots=True)
class Line:
    """One IRC line. ``command`` is upper case; ``params`` includes the trailing one.

    Construct freely; :meth:`to_bytes` validates (no CR/LF/NUL anywhere, only the last
    parameter may contain a space, be empty or start with ``:``) and raises
    :class:`UnsafeLine` or :class:`InvalidControl` otherwise.
    """

    command: str
    params: tuple[str, ...] = ()
    source: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def user(self) -> UserMask | None:
        return None if self.source is None else UserMask.parse(self.source)

    def to_str(self) -> str:
        parts: list[str] = []
        if self.tags:
            items = []
            for key, value in self.tags.items():
                if not _TAG_KEY_RE.fullmatch(key):
                    raise InvalidControl(f"tag key {key!r} is not a valid IRCv3 tag key")
                check_safe(f"tags[{key!r}]", value.replace("\r", "").replace("\n", ""))
                items.append(f"{key}={escape_tag_value(value)}" if value else key)
            parts.append("@" + ";".join(items))
        if self.source is not None:
            if not self.source:
                raise InvalidControl("source must not be empty")
            check_safe("source", self.source, space=False)
            parts.append(":" + self.source)
        if not _COMMAND_RE.fullmatch(self.command):
            raise InvalidControl(f"command {self.command!r} is not letters or three digits")
        parts.append(self.command)
        for index, param in enumerate(self.params):
            name = f"params[{index}]"
            check_safe(name, param)
            if index == len(self.params) - 1:
                if not param or " " in param or param.startswith(":"):
                    param = ":" + param
            elif not param or param.startswith(":"):
                raise InvalidControl(
                    f"{name} {param!r}: only the last parameter may be empty or start with ':'"
                )
            elif " " in param:
                raise UnsafeLine(
                    name, " ", param.index(" "), "is only allowed in the last parameter"
                )
            parts.append(param)
        return " ".join(parts)

    def to_bytes(self) -> bytes:
        """The line, CRLF-terminated; the part after the tags must fit in 512 bytes."""
        # "replace": a lone surrogate (not encodable) becomes "?" instead of an error.
        data = self.to_str().encode("utf-8", "replace")
        body = data.split(b" ", 1)[1] if data.startswith(b"@") else data
        if len(body) > MAX_LINE - 2:
            raise InvalidControl(
                f"line is {len(body) + 2} bytes with CRLF; IRC allows {MAX_LINE} "
                "(RFC 1459 section 2.3)"
            )
        return data + b"\r\n"


def parse_line(text: str | bytes) -> Line:
    """Parse one line (without its CR LF). Raises :class:`IrcProtocolError`."""
    if isinstance(text, bytes):
        text = decode_line(text)
    for char in ("\r", "\n", "\x00"):
        if char in text:
            raise IrcProtocolError(f"line contains {_FORBIDDEN[char]}: {text[:80]!r}")
    rest = text
    tags: dict[str, str] = {}
    if rest.startswith("@"):
        raw_tags, _, rest = rest[1:].partition(" ")
        for item in raw_tags.split(";"):
            if not item:
                continue
            key, _, value = item.partition("=")
            if not key:
                raise IrcProtocolError(f"tag with an empty key in {text[:80]!r}")
            tags[key] = unescape_tag_value(value)
        rest = rest.lstrip(" ")
    source = None
    if rest.startswith(":"):
        source, _, rest = rest[1:].partition(" ")
        if not source:
            raise IrcProtocolError(f"empty source in {text[:80]!r}")
        rest = rest.lstrip(" ")
    trailing: str | None = None
    if " :" in rest:
        rest, trailing = rest.split(" :", 1)
    words = [word for word in rest.split(" ") if word]  # only SPACE separates (RFC 2812)
    if not words:
        raise IrcProtocolError(f"line has no command: {text[:80]!r}")
    command = words[0]
    if not _COMMAND_RE.fullmatch(command):
        raise IrcProtocolError(f"bad command {command[:20]!r} in {text[:80]!r}")
    params = words[1:]
    if trailing is not None:
        params.append(trailing)
    return Line(command=command.upper(), params=tuple(params), source=source, tags=tags)


NEED_DATA: Final = None


class LineReader:
    """Splits incoming bytes into lines. ``b""`` marks the end of input.

    Lines end at LF or CR (RFC 1459 asks for CR LF; lone terminators are accepted);
    empty lines are ignored (RFC 2812 section 2.3.1). A line over
    :data:`MAX_INCOMING_LINE` bytes is discarded up to its end and reported once.
    """

    def __init__(self, max_line: int = MAX_INCOMING_LINE) -> None:
        self._buffer = bytearray()
        self._max_line = max_line
        self._discarding = False
        self._lines: deque[bytes | IrcProtocolError] = deque()
        self.closed = False

    def receive_data(self, data: bytes | bytearray) -> None:
        if not data:
            self.closed = True
            if self._buffer and not self._discarding:
                self._lines.append(bytes(self._buffer))
            self._buffer.clear()
            return
        start = 0
        for match in re.finditer(rb"[\r\n]", data):
            self._take(data[start : match.start()], end=True)
            start = match.end()
        self._take(data[start:], end=False)

    def _take(self, chunk: bytes | bytearray, *, end: bool) -> None:
        if not self._discarding:
            self._buffer += chunk
            if len(self._buffer) > self._max_line:
                self._discarding = True
                self._buffer.clear()
                self._lines.append(
                    IrcProtocolError(f"line longer than {self._max_line} bytes, discarded")
                )
        if end:
            if self._buffer and not self._discarding:
                self._lines.append(bytes(self._buffer))
            self._buffer.clear()
            self._discarding = False

    def next_line(self) -> Line | None:
        """The next parsed line, or ``NEED_DATA`` (``None``).

        Raises :class:`IrcProtocolError` for a bad line; that line is consumed, so
        calling again continues with the next one.
        """
        while self._lines:
            item = self._lines.popleft()
            if isinstance(item, IrcProtocolError):
                raise item
            return parse_line(item)
        return NEED_DATA


# -------------------------------------------------------------------------- casemapping

_RFC1459_TABLE: Final = str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ[]\\~", "abcdefghijklmnopqrstuvwxyz{}|^"
)
_ASCII_TABLE: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def irc_lower(name: str, casemapping: str = "rfc1459") -> str:
    """Lower-case a nick or channel name the way the server compares them
    (RFC 2812 section 2.2: ``{}|^`` are the lower case of ``[]\\~``)."""
    if casemapping == "ascii":
        return name.translate(_ASCII_TABLE)
    return name.translate(_RFC1459_TABLE)


# ------------------------------------------------------------------------ text splitting


def split_text(text: str, limit: int) -> list[str]:
    """Split ``text`` into pieces whose UTF-8 encoding fits in ``limit`` bytes.

    Pieces end on character boundaries (never inside a UTF-8 sequence). When a space
    falls in the second half of a piece, the piece ends before it and that one space is
    dropped: IRC servers strip trailing spaces anyway, and readers see word-wrapped
    lines. Otherwise the cut is hard and nothing is lost. ``limit`` must allow the
    longest character (4 bytes).
    """
    if limit < 4:
        raise ValueError("limit must be at least 4 bytes")
    pieces: list[str] = []
    start = 0
    while start < len(text):
        size = 0
        end = start
        last_space = -1
        while end < len(text):
            char_size = len(text[end].encode("utf-8", "surrogatepass"))
            if size + char_size > limit:
                break
            size += char_size
            if text[end] == " ":
                last_space = end
            end += 1
        if end < len(text) and last_space > start + (end - start) // 2:
            pieces.append(text[start:last_space])
            start = last_space + 1
        else:
            pieces.append(text[start:end])
            start = end
    return pieces


def _body_lines(field: str, body: str) -> list[str]:
    """Split a text body at line breaks; NUL is refused; empty lines are dropped
    (IRC cannot carry an empty message: ERR_NOTEXTTOSEND)."""
    if "\x00" in body:
        raise UnsafeLine(field, "\x00", body.index("\x00"))
    return [line for line in re.split(r"\r\n|\r|\n", body) if line]


# ------------------------------------------------------------------------ flood control


class FloodControl:
    """A token bucket: ``burst`` lines at once, then ``rate`` lines per second.

    Pure: the caller passes its clock. The defaults (5 lines, then one every 2 s) stay
    under the flood limits of common servers (ngircd, InspIRCd, Solanum/charybdis).
    """

    def __init__(self, *, burst: int = 5, rate: float = 0.5) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1")
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.burst = burst
        self.rate = rate
        self._tokens = float(burst)
        self._stamp: float | None = None

    def _refill(self, now: float) -> None:
        if self._stamp is not None and now > self._stamp:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        if self._stamp is None or now > self._stamp:
            self._stamp = now

    def delay(self, now: float) -> float:
        """Seconds to wait before the next line may go (0 when it may go now)."""
        self._refill(now)
        if self._tokens >= 1:
            return 0.0
        return (1 - self._tokens) / self.rate

    def take(self, now: float, *, force: bool = False) -> bool:
        """Spend a token. ``force`` lets the line go without one (protocol replies such
        as PONG and registration must not wait); it spends a token when there is one but
        runs up no debt, so a reconnect does not silence the bot afterwards."""
        self._refill(now)
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return force


# ------------------------------------------------------------------------------ events


@dataclass(frozen=True, kw_only=True, slots=True)
class Registered:
    """RPL_WELCOME: registration is complete under ``nick``."""

    nick: str
    server_name: str

    def to_message(self, reply_channel: str, server: tuple[str, int]) -> dict[str, Any]:
        return {"reply_channel": reply_channel, "server": list(server), "nickname": self.nick}


@dataclass(frozen=True, kw_only=True, slots=True)
class Joined:
    """The bot joined ``channel`` (the server echoed our JOIN)."""

    channel: str

    def to_message(self, reply_channel: str) -> dict[str, Any]:
        return {"reply_channel": reply_channel, "channel": self.channel}


ReceiveType = Literal[
    "message", "action", "notice", "join", "part", "quit", "nick", "kick", "topic"
]


@dataclass(frozen=True, kw_only=True, slots=True)
class Received:
    """IRC traffic for the application: becomes an ``irc-client.receive`` message.

    ``channel`` is the target (an IRC channel, or the bot's nick for a private message;
    ``None`` for quit and nick, which belong to no channel). ``target`` is the nick a
    kick removed; ``body`` the text, part/quit/kick reason, new nick or new topic.
    """

    type: ReceiveType
    user: UserMask | None
    channel: str | None
    body: str
    tags: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None

    def to_message(self, reply_channel: str) -> dict[str, Any]:
        message: dict[str, Any] = {
            "reply_channel": reply_channel,
            "type": self.type,
            "user": None if self.user is None else self.user.to_message(),
            "channel": self.channel,
            "body": self.body,
            "tags": dict(self.tags),
        }
        if self.target is not None:
            message["target"] = self.target
        return message


@dataclass(frozen=True, kw_only=True, slots=True)
class Kicked:
    """The bot was kicked from ``channel``; the glue rejoins after its delay."""

    channel: str
    by: str
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class NickChanged:
    """The bot's own nick changed (a fallback during registration, or a NICK later)."""

    old: str
    new: str


@dataclass(frozen=True, kw_only=True, slots=True)
class LagMeasured:
    """A lag-check PING was answered after ``seconds``."""

    seconds: float


@dataclass(frozen=True, kw_only=True, slots=True)
class CommandFailed:
    """An error numeric (4xx/5xx) after registration, e.g. 404 cannot send to channel,
    471-475 cannot join: the glue logs it."""

    code: str
    params: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.code} {' '.join(self.params)}"


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerError:
    """The server sent ERROR (it is about to close the connection)."""

    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class RegistrationFailed:
    """Registration cannot complete: no usable nick left, bad password (464), banned
    (465), or SASL failed while required. The glue closes and retries with backoff."""

    reason: str


Event = (
    Registered
    | Joined
    | Received
    | Kicked
    | NickChanged
    | LagMeasured
    | CommandFailed
    | ServerError
    | RegistrationFailed
)


# ------------------------------------------------------------------------ state machine


@dataclass(frozen=True, kw_only=True)
class ClientSettings:
    """What one IRC connection registers as and does. Validated on creation."""

    nick: str
    alt_nicks: tuple[str, ...] = ()
    username: str = "cspbus"
    realname: str = "csp-bus IRC adapter"
    password: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    #: refuse to go on unauthenticated when SASL was configured but failed
    sasl_required: bool = True
    #: channels to join on connect: "#a" or "#a key"
    channels: tuple[str, ...] = ()
    flood_burst: int = 5
    flood_rate: float = 0.5
    #: lines held back by flood control before :class:`OutboxFull`
    outbox_limit: int = 500
    version: str = "csp-bus IRC adapter"
    #: nick alternatives tried on 432/433/436/437 before giving up
    max_nick_attempts: int = 10

    def __post_init__(self) -> None:
        for name in ("nick", "username", "realname"):
            value = getattr(self, name)
            if not value:
                raise InvalidControl(f"{name} must not be empty")
        check_safe("nick", self.nick, space=False, comma=False)
        for nick in self.alt_nicks:
            check_safe("alt_nicks", nick, space=False, comma=False)
        check_safe("username", self.username, space=False)
        check_safe("realname", self.realname)
        for name in ("password", "sasl_username", "sasl_password"):
            value = getattr(self, name)
            if value is not None:
                check_safe(name, value)
        if (self.sasl_username is None) != (self.sasl_password is None):
            raise InvalidControl("SASL needs both sasl_username and sasl_password")
        for channel in self.channels:
            name, _, key = channel.partition(" ")
            check_safe("channels", name, space=False, comma=False)
            check_safe("channels", key, space=False, comma=False)
            if not name:
                raise InvalidControl(f"channels: empty channel name in {channel!r}")
        if self.flood_burst < 1 or self.flood_rate <= 0:
            raise InvalidControl("flood_burst must be >= 1 and flood_rate > 0")


_WANTED_CAPS: Final = ("message-tags", "server-time", "multi-prefix", "account-tag")
# Assumed when the server has not shown us our own user@host yet (USERLEN 10 with
# the "~" ident prefix, HOSTLEN 63 in RFC 2812 / most servers).
_ASSUMED_USER: Final = 10
_ASSUMED_HOST: Final = 63
_URGENT_LIMIT: Final = 1000  # protocol replies waiting to be written
_NICK_ERRORS: Final = frozenset({"431", "432", "433", "436", "437"})
_SASL_FAIL: Final = frozenset({"902", "904", "905", "906", "908"})

ControlType = Literal["join", "part", "message", "action", "notice", "nick", "topic", "raw"]
CONTROL_TYPES: Final = ("join", "part", "message", "action", "notice", "nick", "topic", "raw")


class IrcClient:
    """The client side of one IRC connection, as a state machine.

    States: ``"connecting"`` (before :meth:`start`), ``"registering"`` (CAP, SASL,
    NICK/USER sent, waiting for RPL_WELCOME), ``"registered"``, ``"closed"`` (ERROR
    received, QUIT sent, or registration failed).

    Invariants: every line handed out by :meth:`next_line` passed :meth:`Line.to_bytes`
    (so it carries no CR/LF/NUL from content and fits in 512 bytes); at most
    ``outbox_limit`` lines wait; protocol replies (PONG, registration, QUIT) go before
    application lines and are never refused.
    """

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.state: Literal["connecting", "registering", "registered", "closed"] = "connecting"
        self.nick = settings.nick
        self.user_mask: UserMask | None = None  # learned from our own JOIN echo
        self.server_name = ""
        self.casemapping = "rfc1459"
        self.nicklen = 30
        self.isupport: dict[str, str] = {}
        self.channels: dict[str, str] = {}  # lowered name -> name as joined
        self.caps_available: dict[str, str] = {}
        self.caps_enabled: set[str] = set()
        self.lag: float | None = None
        self.flood = FloodControl(burst=settings.flood_burst, rate=settings.flood_rate)
        self._urgent: deque[bytes] = deque()
        self._outbox: deque[bytes] = deque()
        self._events: deque[Event] = deque()
        self._reader = LineReader()
        self._nick_attempt = 0
        self._cap_ls_done = False
        self._sasl_done = False
        self._lag_token: str | None = None
        self._lag_sent_at = 0.0
        self._lag_counter = 0
        self._now = 0.0

    # -- output -------------------------------------------------------------------------

    def _urgent_line(self, command: str, *params: str) -> None:
        if len(self._urgent) >= _URGENT_LIMIT:
            # Only a hostile server gets here (thousands of PINGs or CTCPs faster than
            # we can write): stop answering and let the glue drop the connection.
            if self.state != "closed":
                self.state = "closed"
                self._emit(ServerError(reason="server flood: too many replies pending"))
            return
        self._urgent.append(Line(command=command, params=params).to_bytes())

    def _queue(self, line: Line) -> None:
        data = line.to_bytes()
        if len(self._outbox) >= self.settings.outbox_limit:
            raise OutboxFull(self.settings.outbox_limit)
        self._outbox.append(data)

    def next_line(self, now: float) -> tuple[bytes | None, float]:
        """``(line, 0)`` when a line may be written now; ``(None, seconds)`` when flood
        control holds the next line back that long; ``(None, 0)`` when nothing waits."""
        if self._urgent:
            self.flood.take(now, force=True)
            return self._urgent.popleft(), 0.0
        if not self._outbox or self.state != "registered":
            # Application lines wait for RPL_WELCOME: before it the server answers 451.
            return None, 0.0
        if self.flood.take(now):
            return self._outbox.popleft(), 0.0
        return None, self.flood.delay(now)

    def pending_lines(self) -> int:
        return len(self._urgent) + len(self._outbox)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Queue the registration: CAP LS 302, PASS, NICK, USER (RFC 2812 section 3.1;
        IRCv3 capability negotiation keeps registration open until CAP END)."""
        if self.state != "connecting":
            raise InvalidControl(f"start() called in state {self.state!r}")
        self.state = "registering"
        self._urgent_line("CAP", "LS", "302")
        if self.settings.password is not None:
            self._urgent_line("PASS", self.settings.password)
        self._urgent_line("NICK", self.nick)
        self._urgent_line("USER", self.settings.username, "0", "*", self.settings.realname)

    def quit(self, reason: str = "") -> bytes:
        """The QUIT line to write before closing; the state becomes ``"closed"``.

        Returned rather than queued: on shutdown it must go out at once, ahead of
        everything flood control holds back."""
        self.state = "closed"
        reason = " ".join(_body_lines("reason", reason))
        params = split_text(reason, 300)[:1] if reason else []
        return Line(command="QUIT", params=tuple(params)).to_bytes()

    def lag_check(self, now: float, timeout: float) -> bool:
        """Send a lag-check PING unless one is outstanding. Returns ``False`` when the
        outstanding one has waited more than ``timeout`` seconds: the link is dead."""
        if self._lag_token is not None:
            return now - self._lag_sent_at <= timeout
        self._lag_counter += 1
        self._lag_token = f"csp-bus-lag-{self._lag_counter}"
        self._lag_sent_at = now
        self._urgent_line("PING", self._lag_token)
        return True

    # -- input ----------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray, now: float = 0.0) -> None:
        """Feed bytes from the server; ``b""`` means the connection closed."""
        self._now = now
        self._reader.receive_data(data)

    def next_event(self) -> Event | None:
        """The next event, or ``NEED_DATA`` (``None``). Raises :class:`IrcProtocolError`
        for a line that is not IRC; that line is skipped, so call again."""
        while not self._events:
            line = self._reader.next_line()
            if line is None:
                return NEED_DATA
            self._handle(line)
        return self._events.popleft()

    def events(self) -> Iterator[Event]:
        """All events available now (skipping nothing: errors propagate)."""
        while (event := self.next_event()) is not None:
            yield event

    # -- helpers --------------------------------------------------------------------------

    def lower(self, name: str) -> str:
        return irc_lower(name, self.casemapping)

    def is_me(self, nick: str) -> bool:
        return self.lower(nick) == self.lower(self.nick)

    def is_channel(self, target: str) -> bool:
        return bool(target) and target[0] in self.isupport.get("CHANTYPES", "#&!+")

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    # -- the dispatcher -------------------------------------------------------------------

    def _handle(self, line: Line) -> None:
        handler = _HANDLERS.get(line.command)
        if handler is not None:
            handler(self, line)
        elif (
            line.command.isdigit()
            and line.command[0] in "45"
            and self.state == "registered"
            and line.command not in _SASL_FAIL
        ):
            self._emit(CommandFailed(code=line.command, params=line.params[1:]))

    def _on_ping(self, line: Line) -> None:
        # RFC 2812 section 3.7.3: answer with the same parameter(s).
        self._urgent_line("PONG", *line.params[:2])

    def _on_pong(self, line: Line) -> None:
        if self._lag_token is not None and line.params and line.params[-1] == self._lag_token:
            self._lag_token = None
            self.lag = max(0.0, self._now - self._lag_sent_at)
            self._emit(LagMeasured(seconds=self.lag))

    def _on_error(self, line: Line) -> None:
        self.state = "closed"
        self._emit(ServerError(reason=line.params[-1] if line.params else ""))

    # -- capability negotiation and SASL (IRCv3 capability-negotiation, sasl-3.1) ----------

    def _on_cap(self, line: Line) -> None:
        if len(line.params) < 3:
            return
        sub = line.params[1].upper()
        if sub == "LS":
            more = len(line.params) > 3 and line.params[2] == "*"
            for item in line.params[-1].split():
                name, _, value = item.partition("=")
                self.caps_available[name] = value
            if more or self._cap_ls_done:
                return
            self._cap_ls_done = True
            wanted: list[str] = [cap for cap in _WANTED_CAPS if cap in self.caps_available]
            if self._wants_sasl() and "sasl" in self.caps_available:
                mechanisms = self.caps_available["sasl"]
                if not mechanisms or "PLAIN" in mechanisms.upper().split(","):
                    wanted.append("sasl")
            if wanted:
                self._urgent_line("CAP", "REQ", " ".join(wanted))
            else:
                self._cap_end()
        elif sub == "ACK":
            acked = {cap.lstrip("-~=") for cap in line.params[-1].split()}
            self.caps_enabled |= acked
            if "sasl" in acked and self._wants_sasl():
                self._urgent_line("AUTHENTICATE", "PLAIN")
            else:
                self._cap_end()
        elif sub == "NAK":
            self._cap_end()

    def _wants_sasl(self) -> bool:
        return self.settings.sasl_username is not None and not self._sasl_done

    def _cap_end(self) -> None:
        if self.state != "registering":
            return
        if self._wants_sasl() and "sasl" not in self.caps_enabled:
            self._sasl_failed("the server does not offer SASL PLAIN")
            return
        self._urgent_line("CAP", "END")

    def _on_authenticate(self, line: Line) -> None:
        if line.params[:1] != ("+",) or not self._wants_sasl():
            return
        user = self.settings.sasl_username or ""
        password = self.settings.sasl_password or ""
        # RFC 4616: authzid NUL authcid NUL passwd; base64 in 400-byte chunks, and a
        # lone "+" when the last chunk was exactly 400 bytes (IRCv3 sasl-3.1).
        payload = base64.b64encode(f"{user}\0{user}\0{password}".encode()).decode("ascii")
        chunks = [payload[i : i + 400] for i in range(0, len(payload), 400)]
        if not chunks or len(chunks[-1]) == 400:
            chunks.append("+")
        for chunk in chunks:
            self._urgent_line("AUTHENTICATE", chunk)

    def _on_sasl_success(self, line: Line) -> None:
        self._sasl_done = True
        self._urgent_line("CAP", "END")

    def _on_sasl_failure(self, line: Line) -> None:
        if self.state != "registering":
            return
        reason = line.params[-1] if line.params else line.command
        self._sasl_failed(f"SASL failed ({line.command}: {reason})")

    def _sasl_failed(self, reason: str) -> None:
        self._sasl_done = True
        if self.settings.sasl_required:
            self.state = "closed"
            self._emit(RegistrationFailed(reason=reason))
        else:
            self._urgent_line("CAP", "END")

    # -- registration -----------------------------------------------------------------------

    def _on_welcome(self, line: Line) -> None:
        if line.params:
            self.nick = line.params[0]
        self.server_name = line.source or ""
        if self.state == "registering" and self._wants_sasl() and self.settings.sasl_required:
            # The server registered us without ever offering CAP/SASL: fail closed.
            self._sasl_failed("the server registered us without SASL (no CAP support)")
            return
        if self.state == "registering":
            self.state = "registered"
            self._emit(Registered(nick=self.nick, server_name=self.server_name))
            self._join_lines(self.settings.channels)

    def _on_isupport(self, line: Line) -> None:
        for token in line.params[1:-1]:
            key, _, value = token.partition("=")
            self.isupport[key.upper()] = value
            if key.upper() == "CASEMAPPING" and value:
                self.casemapping = value.lower()
            elif key.upper() == "NICKLEN" and value.isdigit():
                self.nicklen = int(value)

    def _on_nick_error(self, line: Line) -> None:
        if self.state != "registering":
            if self.state == "registered":
                self._emit(CommandFailed(code=line.command, params=line.params[1:]))
            return
        self._nick_attempt += 1
        if self._nick_attempt >= self.settings.max_nick_attempts:
            self.state = "closed"
            self._emit(
                RegistrationFailed(
                    reason=f"no usable nick after {self._nick_attempt} attempts ({line.command})"
                )
            )
            return
        old = self.nick
        self.nick = self._alternative(self._nick_attempt)
        self._emit(NickChanged(old=old, new=self.nick))
        self._urgent_line("NICK", self.nick)

    def _alternative(self, attempt: int) -> str:
        """Configured alternatives first, then nick_, nick__, then nick + digits, each
        cut to the server's NICKLEN."""
        base = self.settings.nick
        alts = list(self.settings.alt_nicks)
        if attempt <= len(alts):
            return alts[attempt - 1][: self.nicklen]
        extra = attempt - len(alts)
        suffix = "_" * extra if extra <= 2 else str(extra - 2)
        return base[: max(1, self.nicklen - len(suffix))] + suffix

    def _on_fatal_registration(self, line: Line) -> None:
        if self.state == "registering":
            self.state = "closed"
            reason = line.params[-1] if line.params else ""
            self._emit(RegistrationFailed(reason=f"{line.command} {reason}".strip()))

    # -- channel and user traffic -------------------------------------------------------------

    def _on_join(self, line: Line) -> None:
        if not line.params or line.source is None:
            return
        channel = line.params[0]
        user = UserMask.parse(line.source)
        if self.is_me(user.nick):
            self.user_mask = user
            self.channels[self.lower(channel)] = channel
            self._emit(Joined(channel=channel))
        else:
            self._emit(Received(type="join", user=user, channel=channel, body="", tags=line.tags))

    def _on_part(self, line: Line) -> None:
        if not line.params or line.source is None:
            return
        channel = line.params[0]
        user = UserMask.parse(line.source)
        if self.is_me(user.nick):
            self.channels.pop(self.lower(channel), None)
            return
        body = line.params[1] if len(line.params) > 1 else ""
        self._emit(Received(type="part", user=user, channel=channel, body=body, tags=line.tags))

    def _on_quit(self, line: Line) -> None:
        if line.source is None:
            return
        user = UserMask.parse(line.source)
        if self.is_me(user.nick):
            return
        body = line.params[0] if line.params else ""
        self._emit(Received(type="quit", user=user, channel=None, body=body, tags=line.tags))

    def _on_nick(self, line: Line) -> None:
        if not line.params or line.source is None:
            return
        user = UserMask.parse(line.source)
        new = line.params[0]
        if self.is_me(user.nick):
            old, self.nick = self.nick, new
            self._emit(NickChanged(old=old, new=new))
            return
        self._emit(Received(type="nick", user=user, channel=None, body=new, tags=line.tags))

    def _on_kick(self, line: Line) -> None:
        if len(line.params) < 2 or line.source is None:
            return
        channel, target = line.params[0], line.params[1]
        reason = line.params[2] if len(line.params) > 2 else ""
        user = UserMask.parse(line.source)
        self._emit(
            Received(
                type="kick", user=user, channel=channel, body=reason, tags=line.tags, target=target
            )
        )
        if self.is_me(target):
            self.channels.pop(self.lower(channel), None)
            self._emit(Kicked(channel=channel, by=user.nick, reason=reason))

    def _on_topic(self, line: Line) -> None:
        if not line.params or line.source is None:
            return
        body = line.params[1] if len(line.params) > 1 else ""
        self._emit(
            Received(
                type="topic",
                user=UserMask.parse(line.source),
                channel=line.params[0],
                body=body,
                tags=line.tags,
            )
        )

    def _on_text(self, line: Line) -> None:
        if len(line.params) < 2 or self.state != "registered":
            return
        target, text = line.params[0], line.params[1]
        user = UserMask.parse(line.source) if line.source else None
        if user is not None and self.is_me(user.nick):
            return  # our own echo (echo-message is not requested, but be safe)
        kind: ReceiveType = "message" if line.command == "PRIVMSG" else "notice"
        if text.startswith("\x01"):
            ctcp = text[1:-1] if text.endswith("\x01") and len(text) > 1 else text[1:]
            verb, _, argument = ctcp.partition(" ")
            verb = verb.upper()
            if verb == "ACTION" and kind == "message":
                kind, text = "action", argument
            else:
                if kind == "message" and user is not None:
                    self._answer_ctcp(user.nick, verb, argument)
                return  # CTCP queries and replies are not application traffic
        self._emit(Received(type=kind, user=user, channel=target, body=text, tags=line.tags))

    def _answer_ctcp(self, nick: str, verb: str, argument: str) -> None:
        # CTCP VERSION and PING are answered by NOTICE (never PRIVMSG, so two bots cannot
        # loop); through the outbox so that a CTCP flood is paced, and dropped when full.
        answers = {"VERSION": self.settings.version, "PING": argument}
        if verb not in answers:
            return
        reply = (verb + " " + answers[verb]).strip()
        with contextlib.suppress(OutboxFull, InvalidControl):
            self._queue(Line(command="NOTICE", params=(nick, f"\x01{reply[:300]}\x01")))

    # -- control messages from the bus ---------------------------------------------------------

    def _overhead(self, command: str, target: str) -> int:
        """Bytes the server adds when relaying our line: ``:nick!user@host CMD target :``
        and CR LF. Our own mask is known once we saw our JOIN echoed."""
        mask = self.user_mask
        user_len = len(mask.user.encode()) if mask and mask.user else _ASSUMED_USER
        host_len = len(mask.host.encode()) if mask and mask.host else _ASSUMED_HOST
        prefix = 1 + len(self.nick.encode()) + 1 + user_len + 1 + host_len + 1
        return prefix + len(command) + 1 + len(target.encode()) + 2 + 2

    def text_lines(
        self, command: str, target: str, body: str, *, action: bool = False
    ) -> list[Line]:
        """Lines sending ``body`` to ``target``: one per line of text, split so that
        each relayed line fits in 512 bytes."""
        check_safe("channel", target, space=False, comma=False)
        if not target:
            raise InvalidControl("channel (the target) must not be empty")
        room = MAX_LINE - self._overhead(command, target) - (9 if action else 0)
        lines = []
        for text_line in _body_lines("body", body):
            for piece in split_text(text_line, max(room, 32)):
                text = f"\x01ACTION {piece}\x01" if action else piece
                lines.append(Line(command=command, params=(target, text)))
        return lines

    def _join_lines(self, channels: Iterable[str]) -> None:
        # RFC 2812 section 3.2.1: "JOIN #a,#b key_a"; keyed channels go first. One line per
        # batch that fits; these are protocol lines, queued urgently at registration.
        entries = [channel.partition(" ")[::2] for channel in channels]
        entries.sort(key=lambda entry: not entry[1])
        batch: list[tuple[str, str]] = []
        for entry in [*entries, None]:
            if entry is not None:
                candidate = [*batch, entry]
                size = sum(len(n) + len(k) + 2 for n, k in candidate) + 10
                if size < MAX_LINE - 20:
                    batch = candidate
                    continue
            if batch:
                names = ",".join(name for name, _ in batch)
                keys = ",".join(key for _, key in batch if key)
                self._urgent_line("JOIN", *((names, keys) if keys else (names,)))
            batch = [entry] if entry is not None else []

    def rejoin(self, channel: str) -> None:
        """Join ``channel`` again (after a kick, once the glue's delay passed)."""
        if self.state == "registered" and self.lower(channel) not in self.channels:
            keyed = [
                c
                for c in self.settings.channels
                if self.lower(c.partition(" ")[0]) == self.lower(channel)
            ]
            self._join_lines(keyed or [channel])

    def control(self, message: Mapping[str, Any]) -> int:
        """Queue the lines a control message asks for; return how many were queued.

        ``type`` is one of ``join part message action notice nick topic raw``. Raises
        :class:`InvalidControl` (a missing or bad field), :class:`UnsafeLine` (CR, LF or
        NUL where it would corrupt the line), :class:`OutboxFull`.
        """
        kind = message.get("type")
        if kind not in CONTROL_TYPES:
            raise InvalidControl(f"type must be one of {', '.join(CONTROL_TYPES)}; got {kind!r}")
        body = message.get("body", "")
        if body is None:
            body = ""
        if not isinstance(body, str):
            raise InvalidControl(f"body must be a str, not {type(body).__name__}")
        if kind == "raw":
            lines = [self._raw_line(body)]
        elif kind == "nick":
            check_safe("body", body, space=False, comma=False)
            if not body:
                raise InvalidControl("nick: body (the new nick) must not be empty")
            lines = [Line(command="NICK", params=(body,))]
        else:
            channel = message.get("channel")
            if not isinstance(channel, str) or not channel:
                raise InvalidControl(f"{kind}: channel must be a non-empty str, got {channel!r}")
            check_safe("channel", channel, space=False, comma=False)
            if kind == "join":
                key = message.get("key") or ""
                if not isinstance(key, str):
                    raise InvalidControl("join: key must be a str")
                check_safe("key", key, space=False, comma=False)
                lines = [Line(command="JOIN", params=(channel, key) if key else (channel,))]
            elif kind == "part":
                reason = " ".join(_body_lines("body", body))[:300]
                lines = [Line(command="PART", params=(channel, reason) if reason else (channel,))]
            elif kind == "topic":
                topic = " ".join(_body_lines("body", body))
                lines = [Line(command="TOPIC", params=(channel, topic[:390]))]
            elif kind == "notice":
                lines = self.text_lines("NOTICE", channel, body)
            elif kind == "action":
                lines = self.text_lines("PRIVMSG", channel, body, action=True)
            else:
                lines = self.text_lines("PRIVMSG", channel, body)
        if len(self._outbox) + len(lines) > self.settings.outbox_limit:
            raise OutboxFull(self.settings.outbox_limit)
        encoded = [line.to_bytes() for line in lines]
        self._outbox.extend(encoded)
        return len(encoded)

    def _raw_line(self, body: str) -> Line:
        check_safe("raw", body)
        try:
            line = parse_line(body)
        except IrcProtocolError as exc:
            raise InvalidControl(f"raw: not an IRC line: {exc}") from exc
        # Re-serialized from the parsed form: what goes out is exactly what was checked.
        line.to_bytes()
        return line


_HANDLERS: Final = {
    "PING": IrcClient._on_ping,
    "PONG": IrcClient._on_pong,
    "ERROR": IrcClient._on_error,
    "CAP": IrcClient._on_cap,
    "AUTHENTICATE": IrcClient._on_authenticate,
    "903": IrcClient._on_sasl_success,
    "001": IrcClient._on_welcome,
    "005": IrcClient._on_isupport,
    "JOIN": IrcClient._on_join,
    "PART": IrcClient._on_part,
    "QUIT": IrcClient._on_quit,
    "NICK": IrcClient._on_nick,
    "KICK": IrcClient._on_kick,
    "TOPIC": IrcClient._on_topic,
    "PRIVMSG": IrcClient._on_text,
    "NOTICE": IrcClient._on_text,
    "464": IrcClient._on_fatal_registration,
    "465": IrcClient._on_fatal_registration,
    **{code: IrcClient._on_nick_error for code in _NICK_ERRORS},
    **{code: IrcClient._on_sasl_failure for code in _SASL_FAIL},
}
