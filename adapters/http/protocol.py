"""Sans-IO HTTP/1.1 server core: h11 events <-> csp-bus HTTP messages (DESIGN.md 4).

No sockets, no Trio: bytes go in with :meth:`HTTPServerProtocol.receive_data` (``b""``
for end of input), events come out of :meth:`~HTTPServerProtocol.next_event`, and the
``send_*`` methods return the bytes to write. The Trio glue (``server.py``) is one small
loop around it; the tests drive it directly.

Events, in order, for each request on a connection:

* :class:`RequestHead` -- method, target, headers; what an ``http.request`` needs;
* :class:`BodyData` (zero or more) -- request body bytes, de-chunked;
* :class:`BodyEnd` -- the request is complete;

and, between requests: :data:`NEED_DATA` (feed more bytes), :data:`PAUSED` (a pipelined
request waits until the current response is sent and :meth:`start_next_cycle` called),
:class:`ClientClosed` (end of input where a request may end).

Errors: a client breaking the protocol raises :class:`HTTPProtocolError` (a
``RemoteProtocolError``) whose ``status`` is the answer to give before closing:

=====  ================================================================================
400    malformed request line, headers or chunked framing; end of input mid-request
413    body larger than ``max_body_size`` (from Content-Length before reading it, or
       while reading a chunked body)
431    request head larger than ``max_header_size``
501    a Transfer-Encoding other than ``chunked`` (RFC 9112 6.1)
505    an HTTP version other than 1.0 or 1.1
=====  ================================================================================

Nothing else escapes :meth:`~HTTPServerProtocol.next_event`; the hypothesis tests hold
it to that for arbitrary bytes, whole or one byte at a time. A response the
*application* got wrong (a bad status, a header with a newline) raises
:class:`InvalidResponse` (a ``UsageError``: the glue answers 500 or aborts).

Where h11's defaults fall short of RFC 9112, this module fills in: every response has a
reason phrase (some load tools count ``HTTP/1.1 200 `` as an error), versions other than
1.0/1.1 get 505, and a request with both Content-Length and Transfer-Encoding is served
(chunked wins, RFC 9112 6.3) and the connection closed after the response (6.1).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import unquote

import h11

from csp_bus.errors import RemoteProtocolError, UsageError

__all__ = [
    "ERROR_STATUSES",
    "NEED_DATA",
    "PAUSED",
    "BodyData",
    "BodyEnd",
    "ClientClosed",
    "HTTPProtocolError",
    "HTTPServerProtocol",
    "InvalidResponse",
    "RequestHead",
    "reason_phrase",
    "request_message",
]

NEED_DATA: Final = h11.NEED_DATA
PAUSED: Final = h11.PAUSED

#: Every status :class:`HTTPProtocolError` may carry (the glue adds 408, 503, 504).
ERROR_STATUSES: Final = frozenset({400, 413, 431, 501, 505})

_SUPPORTED_VERSIONS: Final = frozenset({b"1.0", b"1.1"})

# RFC 9110 5.1 and 5.5, as h11 checks them (h11/_abnf.py): a token; a field value
# without NUL, CR, LF or leading/trailing whitespace.
_FIELD_NAME: Final = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_FIELD_VALUE: Final = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
# h11's request line and header line (h11/_abnf.py), for the fast request path, limited
# to HTTP/1.1; and where h11 finds the end of a head (h11/_receivebuffer.py).
_REQUEST_LINE: Final = re.compile(rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+) ([\x21-\x7e]+) HTTP/1\.1")
_HEADER_LINE: Final = re.compile(
    rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*((?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?)[ \t]*"
)
_HEAD_END: Final = re.compile(rb"\n\r?\n")
#: Request headers the fast request path leaves to h11 (a body, 100-continue, upgrades).
_H11_REQUEST_HEADERS: Final = frozenset(
    {b"content-length", b"transfer-encoding", b"expect", b"upgrade"}
)
#: Response headers that change framing or connection handling: h11 writes those.
_FRAMING_HEADERS: Final = frozenset(
    {b"content-length", b"transfer-encoding", b"connection", b"host"}
)


class HTTPProtocolError(RemoteProtocolError):
    """The client broke HTTP/1.1; answer ``status`` (also ``hint``) and close."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message, hint=status)
        self.status = status


