"""examples/support_inbox end to end: smtplib -> email adapter -> worker consumer ->
chat room group + auto-reply -> aiosmtpd relay."""

from __future__ import annotations

import importlib.util
import json
import smtplib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio
from csp_bus.adapters.email import EmailConfig, SessionConfig, SMTPServerConfig, adapter
from csp_bus.adapters.email.sender import RelayConfig

from csp_bus import open_layer
from csp_bus.embedded import run_workers
from csp_bus.server import ServerConfig, run_server

EXAMPLE = Path(__file__).parents[2] / "examples" / "support_inbox" / "app.py"


@pytest.fixture(scope="module")
def app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("support_inbox_app", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_mail_reaches_the_room_and_is_answered(app: ModuleType, relay: Any) -> None:
    config = EmailConfig(
        server=SMTPServerConfig(
            binds=(("127.0.0.1", 0),),
            session=SessionConfig(accepted_domains={"example.com"}),
        ),
        relay=RelayConfig(host="127.0.0.1", port=relay.port, backoff=0.05),
    )
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        worker = await nursery.start(run_workers, layer, app.routes)
        runtime = await nursery.start(
            lambda task_status: run_server(
                layer,
                ServerConfig(binds=(), access_log=False),
                [(adapter, config)],
                task_status=task_status,
            )
        )
        ((host, port),) = runtime.extensions["email.smtp_addresses"]
        await layer.group_add("chat-support", "agent-screen")

        def send(raw: bytes, sender: str = "customer@example.org") -> None:
            with smtplib.SMTP(host, port) as client:
                client.sendmail(sender, ["support@example.com"], raw)

        await trio.to_thread.run_sync(
            send,
            b"From: Customer <customer@example.org>\r\nSubject: Where is my order?\r\n"
            b"Message-ID: <order-1@example.org>\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"\r\nOrder #1234 has not arrived.\r\n",
        )
        with trio.fail_after(10):
            _, posted = await layer.receive("agent-screen")
        entry = json.loads(posted["text"])
        assert entry["user"] == "mail from customer@example.org"
        assert entry["text"] == "Where is my order?\n\nOrder #1234 has not arrived."

        (reply,) = await trio.to_thread.run_sync(relay.handler.wait_for, 1)
        assert reply.mail_from == "<>"  # null return path: bounces are not answered
        assert reply.rcpt_tos == ["customer@example.org"]
        assert b"Subject: Re: Where is my order?" in reply.content
        assert b"In-Reply-To: <order-1@example.org>" in reply.content
        assert b"Auto-Submitted: auto-replied" in reply.content

        # A mailing-list mail is shown to the agents but never auto-answered (RFC 3834).
        await trio.to_thread.run_sync(
            send, b"Subject: Newsletter\r\nList-Id: <news.example.net>\r\n\r\nNews.\r\n"
        )
        with trio.fail_after(10):
            _, posted = await layer.receive("agent-screen")
        assert json.loads(posted["text"])["text"].startswith("Newsletter")
        # ... and a later personal mail is: of the two replies, none is to the newsletter.
        await trio.to_thread.run_sync(send, b"Subject: Thanks\r\n\r\nIt came.\r\n")
        replies = await trio.to_thread.run_sync(relay.handler.wait_for, 2)
        subjects = sorted(r.content.split(b"Subject: ")[1].split(b"\r\n")[0] for r in replies)
        assert subjects == [b"Re: Thanks", b"Re: Where is my order?"]

        worker.stop()
        runtime.shutdown()
        nursery.cancel_scope.cancel()


def test_plain_text_and_auto_reply_rules(app: ModuleType) -> None:
    content = {
        "content-type": "multipart/mixed",
        "parts": [
            {"content-type": "text/html", "body": b"<p>x</p>"},
            {"content-type": 'text/plain; charset="iso-8859-1"', "body": "Grüße".encode("latin-1")},
        ],
    }
    assert app.plain_text(content) == "Grüße"
    base = {"from": "a@example.org", "to": ["support@example.com"], "headers": {}}
    assert app.should_auto_reply(base)
    assert not app.should_auto_reply({**base, "from": None})
    assert not app.should_auto_reply({**base, "headers": {"auto-submitted": "auto-replied"}})
    assert not app.should_auto_reply({**base, "headers": {"precedence": "bulk"}})
    assert not app.should_auto_reply({**base, "from": "support@example.com"})


def test_the_readme_command_end_to_end(relay: Any) -> None:
    """The README's ``csp-bus serve`` line: a browser-like WebSocket client in the room
    sees the mail, the relay gets the auto-reply, the page is served."""
    import os
    import re
    import signal
    import subprocess
    import time
    import urllib.request

    from websockets.sync.client import connect

    env = {**os.environ}
    env.pop("CSP_BUS_LAYER", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "csp_bus",
            "serve",
            "--adapter",
            "http",
            "--adapter",
            "websocket",
            "--adapter",
            "email",
            "--app",
            "app:routes",
            "--bind",
            "127.0.0.1:0",
            "--no-access-log",
            "--smtp-bind",
            "127.0.0.1:0",
            "--smtp-domains",
            "example.com",
            "--smtp-relay",
            f"127.0.0.1:{relay.port}",
        ],
        cwd=EXAMPLE.parent,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        http = smtp = None
        deadline = time.monotonic() + 20
        while http is None or smtp is None:
            assert time.monotonic() < deadline, "the server did not start"
            line = process.stderr.readline()
            assert line, f"the server exited: {process.wait()}"
            if found := re.search(r"receiving mail on smtp://([\d.]+):(\d+)", line):
                smtp = (found.group(1), int(found.group(2)))
            if found := re.search(r"csp-bus serve \[\d+\]: .* on (http://\S+)", line):
                http = found.group(1).rstrip(",")
        with urllib.request.urlopen(http + "/", timeout=10) as response:
            assert b"Support inbox" in response.read()
        ws_url = http.replace("http://", "ws://") + "/chat/support/"
        with connect(ws_url, open_timeout=10) as room:
            with smtplib.SMTP(*smtp) as client:
                client.sendmail(
                    "customer@example.org",
                    ["support@example.com"],
                    b"Subject: Broken\r\nMessage-ID: <b1@example.org>\r\n\r\nIt broke.\r\n",
                )
            entry = json.loads(room.recv(timeout=10))
        assert entry == {
            "user": "mail from customer@example.org",
            "text": "Broken\n\nIt broke.",
        }
        (reply,) = relay.handler.wait_for(1)
        assert b"In-Reply-To: <b1@example.org>" in reply.content
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stderr:
            process.stderr.close()
