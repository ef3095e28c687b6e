"""Fixtures for the email adapter tests: a socket-free driver for the SMTP state machine."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
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
