"""A sans-IO SMTP server (RFC 5321 and the extensions it advertises).

Bytes go in with :meth:`SMTPServerConnection.receive_data` (``b""`` means the peer closed
its side), events come out of :meth:`~SMTPServerConnection.next_event`, and every reply the
protocol owes the client waits in :meth:`~SMTPServerConnection.data_to_send`. The state
machine answers everything it can decide alone (syntax, sequence, limits, relay policy);
it stops and hands the glue an event only for what needs the outside world:

* :class:`MessageReceived` -- a complete message after DATA. The glue puts it on the bus
  and answers with :meth:`~SMTPServerConnection.accept_message` or
  :meth:`~SMTPServerConnection.reject_message` (451 when the bus is full or down). Until it
  does, :meth:`~SMTPServerConnection.next_event` returns :data:`PAUSED`.
* :class:`StartTLS` -- the ``220`` reply is queued; the glue sends it, wraps the stream in
  TLS and calls :meth:`~SMTPServerConnection.tls_started`.
* :class:`AuthAttempt` -- credentials from AUTH PLAIN/LOGIN; the glue checks them and calls
  :meth:`~SMTPServerConnection.auth_result`.
* :class:`ConnectionClosed` -- after QUIT, too many errors, a timeout the glue reported with
  :meth:`~SMTPServerConnection.timeout`, or the peer closing; send what is left and close.

Invariants: input never raises -- whatever bytes arrive, the client gets a well-formed
reply with a valid code (a hypothesis test feeds hostile input whole and byte by byte);
accept/reject decisions are events and return values. This module imports no I/O library
(a test parses its imports to prove it has no trio).

Not implemented on purpose: BDAT/CHUNKING, DSN, ETRN, EXPN (502), relaying of any kind --
recipients outside :attr:`SessionConfig.accepted_domains` get ``550 5.7.1``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from csp_bus.errors import UsageError

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "AuthAttempt",
    "ConnectionClosed",
    "Event",
    "MessageReceived",
    "SMTPServerConnection",
    "SessionConfig",
    "StartTLS",
    "State",
    "format_reply",
    "normalize_domain",
]


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: :meth:`SMTPServerConnection.next_event` needs more bytes from the peer.
NEED_DATA: Final = _Sentinel("NEED_DATA")
#: :meth:`SMTPServerConnection.next_event` waits for the glue's answer to an event.
PAUSED: Final = _Sentinel("PAUSED")


def normalize_domain(domain: str) -> str:
    """Lower-case, strip a trailing dot, and turn an internationalized name into its
    ASCII (punycode) form so that ``bücher.example`` and ``xn--bcher-kva.example`` match."""
    domain = domain.strip().rstrip(".").lower()
    if not domain.isascii():
        # not a valid IDN: kept as is, it will match no accepted domain
        with contextlib.suppress(UnicodeError):
            domain = domain.encode("idna").decode("ascii")
    return domain


@dataclass(frozen=True, kw_only=True)
class SessionConfig:
    """What one SMTP session allows; the glue builds it once and shares it.

    ``max_message_size`` defaults to 400 KiB so that the ``email.receive`` message (raw
    bytes plus the decoded parts) stays under the default 1 MiB bus message limit.
    ``max_command_line`` is RFC 5321 4.5.3.1.4's 512 octets (AUTH lines may reach 12288,
    RFC 4954 section 4); ``max_data_line`` is 4.5.3.1.6's 1000 octets, CRLF included.
    """

    hostname: str = "localhost"
    accepted_domains: frozenset[str] = frozenset()
    max_message_size: int = 400 * 1024
    max_recipients: int = 100
    max_command_line: int = 512
    max_data_line: int = 1000
    max_errors: int = 20
    starttls: bool = False
    auth: bool = False
    auth_requires_tls: bool = True
    auth_required: bool = False

    def __post_init__(self) -> None:
        domains = self.accepted_domains
        if isinstance(domains, str):
            raise TypeError("accepted_domains must be a collection of domains, not one str")
        object.__setattr__(
            self, "accepted_domains", frozenset(normalize_domain(d) for d in domains)
        )
        if not _HOSTNAME_RE.fullmatch(self.hostname):
            raise ValueError(f"hostname {self.hostname!r} is not a valid host name")
        for name in ("max_message_size", "max_recipients", "max_errors"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_command_line < 512 or self.max_data_line < 1000:
            raise ValueError(
                "max_command_line must be >= 512 and max_data_line >= 1000 (RFC 5321 4.5.3.1)"
            )
        if self.auth_required and not self.auth:
            raise ValueError("auth_required needs auth=True")


# ------------------------------------------------------------------------------- events


@dataclass(frozen=True, kw_only=True)
class MessageReceived:
    """A complete message (dot-unstuffed, CRLF line ends) and its envelope.

    ``sender`` is the reverse path, ``None`` for the null sender ``<>``.
    """

    sender: str | None
    recipients: tuple[str, ...]
    data: bytes
    helo: str
    smtputf8: bool = False
    body: str = "7BIT"
    tls: bool = False
    auth_user: str | None = None

    def __post_init__(self) -> None:
        if not self.recipients:
            raise ValueError("a message needs at least one recipient")


@dataclass(frozen=True, kw_only=True)
class StartTLS:
    """Send the queued ``220``, wrap the stream in TLS, then call ``tls_started()``."""


@dataclass(frozen=True, kw_only=True)
class AuthAttempt:
    """Check these credentials and call ``auth_result(ok)``."""

    mechanism: str
    username: str
    password: str = field(repr=False)
    authzid: str = ""


@dataclass(frozen=True, kw_only=True)
class ConnectionClosed:
    """The session is over; send what is queued, then close the connection."""

    reason: str


Event = MessageReceived | StartTLS | AuthAttempt | ConnectionClosed


class State(enum.Enum):
    COMMAND = "command"
    AUTH_CONTINUE = "auth-continue"  # a 334 is out, waiting for the client's line
    DATA = "data"
    WAIT_MESSAGE = "wait-message"  # MessageReceived is out, waiting for accept/reject
    WAIT_TLS = "wait-tls"
    WAIT_AUTH = "wait-auth"
    CLOSED = "closed"


# ------------------------------------------------------------------------------ replies

_REPLY_CODE_RE: Final = re.compile(r"[2-5][0-5][0-9]")


def format_reply(code: int, text: str | list[str]) -> bytes:
    """``250-first\\r\\n250 last\\r\\n``: a (multi-line) reply, RFC 5321 4.2.1.

    Text never carries a line break (it would let a peer forge replies); they are replaced.
    """
    if not _REPLY_CODE_RE.fullmatch(str(code)):
        raise ValueError(f"{code!r} is not an SMTP reply code")
    lines = [text] if isinstance(text, str) else list(text) or [""]
    out = []
    for index, line in enumerate(lines):
        clean = line.replace("\r", " ").replace("\n", " ")
        sep = " " if index == len(lines) - 1 else "-"
        out.append(f"{code}{sep}{clean}\r\n")
    return "".join(out).encode("utf-8")


# ------------------------------------------------------------------------------ parsing

_HOSTNAME_RE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
# RFC 5321 4.1.2: Atom characters (atext), plus any non-ASCII with SMTPUTF8 (RFC 6531).
_ATEXT: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_ATOM_RE: Final = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_QUOTED_RE: Final = re.compile(
    r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
)
_LETTER: Final = r"[A-Za-z0-9\u0080-\U0010ffff]"
_LABEL: Final = rf"{_LETTER}(?:[A-Za-z0-9\u0080-\U0010ffff-]{{0,61}}{_LETTER})?"
_DOMAIN_RE: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_LITERAL_RE: Final = re.compile(r"\[[\x21-\x5a\x5e-\x7e]{1,253}\]")
_PARAM_RE: Final = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e]+))?")


class _Reject(Exception):
    """Internal: a command is refused with this reply. Never leaves the module."""

    def __init__(self, code: int, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(f"{code} {text}")


def _parse_path(text: str, keyword: str) -> tuple[str, str]:
    """Split ``FROM:<path> params`` into (path without brackets, params text)."""
    if text[: len(keyword)].upper() != keyword:
        raise _Reject(501, f"5.5.4 Syntax: {keyword}<address>")
    rest = text[len(keyword) :].lstrip(" ")  # "MAIL FROM: <a@b>" is common; be liberal
    if rest.startswith("<"):
        # Scan to the closing bracket, skipping quoted strings ("a>b"@example.com).
        quoted = False
        index = 1
        while index < len(rest):
            char = rest[index]
            if quoted and char == "\\":
                index += 2
                continue
            if char == '"':
                quoted = not quoted
            elif char == ">" and not quoted:
                break
            index += 1
        else:
            raise _Reject(501, "5.1.7 Unbalanced '<' in address")
        path, params = rest[1:index], rest[index + 1 :]
        if params and not params.startswith(" "):
            raise _Reject(501, "5.5.4 Syntax error after the address")
    else:
        path, _, params = rest.partition(" ")
        if not path:
            raise _Reject(501, f"5.5.4 Syntax: {keyword}<address>")
    # RFC 5321 4.1.2 / appendix C: a source route (@a,@b:user@c) is accepted and ignored.
    if path.startswith("@"):
        colon = path.find(":")
        if colon == -1:
            raise _Reject(501, "5.1.7 Bad source route")
        path = path[colon + 1 :]
    return path, params.strip(" ")


def _check_mailbox(address: str, *, kind: str) -> None:
    """RFC 5321 4.1.2 Mailbox syntax and 4.5.3.1 size limits; raise _Reject if bad."""
    code, status = (553, "5.1.7") if kind == "sender" else (553, "5.1.3")
    if len(address) > 254:
        raise _Reject(code, f"{status} Address too long")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise _Reject(code, f"{status} Address must look like user@domain")
    if len(local.encode("utf-8")) > 64:
        raise _Reject(code, f"{status} Local part longer than 64 octets")
    if not (_DOT_ATOM_RE.fullmatch(local) or _QUOTED_RE.fullmatch(local)):
        raise _Reject(code, f"{status} Bad local part syntax")
    if not (_DOMAIN_RE.fullmatch(domain) or _LITERAL_RE.fullmatch(domain)):
        raise _Reject(code, f"{status} Bad domain syntax")


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise _Reject(501, "5.5.2 Cannot decode the base64 response") from exc


def _b64text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Reject(501, "5.5.2 Credentials are not valid UTF-8") from exc


_TOO_LONG: Final = _Sentinel("TOO_LONG")
_AUTH_LINE_LIMIT: Final = 12288  # RFC 4954 section 4


# ------------------------------------------------------------------------- the machine


class SMTPServerConnection:
    """One SMTP session, server side. The greeting is queued on construction.

    ``tls`` says whether the stream is already TLS (implicit TLS, port 465).
    """

    def __init__(self, config: SessionConfig, *, tls: bool = False) -> None:
        self.config = config
        self.tls = tls
        self.state = State.COMMAND
        self.errors = 0
        self.helo: str | None = None
        self.esmtp = False
        self.auth_user: str | None = None
        self._buffer = bytearray()
        self._scan = 0  # where to resume looking for CRLF in _buffer
        self._discarding = False  # inside an over-long line, dropping bytes to its CRLF
        self._eof = False
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._closed_reason: str | None = None
        self._reset_transaction()
        # AUTH continuation state
        self._auth_mechanism = ""
        self._auth_username: str | None = None
        self._reply(220, f"{config.hostname} ESMTP csp-bus")

    # -- public API -----------------------------------------------------------------

    @property
    def in_data(self) -> bool:
        """True between the ``354`` and the end of the message (the data timeout applies)."""
        return self.state is State.DATA

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the peer; ``b""`` means it closed its side."""
        if self.state is State.CLOSED:
            return
        if not data:
            self._eof = True
            return
        self._buffer += data

    def data_to_send(self) -> bytes:
        """Every reply queued so far (empty when nothing is owed)."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | _Sentinel:
        """The next event, :data:`NEED_DATA` or :data:`PAUSED`; never raises on input."""
        while True:
            if self._events:
                return self._events.popleft()
            if self.state is State.CLOSED:
                return ConnectionClosed(reason=self._closed_reason or "closed")
            if self.state in (State.WAIT_MESSAGE, State.WAIT_TLS, State.WAIT_AUTH):
                return PAUSED
            if self.state is State.DATA:
                progressed = self._process_data()
            else:
                limit = self.config.max_command_line
                if self.config.auth:
                    limit = max(limit, _AUTH_LINE_LIMIT)
                line = self._next_line(limit)
                if line is None:
                    progressed = False
                else:
                    self._handle_line(line)
                    progressed = True
            if not progressed:  # nothing consumed: no event and no state change either
                if self._eof:
                    if self.state is State.DATA:
                        self._close("the client closed the connection during DATA")
                    else:
                        self._close("the client closed the connection")
                    continue
                return NEED_DATA

    def accept_message(self, text: str = "2.0.0 OK: queued") -> None:
        """The message is safe on the bus: answer ``250``."""
        self._expect(State.WAIT_MESSAGE, "accept_message")
        self.state = State.COMMAND
        self._reset_transaction()
        self._reply(250, text)

    def reject_message(self, code: int, text: str) -> None:
        """Refuse the message: ``451 4.3.0 ...`` (try later) or ``5xx`` (permanent)."""
        self._expect(State.WAIT_MESSAGE, "reject_message")
        if not 400 <= code < 600:
            raise ValueError("reject_message needs a 4xx or 5xx code")
        self.state = State.COMMAND
        self._reset_transaction()
        self._reply(code, text)

    def tls_started(self) -> None:
        """The stream is now TLS: the session starts over (RFC 3207 4.2)."""
        self._expect(State.WAIT_TLS, "tls_started")
        self.tls = True
        self.helo = None
        self.esmtp = False
        self.auth_user = None
        self._reset_transaction()
        self.state = State.COMMAND

    def auth_result(self, ok: bool) -> None:
        """Answer an :class:`AuthAttempt`: ``235`` or ``535``."""
        self._expect(State.WAIT_AUTH, "auth_result")
        self.state = State.COMMAND
        if ok:
            self.auth_user = self._auth_username
            self._reply(235, "2.7.0 Authentication successful")
        else:
            self._error(535, "5.7.8 Authentication credentials invalid")
        self._auth_username = None

    def timeout(self) -> None:
        """The glue's command or data timer ran out: ``421`` and close (RFC 5321 4.5.3.2)."""
        if self.state is not State.CLOSED:
            self._reply(421, f"4.4.2 {self.config.hostname} Timeout, closing connection")
            self._close("timeout")

    def shutdown(self, text: str = "4.3.2 Service shutting down, try again later") -> None:
        """The server is going away: ``421`` and close."""
        if self.state is not State.CLOSED:
            self._reply(421, f"{text}")
            self._close("server shutdown")

    # -- internals ------------------------------------------------------------------

    def _expect(self, state: State, method: str) -> None:
        if self.state is not state:
            raise UsageError(f"{method}() called in state {self.state.value}, not {state.value}")

    def _reset_transaction(self) -> None:
        self.sender: str | None = None
        self.in_transaction = False
        self.recipients: list[str] = []
        self.smtputf8 = False
        self.body_type = "7BIT"
        self._data = bytearray()
        self._data_size = 0  # octets of message text seen, stored or not
        self._long_line = False  # a text line over max_data_line was seen
        self._at_line_start = True

    def _reply(self, code: int, text: str | list[str]) -> None:
        self._out.append(format_reply(code, text))

    def _close(self, reason: str) -> None:
        self.state = State.CLOSED
        self._closed_reason = reason
        self._buffer.clear()
        self._events.append(ConnectionClosed(reason=reason))

    def _error(self, code: int, text: str) -> None:
        """A 5xx to a command counts toward the per-connection error limit."""
        self._reply(code, text)
        if code >= 500:
            self.errors += 1
            if self.errors >= self.config.max_errors:
                self._reply(421, "4.7.0 Too many errors, closing connection")
                self._close("too many errors")

    def _next_line(self, limit: int) -> bytes | _Sentinel | None:
        """The next CRLF-terminated line without its CRLF; ``_TOO_LONG`` for a line over
        ``limit`` octets (CRLF included) once its end arrives; ``None`` when incomplete.

        Only CRLF ends a line (RFC 5321 2.3.8): a bare LF or CR is data, which is what
        keeps ``\\n.\\n`` from ending a message (SMTP smuggling).
        """
        buffer = self._buffer
        index = buffer.find(b"\r\n", self._scan)
        if index == -1:
            if len(buffer) > limit:
                # Keep a trailing CR: it may be half of the CRLF that ends the line.
                keep = 1 if buffer.endswith(b"\r") else 0
                del buffer[: len(buffer) - keep]
                self._discarding = True
            self._scan = max(0, len(buffer) - 1)
            return None
        self._scan = 0
        if self._discarding:
            del buffer[: index + 2]
            self._discarding = False
            return _TOO_LONG
        line = bytes(buffer[:index])
        del buffer[: index + 2]
        if index + 2 > limit:
            return _TOO_LONG
        return line

    # -- DATA -----------------------------------------------------------------------

    def _process_data(self) -> bool:
        """Consume DATA text; return whether any progress was made.

        Works on whole runs of complete lines rather than line by line: the end of the
        message is the first ``CRLF . CRLF`` (or ``. CRLF`` at a line start), dot-stuffing
        is undone with one ``replace`` (RFC 5321 4.5.2), and only CRLF ends a line. The
        outcome never depends on how the input was chunked: the size and the line-length
        verdicts are both computed over all of the text, and a long line wins (500) over
        an oversized message (552).
        """
        buffer = self._buffer
        if not buffer:
            return False
        if self._at_line_start and buffer.startswith(b".\r\n"):
            end = 0
        else:
            found = buffer.find(b"\r\n.\r\n")
            end = -1 if found == -1 else found + 2
        if end == -1:
            last = buffer.rfind(b"\r\n")
            if last == -1:
                if len(buffer) > self.config.max_data_line:
                    # An over-long partial line: drop it as it arrives, keeping a trailing
                    # CR that may be half of the CRLF that ends it.
                    keep = 1 if buffer.endswith(b"\r") else 0
                    del buffer[: len(buffer) - keep]
                    self._long_line = True
                    self._at_line_start = False
                    self._data = bytearray()
                    return True
                return False
            end = last + 2
            self._take_text(bytes(buffer[:end]))
            del buffer[:end]
            return True
        self._take_text(bytes(buffer[:end]))
        del buffer[: end + 3]
        self._end_of_data()
        return True

    def _take_text(self, text: bytes) -> None:
        """Add complete lines (``text`` ends in CRLF, or is empty) to the message."""
        if not text:
            self._at_line_start = True
            return
        lines = text.split(b"\r\n")
        if max(map(len, lines)) + 2 > self.config.max_data_line:
            self._long_line = True
        if self._at_line_start and text.startswith(b"."):
            text = text[1:]
        text = text.replace(b"\r\n.", b"\r\n")
        self._at_line_start = True
        self._data_size += len(text)
        if self._long_line or self._data_size > self.config.max_message_size:
            self._data = bytearray()
        else:
            self._data += text

    def _end_of_data(self) -> None:
        limit = self.config.max_message_size
        problem: tuple[int, str] | None = None
        if self._long_line:
            problem = (500, f"5.5.2 Line too long (limit {self.config.max_data_line} octets)")
        elif self._data_size > limit:
            problem = (552, f"5.3.4 Message size exceeds fixed maximum message size ({limit})")
        if problem is not None:
            self.state = State.COMMAND
            self._reset_transaction()
            self._error(*problem)
            return
        assert self.helo is not None
        self.state = State.WAIT_MESSAGE
        self._events.append(
            MessageReceived(
                sender=self.sender,
                recipients=tuple(self.recipients),
                data=bytes(self._data),
                helo=self.helo,
                smtputf8=self.smtputf8,
                body=self.body_type,
                tls=self.tls,
                auth_user=self.auth_user,
            )
        )
        self._data = bytearray()

    # -- commands -------------------------------------------------------------------

    def _handle_line(self, raw: bytes | _Sentinel) -> None:
        if raw is _TOO_LONG:
            self.state = State.COMMAND if self.state is State.AUTH_CONTINUE else self.state
            self._error(500, "5.5.2 Line too long")
            return
        assert isinstance(raw, bytes)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.state = State.COMMAND
            self._error(500, "5.5.2 Command is not valid UTF-8")
            return
        if any(ord(char) < 32 or ord(char) == 127 for char in line):
            self.state = State.COMMAND
            self._error(500, "5.5.2 Control characters are not allowed in commands")
            return
        try:
            if self.state is State.AUTH_CONTINUE:
                self._auth_continue(line)
                return
            verb, _, args = line.partition(" ")
            handler = _COMMANDS.get(verb.upper())
            if handler is None:
                raise _Reject(500, "5.5.1 Command unrecognized")
            handler(self, args.strip(" "))
        except _Reject as reject:
            if self.state is State.AUTH_CONTINUE:
                self.state = State.COMMAND
            self._error(reject.code, reject.text)

    def _need_helo(self) -> None:
        if self.helo is None:
            raise _Reject(503, "5.5.1 Send EHLO or HELO first")

    def _cmd_ehlo(self, args: str) -> None:
        if not args:
            raise _Reject(501, "5.5.4 Syntax: EHLO hostname")
        self.helo = args.split(" ")[0]
        self.esmtp = True
        self._reset_transaction()
        lines = [
            f"{self.config.hostname} Hello {self.helo[:64]}",
            "PIPELINING",
            f"SIZE {self.config.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
        ]
        if self.config.starttls and not self.tls:
            lines.append("STARTTLS")
        if self._auth_offered():
            lines.append("AUTH PLAIN LOGIN")
        self._reply(250, lines)

    def _cmd_helo(self, args: str) -> None:
        if not args:
            raise _Reject(501, "5.5.4 Syntax: HELO hostname")
        self.helo = args.split(" ")[0]
        self.esmtp = False
        self._reset_transaction()
        self._reply(250, f"{self.config.hostname} Hello {self.helo[:64]}")

    def _auth_offered(self) -> bool:
        return self.config.auth and (self.tls or not self.config.auth_requires_tls)

    def _cmd_mail(self, args: str) -> None:
        self._need_helo()
        if self.in_transaction:
            raise _Reject(503, "5.5.1 Sender already given (RSET first)")
        if self.config.auth_required and self.auth_user is None:
            raise _Reject(530, "5.7.0 Authentication required")
        path, params = _parse_path(args, "FROM:")
        smtputf8 = False
        body = "7BIT"
        for param in params.split():
            match = _PARAM_RE.fullmatch(param)
            if not match or not self.esmtp:
                raise _Reject(555, f"5.5.4 Unsupported parameter {param[:40]!r}")
            key, value = match.group(1).upper(), match.group(2)
            if key == "SIZE" and value is not None and value.isdigit() and len(value) <= 20:
                if int(value) > self.config.max_message_size:
                    raise _Reject(
                        552,
                        "5.3.4 Message size exceeds fixed maximum message size "
                        f"({self.config.max_message_size} octets)",
                    )
            elif key == "BODY" and value is not None and value.upper() in ("7BIT", "8BITMIME"):
                body = value.upper()
            elif key == "SMTPUTF8" and value is None:
                smtputf8 = True
            elif key == "AUTH" and value is not None and self._auth_offered():
                # RFC 4954 section 5: MAIL FROM's AUTH= is accepted, and trusted for nothing.
                continue
            else:
                raise _Reject(555, f"5.5.4 Unsupported parameter {param[:40]!r}")
        if path == "":
            sender = None
        else:
            if not path.isascii() and not smtputf8:
                raise _Reject(553, "5.6.7 Non-ASCII address needs the SMTPUTF8 parameter")
            _check_mailbox(path, kind="sender")
            sender = path
        self.sender = sender
        self.in_transaction = True
        self.smtputf8 = smtputf8
        self.body_type = body
        self._reply(250, "2.1.0 Sender OK")

    def _cmd_rcpt(self, args: str) -> None:
        self._need_helo()
        if not self.in_transaction:
            raise _Reject(503, "5.5.1 Need MAIL before RCPT")
        path, params = _parse_path(args, "TO:")
        if params:
            raise _Reject(555, "5.5.4 RCPT parameters are not supported")
        if not path.isascii() and not self.smtputf8:
            raise _Reject(553, "5.6.7 Non-ASCII address needs the SMTPUTF8 parameter")
        if len(self.recipients) >= self.config.max_recipients:
            # 452 (not 552): the client sends the rest in another transaction, 4.5.3.1.10
            self._reply(452, "4.5.3 Too many recipients")
            return
        if path.lower() == "postmaster":
            # RFC 5321 4.5.1: "Postmaster" without a domain must be accepted.
            self.recipients.append(path)
            self._reply(250, "2.1.5 Recipient OK")
            return
        _check_mailbox(path, kind="recipient")
        domain = normalize_domain(path.rpartition("@")[2])
        if domain not in self.config.accepted_domains:
            raise _Reject(550, "5.7.1 Relaying denied: we do not accept mail for that domain")
        self.recipients.append(path)
        self._reply(250, "2.1.5 Recipient OK")

    def _cmd_data(self, args: str) -> None:
        self._need_helo()
        if args:
            raise _Reject(501, "5.5.4 DATA takes no arguments")
        if not self.in_transaction:
            raise _Reject(503, "5.5.1 Need MAIL before DATA")
        if not self.recipients:
            raise _Reject(554, "5.5.1 No valid recipients")
        self.state = State.DATA
        self._reply(354, "End data with <CR><LF>.<CR><LF>")

    def _cmd_rset(self, args: str) -> None:
        if args:
            raise _Reject(501, "5.5.4 RSET takes no arguments")
        self._reset_transaction()
        self._reply(250, "2.0.0 OK")

    def _cmd_noop(self, args: str) -> None:
        self._reply(250, "2.0.0 OK")

    def _cmd_quit(self, args: str) -> None:
        self._reply(221, f"2.0.0 {self.config.hostname} closing connection")
        self._close("quit")

    def _cmd_vrfy(self, args: str) -> None:
        if not args:
            raise _Reject(501, "5.5.4 Syntax: VRFY address")
        # RFC 5321 3.5.3 / 7.3: 252 says nothing about which users exist.
        self._reply(252, "2.0.0 Cannot VRFY user, but will accept message and attempt delivery")

    def _cmd_expn(self, args: str) -> None:
        raise _Reject(502, "5.5.1 EXPN not available")

    def _cmd_help(self, args: str) -> None:
        self._reply(214, "2.0.0 See RFC 5321; commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT")

    def _cmd_starttls(self, args: str) -> None:
        if not self.config.starttls:
            raise _Reject(502, "5.5.1 STARTTLS not available")
        if self.tls:
            raise _Reject(503, "5.5.1 TLS already active")
        if args:
            raise _Reject(501, "5.5.4 STARTTLS takes no arguments")
        self._need_helo()
        self._reply(220, "2.0.0 Ready to start TLS")
        # Anything the client pipelined after STARTTLS was sent in clear text and must not
        # be executed inside TLS (CVE-2011-0411, command injection): drop it.
        self._buffer.clear()
        self._scan = 0
        self.state = State.WAIT_TLS
        self._events.append(StartTLS())

    def _cmd_auth(self, args: str) -> None:
        self._need_helo()
        if not self._auth_offered():
            if self.config.auth and not self.tls:
                raise _Reject(530, "5.7.0 Must issue a STARTTLS command first")
            raise _Reject(502, "5.5.1 AUTH not available")
        if self.auth_user is not None:
            raise _Reject(503, "5.5.1 Already authenticated")
        if self.in_transaction:
            raise _Reject(503, "5.5.1 AUTH not allowed during a mail transaction")
        mechanism, _, initial = args.partition(" ")
        mechanism = mechanism.upper()
        initial = initial.strip(" ")
        if mechanism not in ("PLAIN", "LOGIN"):
            raise _Reject(504, "5.5.4 Unrecognized authentication mechanism")
        self._auth_mechanism = mechanism
        self._auth_username = None
        if mechanism == "PLAIN":
            if not initial:
                self.state = State.AUTH_CONTINUE
                self._reply(334, "")
                return
            self._auth_plain(initial)
        else:
            if not initial:
                self.state = State.AUTH_CONTINUE
                self._reply(334, "VXNlcm5hbWU6")  # "Username:"
                return
            self._auth_username = self._auth_field(initial)
            self.state = State.AUTH_CONTINUE
            self._reply(334, "UGFzc3dvcmQ6")  # "Password:"

    def _auth_field(self, text: str) -> str:
        return "" if text == "=" else _b64text(_b64decode(text))

    def _auth_continue(self, line: str) -> None:
        if line == "*":
            self.state = State.COMMAND
            self._error(501, "5.7.0 Authentication cancelled")
            return
        if self._auth_mechanism == "PLAIN":
            self.state = State.COMMAND
            self._auth_plain(line)
        elif self._auth_username is None:
            self._auth_username = self._auth_field(line)
            self._reply(334, "UGFzc3dvcmQ6")
        else:
            self.state = State.COMMAND
            password = self._auth_field(line)
            self.state = State.WAIT_AUTH
            self._events.append(
                AuthAttempt(mechanism="LOGIN", username=self._auth_username, password=password)
            )

    def _auth_plain(self, text: str) -> None:
        fields = _b64text(_b64decode(text)).split("\0")
        if len(fields) != 3 or not fields[1]:
            self.state = State.COMMAND
            raise _Reject(501, "5.5.2 PLAIN needs authzid NUL user NUL password")
        authzid, username, password = fields
        self._auth_username = username
        self.state = State.WAIT_AUTH
        self._events.append(
            AuthAttempt(mechanism="PLAIN", username=username, password=password, authzid=authzid)
        )


_COMMANDS: Final = {
    "EHLO": SMTPServerConnection._cmd_ehlo,
    "HELO": SMTPServerConnection._cmd_helo,
    "MAIL": SMTPServerConnection._cmd_mail,
    "RCPT": SMTPServerConnection._cmd_rcpt,
    "DATA": SMTPServerConnection._cmd_data,
    "RSET": SMTPServerConnection._cmd_rset,
    "NOOP": SMTPServerConnection._cmd_noop,
    "QUIT": SMTPServerConnection._cmd_quit,
    "VRFY": SMTPServerConnection._cmd_vrfy,
    "EXPN": SMTPServerConnection._cmd_expn,
    "HELP": SMTPServerConnection._cmd_help,
    "STARTTLS": SMTPServerConnection._cmd_starttls,
    "AUTH": SMTPServerConnection._cmd_auth,
}
