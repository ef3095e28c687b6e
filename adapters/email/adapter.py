"""``csp-bus serve --adapter email``: the SMTP server and/or the relay sender.

The email adapter brings its own listeners (``--smtp-bind``) instead of the runtime's
``--bind``: SMTP and HTTP then run side by side in one process
(``--adapter http --adapter email``), each on its own port.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import socket
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import trio

from csp_bus.errors import UsageError
from csp_bus.server.adapter import Adapter
from csp_bus.server.config import ServerConfig
from csp_bus.server.runtime import ServerRuntime

from .protocol import SessionConfig
from .sender import RelayConfig, run_sender
from .server import SMTPServerConfig, serve_smtp

__all__ = ["EmailAdapter", "EmailConfig", "load_auth_file", "parse_host_port"]

logger = logging.getLogger("csp_bus.adapters.email")

PASSWORD_ENV = "CSP_BUS_SMTP_RELAY_PASSWORD"


@dataclass(frozen=True, kw_only=True)
class EmailConfig:
    """What ``--adapter email`` runs: an inbound server, an outbound sender, or both."""

    server: SMTPServerConfig | None = None
    relay: RelayConfig | None = None

    def __post_init__(self) -> None:
        if self.server is None and self.relay is None:
            raise UsageError(
                "--adapter email needs --smtp-bind and --smtp-domains (to receive mail) "
                "and/or --smtp-relay (to send mail)"
            )


def parse_host_port(text: str, option: str, default_port: int) -> tuple[str, int]:
    """``host:port``, ``[::1]:port``, ``host`` or ``:port`` -> ``(host, port)``."""
    value = text.strip()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise UsageError(f"{option} {text!r}: an IPv6 address looks like [::1]:25")
        port_text = rest[1:] or str(default_port)
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    elif ":" in value:
        raise UsageError(f"{option} {text!r}: put an IPv6 address in brackets, e.g. [::1]:25")
    else:
        host, port_text = value, str(default_port)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"{option} {text!r}: the port must be a number 0..65535")
    return host, int(port_text)


def load_auth_file(path: str) -> dict[str, str]:
    """``user:password`` lines (``#`` comments) -> dict. Keep the file private (0600)."""
    users: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--smtp-auth-file {path}: {exc.strerror or exc}") from exc
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user:
            raise UsageError(f"--smtp-auth-file {path}:{number}: expected user:password")
        users[user] = password
    if not users:
        raise UsageError(f"--smtp-auth-file {path}: no user:password line")
    return users


def _password_checker(users: dict[str, str]) -> Any:
    def check(username: str, password: str) -> bool:
        expected = users.get(username)
        # Compare even for unknown users so timing does not tell which users exist.
        ok = hmac.compare_digest(
            (expected or "\0").encode("utf-8"), password.encode("utf-8", "surrogateescape")
        )
        return ok and expected is not None

    return check


def _default_hostname() -> str:
    name = socket.getfqdn()
    try:
        SessionConfig(hostname=name)
    except ValueError:
        return "localhost"
    return name


class EmailAdapter(Adapter):
    """SMTP in (``email.receive``) and SMTP out (``email.send``)."""

    name: ClassVar[str] = "email"
    summary: ClassVar[str] = "SMTP server -> email.receive; email.send -> SMTP relay"
    listener_protocol: ClassVar[str | None] = None  # own listeners: --smtp-bind

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        add = group.add_argument
        add(
            "--smtp-bind",
            action="append",
            metavar="HOST:PORT",
            help="receive mail on this address (repeatable), e.g. 0.0.0.0:25",
        )
        add(
            "--smtp-domains",
            action="append",
            metavar="DOMAIN[,DOMAIN...]",
            help="domains mail is accepted for; every other recipient gets 550 (no relaying)",
        )
        add("--smtp-hostname", metavar="NAME", help="name in the greeting (default: the FQDN)")
        add("--smtp-certfile", metavar="PEM", help="certificate for STARTTLS")
        add("--smtp-keyfile", metavar="PEM", help="private key for STARTTLS")
        add(
            "--smtp-auth-file",
            metavar="PATH",
            help="offer AUTH PLAIN/LOGIN (after STARTTLS) for the user:password lines in PATH",
        )
        add(
            "--smtp-max-size",
            type=int,
            metavar="BYTES",
            default=400 * 1024,
            help="largest message accepted, answered 552 beyond (default: 409600)",
        )
        add(
            "--smtp-max-recipients",
            type=int,
            metavar="N",
            default=100,
            help="recipients per message, answered 452 beyond (default: 100)",
        )
        add(
            "--smtp-command-timeout",
            type=float,
            metavar="SECONDS",
            default=300.0,
            help="time for each command (default: 300)",
        )
        add(
            "--smtp-data-timeout",
            type=float,
            metavar="SECONDS",
            default=600.0,
            help="time for the whole DATA phase (default: 600)",
        )
        add(
            "--smtp-max-connections",
            type=int,
            metavar="N",
            default=1000,
            help="simultaneous SMTP sessions, answered 421 beyond (default: 1000)",
        )
        add(
            "--smtp-bus-wait",
            type=float,
            metavar="SECONDS",
            default=1.0,
            help="wait this long for room on a full email.receive before answering 451",
        )
        add(
            "--smtp-relay",
            metavar="HOST:PORT",
            help="deliver email.send messages through this relay (smarthost)",
        )
        add("--smtp-relay-starttls", action="store_true", help="use STARTTLS with the relay")
        add("--smtp-relay-tls", action="store_true", help="implicit TLS with the relay (465)")
        add("--smtp-relay-cafile", metavar="PEM", help="CA bundle to verify the relay with")
        add("--smtp-relay-user", metavar="USER", help="log in to the relay as USER")
        add(
            "--smtp-relay-password-file",
            metavar="PATH",
            help=f"the relay password (first line of PATH; or set ${PASSWORD_ENV})",
        )
        add(
            "--smtp-send-concurrency",
            type=int,
            metavar="N",
            default=4,
            help="deliveries in flight at once (default: 4)",
        )
        add(
            "--smtp-send-attempts",
            type=int,
            metavar="N",
            default=5,
            help="tries per message on temporary failures (default: 5)",
        )

    def configure(self, args: argparse.Namespace, server: ServerConfig) -> EmailConfig:
        return EmailConfig(server=self._server_config(args), relay=self._relay_config(args))

    def _server_config(self, args: argparse.Namespace) -> SMTPServerConfig | None:
        binds = getattr(args, "smtp_bind", None)
        domain_args = getattr(args, "smtp_domains", None)
        if not binds:
            if domain_args:
                raise UsageError("--smtp-domains needs --smtp-bind HOST:PORT")
            return None
        domains = frozenset(
            d.strip() for item in domain_args or () for d in item.split(",") if d.strip()
        )
        authenticator = None
        if args.smtp_auth_file:
            authenticator = _password_checker(load_auth_file(args.smtp_auth_file))
        try:
            session = SessionConfig(
                hostname=args.smtp_hostname or _default_hostname(),
                accepted_domains=domains,
                max_message_size=args.smtp_max_size,
                max_recipients=args.smtp_max_recipients,
                auth=authenticator is not None,
            )
        except ValueError as exc:
            raise UsageError(f"--adapter email: {exc}") from exc
        return SMTPServerConfig(
            binds=tuple(parse_host_port(b, "--smtp-bind", 25) for b in binds),
            session=session,
            certfile=args.smtp_certfile,
            keyfile=args.smtp_keyfile,
            authenticator=authenticator,
            command_timeout=args.smtp_command_timeout,
            data_timeout=args.smtp_data_timeout,
            max_connections=args.smtp_max_connections,
            bus_wait=args.smtp_bus_wait,
        )

    def _relay_config(self, args: argparse.Namespace) -> RelayConfig | None:
        relay = getattr(args, "smtp_relay", None)
        if not relay:
            return None
        host, port = parse_host_port(relay, "--smtp-relay", 25)
        password = None
        if args.smtp_relay_user:
            if args.smtp_relay_password_file:
                try:
                    lines = Path(args.smtp_relay_password_file).read_text("utf-8").splitlines()
                except OSError as exc:
                    raise UsageError(f"--smtp-relay-password-file: {exc.strerror or exc}") from exc
                password = lines[0] if lines else ""
            else:
                password = os.environ.get(PASSWORD_ENV)
            if password is None:
                raise UsageError(
                    f"--smtp-relay-user needs --smtp-relay-password-file or ${PASSWORD_ENV}"
                )
        return RelayConfig(
            host=host,
            port=port,
            starttls=args.smtp_relay_starttls,
            tls=args.smtp_relay_tls,
            cafile=args.smtp_relay_cafile,
            username=args.smtp_relay_user,
            password=password,
            concurrency=args.smtp_send_concurrency,
            max_attempts=args.smtp_send_attempts,
        )

    async def run(
        self,
        runtime: ServerRuntime,
        config: EmailConfig,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            if config.server is not None:
                addresses = await nursery.start(
                    partial(
                        serve_smtp,
                        runtime.layer,
                        config.server,
                        stopping=runtime.stopping,
                        access_log=runtime.access_log,
                    )
                )
                runtime.extensions["email.smtp_addresses"] = addresses
                for host, port in addresses:
                    logger.info("receiving mail on smtp://%s:%d", host, port)
            if config.relay is not None:
                await nursery.start(
                    partial(run_sender, runtime.layer, config.relay, stopping=runtime.stopping)
                )
                logger.info(
                    "delivering email.send through %s:%d", config.relay.host, config.relay.port
                )
            task_status.started()


adapter = EmailAdapter()
