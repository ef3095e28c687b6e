"""Outbound SMTP end to end: email.send -> run_sender (smtplib) -> a real aiosmtpd relay.

aiosmtpd is asyncio-based: it runs in its own thread with its own event loop (its
``Controller``), never inside csp_bus.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from csp_bus.adapters.email.sender import RelayConfig, run_sender

from csp_bus import open_layer
from csp_bus.errors import UsageError
from csp_bus.layers.base import ChannelLayer


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
    lock: threading.Lock = field(default_factory=threading.Lock)

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
async def layer() -> AsyncIterator[ChannelLayer]:
    async with open_layer("memory://") as layer:
        yield layer


def relay_config(relay: Relay, **kw: Any) -> RelayConfig:
    kw.setdefault("backoff", 0.05)
    kw.setdefault("timeout", 5)
    return RelayConfig(host="127.0.0.1", port=relay.port, **kw)


MAIL = {
    "from": "Support <support@example.com>",
    "to": ["customer@example.org"],
    "subject": "Your ticket",
    "text": "We got it.\n",
    "reply_channel": "reports",
}


async def send_and_report(layer: ChannelLayer, message: dict) -> dict:
    await layer.send("email.send", message)
    with trio.fail_after(10):
        _, report = await layer.receive("reports")
    return report


async def test_delivers_through_the_relay(
    layer: ChannelLayer, relay: Relay, nursery: trio.Nursery
) -> None:
    await nursery.start(run_sender, layer, relay_config(relay))
    report = await send_and_report(layer, {**MAIL, "bcc": "audit@example.com"})
    assert report == {
        "status": "sent",
        "accepted": ["customer@example.org", "audit@example.com"],
        "refused": {},
        "attempts": 1,
        "error": None,
    }
    (got,) = relay.handler.received
    assert got.mail_from == "support@example.com"
    assert got.rcpt_tos == ["customer@example.org", "audit@example.com"]
    assert b"Subject: Your ticket" in got.content
    assert b"audit@example.com" not in got.content


async def test_relay_answers_451_first_then_accepts(
    layer: ChannelLayer, relay: Relay, nursery: trio.Nursery
) -> None:
    relay.handler.data_replies = ["451 4.3.0 Try again later"]
    await nursery.start(run_sender, layer, relay_config(relay))
    report = await send_and_report(layer, MAIL)
    assert report["status"] == "sent" and report["attempts"] == 2
    assert len(relay.handler.received) == 1


async def test_temporary_recipient_failure_is_retried_for_that_recipient_only(
    layer: ChannelLayer, relay: Relay, nursery: trio.Nursery
) -> None:
    relay.handler.rcpt_replies = {"busy@example.org": ["450 4.2.1 Mailbox busy"]}
    await nursery.start(run_sender, layer, relay_config(relay))
    report = await send_and_report(layer, {**MAIL, "to": ["a@example.org", "busy@example.org"]})
    assert report["status"] == "sent" and report["attempts"] == 2
    assert [r.rcpt_tos for r in relay.handler.received] == [
        ["a@example.org"],
        ["busy@example.org"],
    ]


async def test_permanent_failures_are_reported(
    layer: ChannelLayer, relay: Relay, nursery: trio.Nursery
) -> None:
    relay.handler.rcpt_replies = {"gone@example.org": ["550 5.1.1 No such user"]}
    await nursery.start(run_sender, layer, relay_config(relay))
    report = await send_and_report(layer, {**MAIL, "to": ["a@example.org", "gone@example.org"]})
    assert report["status"] == "partial" and report["attempts"] == 1
    assert report["accepted"] == ["a@example.org"]
    assert report["refused"] == {"gone@example.org": [550, "5.1.1 No such user"]}

    relay.handler.data_replies = ["554 5.7.1 Spam"]
    report = await send_and_report(layer, MAIL)
    assert report["status"] == "failed" and report["attempts"] == 1
    assert report["refused"]["customer@example.org"][0] == 554


async def test_gives_up_after_max_attempts(
    layer: ChannelLayer, relay: Relay, nursery: trio.Nursery
) -> None:
    relay.handler.data_replies = ["451 4.3.0 Later"] * 10
    await nursery.start(run_sender, layer, relay_config(relay, max_attempts=3))
    report = await send_and_report(layer, MAIL)
    assert report["status"] == "failed" and report["attempts"] == 3
    code, text = report["refused"]["customer@example.org"]
    assert code == 451 and "gave up after 3 attempts" in text
    assert relay.handler.received == []


async def test_relay_down_is_temporary(layer: ChannelLayer, nursery: trio.Nursery) -> None:
    dead = Relay(RelayHandler(), _free_port())
    await nursery.start(run_sender, layer, relay_config(dead, max_attempts=2))
    report = await send_and_report(layer, MAIL)
    assert report["status"] == "failed" and report["attempts"] == 2
    code, text = report["refused"]["customer@example.org"]
    assert code == 0 and "ConnectionRefusedError" in text


async def test_invalid_message_is_reported_and_never_sent(
    layer: ChannelLayer, relay: Relay, nursery: trio.Nursery
) -> None:
    await nursery.start(run_sender, layer, relay_config(relay))
    report = await send_and_report(layer, {**MAIL, "subject": "hi\r\nBcc: victim@example.net"})
    assert report["status"] == "invalid"
    assert "message['subject']" in report["error"] and "header injection" in report["error"]
    assert relay.handler.received == []


async def test_starttls_and_login(
    layer: ChannelLayer, tls_relay: Relay, nursery: trio.Nursery
) -> None:
    config = relay_config(
        tls_relay,
        starttls=True,
        cafile=tls_relay.cafile,
        username="mailer",
        password="relay-pass",
    )
    await nursery.start(run_sender, layer, config)
    report = await send_and_report(layer, MAIL)
    assert report["status"] == "sent"
    (got,) = tls_relay.handler.received
    assert got.tls and got.login == "mailer"


async def test_wrong_relay_password_is_permanent(
    layer: ChannelLayer, tls_relay: Relay, nursery: trio.Nursery
) -> None:
    config = relay_config(
        tls_relay, starttls=True, cafile=tls_relay.cafile, username="mailer", password="nope"
    )
    await nursery.start(run_sender, layer, config)
    report = await send_and_report(layer, MAIL)
    assert report["status"] == "failed" and report["attempts"] == 1
    assert report["refused"]["customer@example.org"][0] == 535


async def test_smtputf8_and_null_return_path(
    layer: ChannelLayer, relay: Relay, nursery: trio.Nursery
) -> None:
    await nursery.start(run_sender, layer, relay_config(relay))
    report = await send_and_report(
        layer,
        {
            **MAIL,
            "to": ["zoë@exämple.org"],
            "subject": "Grüße",
            "text": "Schöne Grüße\n",
            "return_path": None,
        },
    )
    assert report["status"] == "sent"
    (got,) = relay.handler.received
    assert got.smtputf8 and got.rcpt_tos == ["zoë@exämple.org"]
    assert got.mail_from == "<>", got.mail_from
    assert "Grüße".encode() in got.content


async def test_raw_message_is_sent_as_is(
    layer: ChannelLayer, relay: Relay, nursery: trio.Nursery
) -> None:
    raw = b"From: a@example.com\r\nSubject: raw\r\n\r\n.leading dot\r\nend\r\n"
    await nursery.start(run_sender, layer, relay_config(relay))
    report = await send_and_report(
        layer,
        {
            "from": "a@example.com",
            "to": "b@example.org",
            "message": raw,
            "reply_channel": "reports",
        },
    )
    assert report["status"] == "sent"
    assert relay.handler.received[0].content == raw


async def test_stopping_finishes_and_returns(layer: ChannelLayer, relay: Relay) -> None:
    stopping = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: run_sender(
                    layer, relay_config(relay), stopping=stopping, task_status=task_status
                )
            )
            report = await send_and_report(layer, MAIL)
            assert report["status"] == "sent"
            stopping.set()
    # run_sender returned on its own; a message sent now stays on the bus for the next one.
    await layer.send("email.send", MAIL)
    assert (await layer.stats("email.send"))["messages_pending"] == 1


def test_relay_config_errors() -> None:
    with pytest.raises(UsageError, match="clear text"):
        RelayConfig(host="h", username="u", password="p")
    with pytest.raises(UsageError, match="both"):
        RelayConfig(host="h", starttls=True, username="u")
    with pytest.raises(UsageError, match="not both"):
        RelayConfig(host="h", starttls=True, tls=True)
    with pytest.raises(UsageError, match="port"):
        RelayConfig(host="h", port=0)
    assert "relay-pass" not in repr(
        RelayConfig(host="h", starttls=True, username="u", password="relay-pass")
    )