class InvalidResponse(UsageError):
    """The application's response message cannot be sent (bad status or header)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestHead:
    """A request line and headers. ``headers`` names are lower-case bytes, in order."""

    method: str
    target: bytes
    http_version: str
    headers: list[tuple[bytes, bytes]]
    path: str
    query_string: bytes
    #: the ``Upgrade`` token (lower case) when ``Connection: upgrade`` asks for one
    upgrade: str | None
    #: Content-Length when given (``None``: chunked or no body)
    content_length: int | None
    chunked: bool


@dataclass(frozen=True, slots=True)
class BodyData:
    data: bytes


@dataclass(frozen=True, slots=True)
class BodyEnd:
    pass


@dataclass(frozen=True, slots=True)
class ClientClosed:
    """End of input with no request in progress."""


_BODY_END: Final = BodyEnd()
_CLIENT_CLOSED: Final = ClientClosed()

Event = RequestHead | BodyData | BodyEnd | ClientClosed | type[h11.NEED_DATA] | type[h11.PAUSED]

_CLASS_PHRASES: Final = {1: "Informational", 2: "Success", 3: "Redirect", 4: "Client Error"}
_PHRASES: dict[int, bytes] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
# RFC 9110 renamed a few (Python 3.11's http.HTTPStatus still has the RFC 7231 names).
_PHRASES.update(
    {
        413: b"Content Too Large",
        414: b"URI Too Long",
        416: b"Range Not Satisfiable",
        422: b"Unprocessable Content",
    }
)


def reason_phrase(status: int) -> bytes:
    """The RFC 9110 reason phrase, or a generic one for unregistered codes: never empty."""
    phrase = _PHRASES.get(status)
    if phrase is None:
        phrase = _CLASS_PHRASES.get(status // 100, "Server Error").encode("ascii")
    return phrase


def _split_target(target: bytes) -> tuple[str, bytes]:
    """``(percent-decoded path, raw query string)`` from a request target."""
    raw, _, query = target.partition(b"?")
    if not raw.startswith(b"/"):
        if raw == b"*":
            return "*", query
        # absolute-form (RFC 9112 3.2.2): scheme://authority/path
        scheme_end = raw.find(b"://")
        if scheme_end != -1:
            slash = raw.find(b"/", scheme_end + 3)
            raw = raw[slash:] if slash != -1 else b"/"
    text = raw.decode("latin-1")
    if "%" in text:
        text = unquote(text, encoding="utf-8", errors="replace")
    return text, query


class HTTPServerProtocol:
    """One server-side HTTP/1.x connection.

    ``max_header_size`` bounds the request head (431 beyond); ``max_body_size`` the
    request body (413 beyond; ``None``: unbounded).
    """

    def __init__(self, *, max_header_size: int = 16 * 1024, max_body_size: int | None = None):
        # Fast mode (see _fast_event): h11 has not seen this request cycle; the bytes
        # wait in _buf, and _conn is made (and fed them) only when needed (_h11()).
        self._fast = True
        self._buf = bytearray()
        #: the raw head of the request the fast path parsed in this cycle
        self._fast_head: bytes | None = None
        self._fast_end = False  # that request's BodyEnd is still to be returned
        self._conn: h11.Connection | None = None
        self.max_header_size = max_header_size
        self.max_body_size = max_body_size
        self._body_received = 0
        self._method = b""
        self._head: RequestHead | None = None
        self._must_close = False
        self._response_started = False
        self._response_done = False
        self._pushed_back: BodyData | None = None
        self._eof = False
        #: the current request lets the connection persist (HTTP/1.1 without close)
        self._request_keep_alive = False
        #: the current response was written without h11 (see :meth:`start_response`)
        self._bypassed = False

    # -- input ------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client; ``b""`` means the client closed its side."""
        if self._fast:
            if data:
                self._buf += data
                return
            self._h11()  # end of input: h11 tells what it means here
        if not data:
            self._eof = True
        try:
            self._h11().receive_data(data)
        except RuntimeError:
            # h11 refuses data after end of input; a well-behaved glue never does that.
            raise HTTPProtocolError("data received after end of input", 400) from None

    @property
    def buffered(self) -> int:
        """Bytes received but not parsed yet (pipelined requests)."""
        if self._fast:
            return len(self._buf)
        return len(self._h11().trailing_data[0])

    @property
    def trailing_data(self) -> bytes:
        """Unparsed bytes, e.g. the first frames after an Upgrade request."""
        if self._fast:
            return bytes(self._buf)
        return bytes(self._h11().trailing_data[0])

    def _h11(self) -> h11.Connection:
        """The h11 connection, in the state it would have had if it had parsed this
        cycle from the start: leaving fast mode, the request head the fast path parsed
        (if any) is replayed into a fresh connection, then the bytes after it."""
        conn = self._conn
        if not self._fast:
            assert conn is not None
            return conn
        conn = self._conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.max_header_size
        )
        self._fast = False
        if self._fast_head is not None:
            conn.receive_data(self._fast_head)
            conn.next_event()  # the Request (the fast path accepts only what h11 does)
            if not self._fast_end:
                conn.next_event()  # its EndOfMessage, already returned
        if self._buf:
            conn.receive_data(bytes(self._buf))
            self._buf = bytearray()
        return conn

    def _fast_event(self) -> Event | None:
        """The next event of a request cycle h11 has not seen, or ``None`` when h11
        must parse it: h11 costs several times what this does for the common request
        (one read holding a whole HTTP/1.1 head: no body, no 100-continue, no upgrade,
        CRLF line ends, no folded header lines). It uses h11's own grammar, so it
        accepts a subset of what h11 accepts, with the same result; anything else goes
        to h11 whole, which gives its answer or its error as before."""
        if self._fast_head is not None:
            if self._fast_end:
                self._fast_end = False
                return _BODY_END
            # h11 in state DONE: PAUSED with the next request waiting, else NEED_DATA
            return PAUSED if self._buf else NEED_DATA
        buf = self._buf
        if not buf:
            return NEED_DATA
        found = _HEAD_END.search(buf)
        if found is None or buf[0] in (13, 10):  # h11: an empty line before the request
            return None
        end = found.end()
        if buf[end - 4 : end] != b"\r\n\r\n":
            return None
        raw = bytes(buf[:end])
        lines = raw[:-4].split(b"\r\n")
        line = _REQUEST_LINE.fullmatch(lines[0])
        if line is None or line[1] == b"CONNECT":
            return None  # h11's error, or CONNECT: a protocol switch in h11
        headers = []
        hosts = 0
        for text in lines[1:]:
            field = _HEADER_LINE.fullmatch(text)
            if field is None:
                return None
            name = field[1].lower()
            if name in _H11_REQUEST_HEADERS:
                return None
            if name == b"connection" and b"close" in field[2].lower():
                return None  # h11's state after it is MUST_CLOSE, not DONE
            if name == b"host":
                hosts += 1
            headers.append((name, field[2]))
        if hosts != 1:
            return None  # h11's error (HTTP/1.1 needs exactly one Host)
        del buf[:end]
        self._fast_head = raw  # h11 would have taken the head before any error below
        self._fast_end = True
        return self._request_head(line[1], line[2], b"1.1", headers)

    @property
    def request(self) -> RequestHead | None:
        """The current request's head, once seen."""
        return self._head

    @property
    def waiting_for_100_continue(self) -> bool:
        # h11 clears its flag when it sends the response; one written without h11
        # (start_response's fast path) ends the wait too.
        if self._fast:
            return False  # the fast path leaves requests with Expect to h11
        return bool(self._h11().they_are_waiting_for_100_continue) and not self._response_started

    def next_event(self) -> Event:
        """The next event, or ``NEED_DATA``/``PAUSED``. Raises :class:`HTTPProtocolError`."""
        pushed = self._pushed_back
        if pushed is not None:
            self._pushed_back = None
            return pushed
        if self._fast:
            fast = self._fast_event()
            if fast is not None:
                return fast
        conn = self._h11()
        if conn.their_state is h11.IDLE and not self._eof and not conn.trailing_data[0]:
            # Between requests with nothing received: h11 would answer NEED_DATA after a
            # full parse attempt; this is the common case of an idle keep-alive connection.
            return NEED_DATA
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if exc.error_status_hint in ERROR_STATUSES else 400
            raise HTTPProtocolError(str(exc) or "malformed request", status) from exc
        kind: type = type(event)
        if kind is h11.Data:
            data = bytes(event.data)  # type: ignore[union-attr]
            self._body_received += len(data)
            if self.max_body_size is not None and self._body_received > self.max_body_size:
                raise HTTPProtocolError("request body too large", 413)
            return BodyData(data)
        if kind is h11.Request:
            request: h11.Request = event  # type: ignore[assignment]
            if request.http_version not in _SUPPORTED_VERSIONS:
                raise HTTPProtocolError(
                    f"HTTP/{request.http_version.decode('ascii', 'replace')} is not supported",
                    505,
                )
            # raw_items() is a plain list; iterating h11's Headers goes item by item
            # through the Sequence protocol. Names lower-cased as h11 does for its copy.
            return self._request_head(
                request.method,
                bytes(request.target),
                request.http_version,
                [(name.lower(), value) for name, value in request.headers.raw_items()],
            )
        if kind is h11.EndOfMessage:
            return _BODY_END
        if kind is h11.ConnectionClosed:
            return _CLIENT_CLOSED
        return event  # type: ignore[return-value]  # NEED_DATA or PAUSED

    def _request_head(
        self,
        method_bytes: bytes,
        target: bytes,
        http_version: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> RequestHead:
        # h11 bounds only an *incomplete* head; one that arrives whole in one read is
        # checked here, so the limit holds however the bytes were split.
        size = len(target)
        content_length: int | None = None
        chunked = False
        upgrade: str | None = None
        connection_upgrade = False
        connection_close = False
        upgrade_token: bytes | None = None
        for name, value in headers:
            size += len(name) + len(value) + 4
            if name == b"content-length":
                content_length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"connection":
                tokens = value.lower()
                connection_upgrade = connection_upgrade or b"upgrade" in tokens
                connection_close = connection_close or b"close" in tokens
            elif name == b"upgrade":
                upgrade_token = value
        if size > self.max_header_size:
            raise HTTPProtocolError("request head too large", 431)
        if chunked and content_length is not None:
            # RFC 9112 6.1: Transfer-Encoding wins; the connection must close afterwards.
            content_length = None
            self._must_close = True
        max_body = self.max_body_size
        if content_length is not None and max_body is not None and content_length > max_body:
            raise HTTPProtocolError("request body too large", 413)
        if connection_upgrade and upgrade_token:
            upgrade = upgrade_token.split(b",")[0].split(b"/")[0].strip().lower().decode("latin-1")
        path, query = _split_target(target)
        method = method_bytes.decode("ascii")
        self._method = method_bytes
        self._body_received = 0
        # What h11 decides for the request (h11._connection._keep_alive), conservatively:
        # "close" anywhere in a Connection header counts (the response then goes
        # through h11, which handles it exactly).
        self._request_keep_alive = http_version == b"1.1" and not connection_close
        self._head = RequestHead(
            method=method,
            target=target,
            http_version=http_version.decode("ascii"),
            headers=headers,
            path=path,
            query_string=query,
            upgrade=upgrade,
            content_length=content_length,
            chunked=chunked,
        )
        return self._head

    def push_back(self, data: bytes) -> None:
        """Return unconsumed body bytes: the next :meth:`next_event` yields them again
        (the glue splits the body into chunks of an exact size this way)."""
        if data:
            self._pushed_back = BodyData(data)

    # -- output -----------------------------------------------------------------------

    def send_continue(self) -> bytes:
        """``100 Continue`` if the client waits for it, else ``b""``."""
        if not self.waiting_for_100_continue:
            return b""
        return self._h11().send(
            h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
        )

    @property
    def response_started(self) -> bool:
        return self._response_started

    @property
    def response_done(self) -> bool:
        return self._response_done

    def start_response(
        self,
        status: Any,
        headers: Iterable[Sequence[Any]] = (),
        content: bytes = b"",
        more_content: bool = False,
        *,
        close: bool = False,
    ) -> bytes:
        """Bytes for a response head (plus ``content``; all of it unless
        ``more_content``). Without Content-Length, a complete response gets one and a
        streamed one is chunked (HTTP/1.1) or close-delimited (HTTP/1.0). ``close`` adds
        ``Connection: close``. Raises :class:`InvalidResponse`."""
        if type(status) is not int or not 200 <= status <= 999:
            raise InvalidResponse(f"response status must be an int 200..999, not {status!r}")
        if type(content) is not bytes:
            raise InvalidResponse(f"response content must be bytes, not {type(content).__name__}")
        if self._response_started:
            raise InvalidResponse("a response was already started for this request")
        try:
            pairs = [(_as_bytes(name), _as_bytes(value)) for name, value in headers]
        except (TypeError, ValueError) as exc:
            raise InvalidResponse(f"response headers must be [name, value] pairs: {exc}") from None
        if (
            not more_content
            and self._request_keep_alive
            and not self._must_close
            and status != 204
            and status != 304
            and self._method != b"HEAD"
            and self._awaits_response()
        ):
            data = self._complete_response(status, pairs, content, close)
            if data is not None:
                return data
        has_length = False
        for name, _ in pairs:
            lower = name.lower()
            if lower == b"content-length" or lower == b"transfer-encoding":
                has_length = True
        # RFC 9110 8.6: no Content-Length on 204; on 304 it would describe the GET.
        if not has_length and not more_content and status not in (204, 304):
            pairs.append((b"content-length", str(len(content)).encode("ascii")))
        if close or self._must_close:
            pairs.append((b"connection", b"close"))
        try:
            response = h11.Response(status_code=status, headers=pairs, reason=reason_phrase(status))
            data = self._h11().send(response)
        except h11.LocalProtocolError as exc:
            raise InvalidResponse(f"invalid response: {exc}") from exc
        self._response_started = True
        if content or not more_content:
            data += self.send_body(content, more_content)
        return data

    def _awaits_response(self) -> bool:
        """The whole request was received and no response started (h11: their state
        DONE, ours SEND_RESPONSE)."""
        if self._fast:
            return self._fast_head is not None and not self._fast_end
        conn = self._h11()
        return conn.our_state is h11.SEND_RESPONSE and conn.their_state is h11.DONE

    def _complete_response(
        self, status: int, pairs: list[tuple[bytes, bytes]], content: bytes, close: bool
    ) -> bytes | None:
        """A whole response to a keep-alive HTTP/1.1 request whose body was read,
        written without h11; ``None`` when h11 must write it (framing or connection
        headers from the application, or a header to reject).

        h11 makes each response three events, validates the headers twice (its
        header clean-up rebuilds the event) and runs its state machine for each: most
        of the server's per-request cost for a small response. Here the bytes are
        exactly what h11 writes for this case (the headers in order, then
        Content-Length, then ``Connection: close`` when ``close``) and the same checks
        apply; the next request gets a fresh h11 connection (:meth:`start_next_cycle`).
        """
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status))]
        for name, value in pairs:
            if name.lower() in _FRAMING_HEADERS:
                return None
            if _FIELD_NAME.fullmatch(name) is None or _FIELD_VALUE.fullmatch(value) is None:
                return None  # h11 raises the error
            head.append(b"%s: %s\r\n" % (name, value))
        head.append(b"content-length: %d\r\n" % len(content))
        if close:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        head.append(content)
        self._bypassed = True
        self._response_started = True
        self._response_done = True
        self._must_close = self._must_close or close
        return b"".join(head)

    def send_body(self, content: bytes, more_content: bool = False) -> bytes:
        """Bytes for a response body chunk (and the end of the response unless
        ``more_content``). A HEAD response drops the content."""
        if type(content) is not bytes:
            raise InvalidResponse(f"response content must be bytes, not {type(content).__name__}")
        if self._bypassed:
            raise InvalidResponse("the response was already sent")
        data = b""
        conn = self._h11()
        try:
            if content and self._method != b"HEAD":
                data = conn.send(h11.Data(data=content))
            if not more_content:
                data += conn.send(h11.EndOfMessage())
                self._response_done = True
        except h11.LocalProtocolError as exc:
            raise InvalidResponse(f"invalid response body: {exc}") from exc
        return data or b""

    def error_response(self, status: int, text: str | None = None) -> bytes:
        """A complete plain-text error response with ``Connection: close``, or ``b""``
        when a response already started (then the connection can only be aborted)."""
        if self._response_started:
            return b""
        conn = self._h11()
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return b""
        body = ((text or reason_phrase(status).decode("ascii")) + "\n").encode("utf-8")
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"connection", b"close"),
        ]
        try:
            data = conn.send(
                h11.Response(status_code=status, headers=headers, reason=reason_phrase(status))
            )
            if self._method != b"HEAD":
                data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return b""
        self._response_started = True
        self._response_done = True
        return data

    # -- connection reuse -------------------------------------------------------------

    @property
    def keep_alive(self) -> bool:
        """True when the connection can serve another request after this one."""
        if self._must_close or not self.request_complete:
            return False
        return self._bypassed or self._h11().our_state is h11.DONE

    @property
    def request_complete(self) -> bool:
        """The client has sent the whole current request."""
        if self._fast:
            return self._fast_head is not None and not self._fast_end
        return self._h11().their_state is h11.DONE

    def start_next_cycle(self) -> None:
        """Reset for the next request (only when :attr:`keep_alive`)."""
        if self._bypassed:
            # h11 did not see the response: the next request starts in fast mode (or,
            # after end of input, in a fresh h11 connection), with the bytes already
            # received after this request.
            if not self.keep_alive:
                raise h11.LocalProtocolError("not in a reusable state")
            if self._fast:
                self._fast_head = None
                self._fast_end = False
            else:
                pending = self._h11().trailing_data[0]
                if self._eof:
                    conn = self._conn = h11.Connection(
                        h11.SERVER, max_incomplete_event_size=self.max_header_size
                    )
                    if pending:
                        conn.receive_data(pending)
                    conn.receive_data(b"")
                else:
                    self._fast = True
                    self._fast_head = None
                    self._fast_end = False
                    self._conn = None
                    self._buf = bytearray(pending)
            self._bypassed = False
        else:
            self._h11().start_next_cycle()
        self._head = None
        self._method = b""
        self._request_keep_alive = False
        self._response_started = False
        self._response_done = False


def _as_bytes(value: Any) -> bytes:
    if type(value) is bytes:
        return value
    if type(value) is str:
        return value.encode("latin-1")
    raise TypeError(f"{value!r} is not bytes")


def request_message(
    head: RequestHead,
    *,
    reply_channel: str,
    scheme: str,
    client: tuple[str, int] | None,
    server: tuple[str, int] | None,
    root_path: str = "",
    body: bytes = b"",
    body_channel: str | None = None,
) -> dict[str, Any]:
    """The ``http.request`` message for ``head`` (DESIGN.md 4)."""
    message: dict[str, Any] = {
        "reply_channel": reply_channel,
        "http_version": head.http_version,
        "method": head.method,
        "scheme": scheme,
        "path": head.path,
        "query_string": head.query_string,
        "root_path": root_path,
        "headers": [[name, value] for name, value in head.headers],
        "body": body,
        "client": list(client) if client else None,
        "server": list(server) if server else None,
    }
    if body_channel is not None:
        message["body_channel"] = body_channel
    return message
