"""Outbound SMTP end to end: email.send -> run_sender (smtplib) -> a real aiosmtpd relay.

aiosmtpd is asyncio-based: it runs in its own thread with its own event loop (its
``Controller``), never inside csp_bus.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from csp_bus.adapters.email.sender import RelayConfig, run_sender

from csp_bus import open_layer
from csp_bus.errors import UsageError
from csp_bus.layers.base import ChannelLayer

Relay = Any  # the relay fixtures' type lives in conftest.py


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


async def test_relay_down_is_temporary(
    layer: ChannelLayer, dead_relay: Relay, nursery: trio.Nursery
) -> None:
    dead = dead_relay
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
