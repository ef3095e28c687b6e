"""``--adapter email``: options -> frozen config, and the adapter inside the server runtime."""

from __future__ import annotations

import argparse
import smtplib
from pathlib import Path
from typing import Any

import pytest
import trio
from csp_bus.adapters.email import EmailConfig, adapter
from csp_bus.adapters.email.adapter import load_auth_file, parse_host_port

from csp_bus import open_layer
from csp_bus.errors import UsageError
from csp_bus.server import ServerConfig, load_adapter, run_server


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    adapter.add_arguments(parser.add_argument_group("email"))
    return parser.parse_args(argv)


def configure(*argv: str) -> EmailConfig:
    return adapter.configure(parse(*argv), ServerConfig(binds=()))


def test_entry_point_finds_the_adapter() -> None:
    assert load_adapter("email") is adapter
    assert adapter.listener_protocol is None  # own listeners: --smtp-bind


def test_options_build_the_config(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("# agents\nalice:s3cret\n")
    (tmp_path / "relay-pass").write_text("relay-secret\n")
    config = configure(
        "--smtp-bind", "127.0.0.1:2525",
        "--smtp-bind", "[::1]:2526",
        "--smtp-domains", "example.com, example.org",
        "--smtp-domains", "example.net",
        "--smtp-hostname", "mx.example.com",
        "--smtp-max-size", "20000",
        "--smtp-auth-file", str(users),
        "--smtp-relay", "smtp.example.net:587",
        "--smtp-relay-starttls",
        "--smtp-relay-user", "mailer",
        "--smtp-relay-password-file", str(tmp_path / "relay-pass"),
    )  # fmt: skip
    server = config.server
    assert server is not None and config.relay is not None
    assert server.binds == (("127.0.0.1", 2525), ("::1", 2526))
    assert server.session.accepted_domains == {"example.com", "example.org", "example.net"}
    assert server.session.max_message_size == 20000
    assert server.session.auth and server.authenticator is not None
    assert server.authenticator("alice", "s3cret") and not server.authenticator("alice", "x")
    assert not server.authenticator("bob", "s3cret")
    assert (config.relay.host, config.relay.port) == ("smtp.example.net", 587)
    assert config.relay.password == "relay-secret" and config.relay.starttls


def test_relay_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSP_BUS_SMTP_RELAY_PASSWORD", "from-env")
    config = configure(
        "--smtp-relay", "relay:25", "--smtp-relay-starttls", "--smtp-relay-user", "u"
    )
    assert config.server is None and config.relay is not None
    assert config.relay.password == "from-env"


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        ((), "needs --smtp-bind"),
        (("--smtp-domains", "example.com"), "needs --smtp-bind"),
        (("--smtp-bind", "127.0.0.1:25"), "domains"),
        (("--smtp-bind", "127.0.0.1:x", "--smtp-domains", "a.b"), "port"),
        (("--smtp-bind", "::1:25", "--smtp-domains", "a.b"), "brackets"),
        (("--smtp-bind", "h:25", "--smtp-domains", "a.b", "--smtp-certfile", "c"), "together"),
        (("--smtp-relay", "relay:25", "--smtp-relay-user", "u"), "password"),
        (("--smtp-bind", "h:25", "--smtp-domains", "a.b", "--smtp-hostname", "a b"), "hostname"),
    ],
)
def test_option_errors(argv: tuple[str, ...], match: str, monkeypatch: Any) -> None:
    monkeypatch.delenv("CSP_BUS_SMTP_RELAY_PASSWORD", raising=False)
    with pytest.raises(UsageError, match=match):
        configure(*argv)


def test_helpers(tmp_path: Path) -> None:
    assert parse_host_port("mail.example.com", "--x", 25) == ("mail.example.com", 25)
    assert parse_host_port(":2525", "--x", 25) == ("", 2525)
    with pytest.raises(UsageError, match="user:password"):
        (tmp_path / "bad").write_text("nocolon\n")
        load_auth_file(str(tmp_path / "bad"))
    with pytest.raises(UsageError, match="--smtp-auth-file"):
        load_auth_file(str(tmp_path / "missing"))


async def test_mail_in_reply_out_through_the_runtime(relay: Any) -> None:
    """smtplib -> SMTP server -> email.receive -> (a consumer) -> email.send -> relay."""
    config = configure(
        "--smtp-bind", "127.0.0.1:0",
        "--smtp-domains", "example.com",
        "--smtp-relay", f"127.0.0.1:{relay.port}",
    )  # fmt: skip
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        runtime = await nursery.start(
            lambda task_status: run_server(
                layer, ServerConfig(binds=(), access_log=False), [(adapter, config)],
                task_status=task_status,
            )
        )  # fmt: skip
        ((host, port),) = runtime.extensions["email.smtp_addresses"]

        def send() -> None:
            with smtplib.SMTP(host, port) as client:
                client.sendmail(
                    "customer@example.org",
                    ["support@example.com"],
                    b"Subject: Help\r\nMessage-ID: <q1@example.org>\r\n\r\nIt broke.\r\n",
                )

        await trio.to_thread.run_sync(send)
        with trio.fail_after(5):
            _, mail = await layer.receive("email.receive")
        await layer.send(
            "email.send",
            {
                "from": "support@example.com",
                "to": mail["from"],
                "subject": "Re: " + mail["headers"]["subject"],
                "text": "We are on it.\n",
                "headers": {"In-Reply-To": mail["headers"]["message-id"]},
                "reply_channel": "reports",
            },
        )
        with trio.fail_after(10):
            _, report = await layer.receive("reports")
        assert report["status"] == "sent"
        (got,) = relay.handler.received
        assert got.rcpt_tos == ["customer@example.org"]
        assert b"In-Reply-To: <q1@example.org>" in got.content
        runtime.shutdown()


def test_public_names_are_pinned() -> None:
    import csp_bus.adapters.email as package

    assert sorted(package.__all__) == sorted(
        [
            "RECEIVE_CHANNEL", "SEND_CHANNEL", "DeliveryReport", "EmailAdapter", "EmailConfig",
            "InvalidEmail", "OutgoingEmail", "RelayConfig", "SMTPServerConfig",
            "SMTPServerConnection", "SessionConfig", "adapter", "build_outgoing", "deliver",
            "receive_message", "run_sender", "serve_smtp",
        ]
    )  # fmt: skip
    for name in package.__all__:
        assert getattr(package, name) is not None
