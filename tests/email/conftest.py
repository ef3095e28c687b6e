"""Fixtures for the email adapter tests: a socket-free driver for the SMTP state machine,
and a real SMTP relay (aiosmtpd) for the sender."""

from __future__ import annotations

import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from csp_bus.adapters.email.protocol import (
    NEED_DATA,
    PAUSED,
    AuthAttempt,
    ConnectionClosed,
    Event,
    MessageReceived,
    SMTPServerConnection,
    StartTLS,
)

REPLY_LINE = re.compile(rb"([2-5][0-5][0-9])([ -])([^\r\n]*)\r\n")


def parse_replies(data: bytes) -> list[tuple[int, str]]:
    """Complete replies as ``(code, text of the last line)``; asserts the wire format."""
    replies = []
    position = 0
    while position < len(data):
        match = REPLY_LINE.match(data, position)
        assert match, f"malformed reply at {data[position : position + 80]!r}"
        position = match.end()
        if match.group(2) == b" ":
            replies.append((int(match.group(1)), match.group(3).decode("utf-8")))
    return replies


@dataclass
class Driver:
    conn: SMTPServerConnection
    decide: Callable[[MessageReceived], tuple[int, str] | None] = lambda event: None
    check_auth: Callable[[AuthAttempt], bool] = lambda event: event.password == "secret"
    events: list[Event] = field(default_factory=list)
    wire: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[tuple[int, str]]:
        """Feed ``data`` and return the replies it produced (greeting included the first
        time)."""
        self.conn.receive_data(data)
        start = len(self.wire)
        self.pump()
        return parse_replies(bytes(self.wire[start:]))

    def pump(self) -> None:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA or event is PAUSED:
                self.wire += self.conn.data_to_send()
                return
            self.events.append(event)  # type: ignore[arg-type]
            if isinstance(event, MessageReceived):
                verdict = self.decide(event)
                if verdict is None:
                    self.conn.accept_message()
                else:
                    self.conn.reject_message(*verdict)
            elif isinstance(event, StartTLS):
                self.wire += self.conn.data_to_send()
                self.conn.tls_started()
            elif isinstance(event, AuthAttempt):
                self.conn.auth_result(self.check_auth(event))
            elif isinstance(event, ConnectionClosed):
                self.wire += self.conn.data_to_send()
                return

    @property
    def messages(self) -> list[MessageReceived]:
        return [e for e in self.events if isinstance(e, MessageReceived)]

    @property
    def closed(self) -> bool:
        return any(isinstance(e, ConnectionClosed) for e in self.events)


@pytest.fixture(scope="session")
def smtp() -> type[Driver]:
    """The :class:`Driver` class (a fixture: importlib mode cannot import test helpers)."""
    return Driver


@pytest.fixture(scope="session")
def replies() -> Callable[[bytes], list[tuple[int, str]]]:
    return parse_replies


# --------------------------------------------------------------- a real SMTP relay
# aiosmtpd is asyncio-based: its Controller runs it in its own thread with its own event
# loop, never inside csp_bus.


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    smtputf8: bool
    tls: bool
    login: str | None


@dataclass
class RelayHandler:
    """The relay's behaviour, scripted by each test; what it accepted, in ``received``."""

    data_replies: list[str] = field(default_factory=list)  # consumed before accepting
    rcpt_replies: dict[str, list[str]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, timeout: float = 10) -> list[Received]:
        """Block (call it in a thread) until ``count`` messages were accepted."""
        with self.lock:
            assert self.lock.wait_for(lambda: len(self.received) >= count, timeout), (
                f"the relay got {len(self.received)} message(s), not {count}"
            )
            return list(self.received)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        with self.lock:
            script = self.rcpt_replies.get(address)
            if script:
                return script.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        with self.lock:
            if self.data_replies:
                return self.data_replies.pop(0)
            login = session.auth_data.login.decode() if session.auth_data else None
            self.received.append(
                Received(
                    mail_from=envelope.mail_from,
                    rcpt_tos=list(envelope.rcpt_tos),
                    content=envelope.original_content or envelope.content,
                    smtputf8=envelope.smtp_utf8,
                    tls=session.ssl is not None,
                    login=login,
                )
            )
            self.lock.notify_all()
        return "250 2.0.0 Accepted"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"mailer",
        b"relay-pass",
    )
    # handled=False: aiosmtpd answers 535 itself (the default leaves the reply to us).
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


@dataclass
class Relay:
    handler: RelayHandler
    port: int
    cafile: str | None = None


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, str]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    cafile = tmp_path_factory.mktemp("relay-ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    return context, str(cafile)


def _start_relay(**kwargs: Any) -> Iterator[Relay]:
    handler = RelayHandler()
    port = _free_port()
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, enable_SMTPUTF8=True, **kwargs
    )
    controller.start()
    try:
        yield Relay(handler, port)
    finally:
        controller.stop()


@pytest.fixture
def relay() -> Iterator[Relay]:
    yield from _start_relay()


@pytest.fixture
def tls_relay(tls_files: tuple[ssl.SSLContext, str]) -> Iterator[Relay]:
    context, cafile = tls_files
    for item in _start_relay(
        tls_context=context,
        require_starttls=True,
        authenticator=_authenticator,
        auth_required=True,
    ):
        item.cafile = cafile
        yield item


@pytest.fixture
def dead_relay() -> Relay:
    """A relay address nobody listens on."""
    return Relay(RelayHandler(), _free_port())
