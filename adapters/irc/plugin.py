"""``csp-bus serve --adapter irc``: the IRC client as a server-runtime adapter.

Options (all prefixed ``--irc-``) build one :class:`~.client.IrcConfig`; ``--irc-config
FILE`` reads a TOML file for several servers (its ``[[server]]`` tables), and the
command-line options add a server and override the file's top-level settings. See
``docs/irc.md``.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import fields
from typing import TYPE_CHECKING, Any, ClassVar

import trio

from csp_bus.errors import UsageError
from csp_bus.server.adapter import Adapter

from .client import IrcConfig, parse_server, run_irc, servers_from

if TYPE_CHECKING:
    from csp_bus.server.config import ServerConfig
    from csp_bus.server.runtime import ServerRuntime

__all__ = ["IrcAdapter", "adapter", "config_from_args", "load_config_file"]

#: CLI option -> IrcConfig field, for the top-level settings a file may also set.
_TUNABLES: dict[str, str] = {
    "irc_flood_burst": "flood_burst",
    "irc_flood_rate": "flood_rate",
    "irc_reconnect_min": "reconnect_min",
    "irc_reconnect_max": "reconnect_max",
    "irc_lag_interval": "lag_interval",
    "irc_lag_timeout": "lag_timeout",
    "irc_rejoin_delay": "rejoin_delay",
    "irc_quit_message": "quit_message",
}

SASL_PASSWORD_ENV = "CSP_BUS_IRC_SASL_PASSWORD"
PASSWORD_ENV = "CSP_BUS_IRC_PASSWORD"


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (text or "").split(",") if item.strip())


def load_config_file(path: str) -> dict[str, Any]:
    """Read a TOML config file: top-level IrcConfig fields plus ``[[server]]`` tables."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise UsageError(f"--irc-config {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--irc-config {path}: not valid TOML: {exc}") from exc
    known = {item.name for item in fields(IrcConfig)} - {"servers"}
    unknown = set(data) - known - {"server"}
    if unknown:
        raise UsageError(
            f"--irc-config {path}: unknown setting(s) {', '.join(sorted(unknown))}; "
            f"known: server (tables), {', '.join(sorted(known))}"
        )
    servers = data.get("server", [])
    if not isinstance(servers, list):
        raise UsageError(f"--irc-config {path}: 'server' must be [[server]] tables")
    return data


def _read_secret(path: str | None, env: str, what: str) -> str | None:
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as exc:
            raise UsageError(f"{what} file {path}: {exc.strerror or exc}") from exc
    return os.environ.get(env) or None


def config_from_args(args: argparse.Namespace) -> IrcConfig:
    """Build the frozen config from parsed ``serve`` arguments."""
    settings: dict[str, Any] = {}
    server_dicts: list[dict[str, Any]] = []
    if args.irc_config:
        data = load_config_file(args.irc_config)
        server_dicts.extend(data.pop("server", []))
        settings.update(data)
    for option, name in _TUNABLES.items():
        value = getattr(args, option, None)
        if value is not None:
            settings[name] = value
    if settings.get("rejoin_delay") is not None and settings["rejoin_delay"] < 0:
        settings["rejoin_delay"] = None  # a negative delay means: never rejoin
    if args.irc_server:
        if not args.irc_nick:
            raise UsageError("--irc-server needs --irc-nick NICK")
        sasl_password = None
        if args.irc_sasl_username:
            sasl_password = _read_secret(
                args.irc_sasl_password_file, SASL_PASSWORD_ENV, "--irc-sasl-password-file"
            )
            if sasl_password is None:
                raise UsageError(
                    "--irc-sasl-username needs a password: --irc-sasl-password-file FILE "
                    f"or the environment variable {SASL_PASSWORD_ENV}"
                )
        password = _read_secret(args.irc_password_file, PASSWORD_ENV, "--irc-password-file")
        for text in args.irc_server:
            host, port = parse_server(text)
            server_dicts.append(
                {
                    "host": host,
                    "port": port,
                    "tls": args.irc_tls,
                    "tls_verify": not args.irc_tls_insecure,
                    "tls_ca_file": args.irc_tls_ca_file,
                    "nick": args.irc_nick,
                    "alt_nicks": _split(args.irc_alt_nicks),
                    "channels": _split(args.irc_channels),
                    "username": args.irc_username,
                    "realname": args.irc_realname,
                    "password": password,
                    "sasl_username": args.irc_sasl_username,
                    "sasl_password": sasl_password,
                    "sasl_required": not args.irc_sasl_optional,
                }
            )
    if not server_dicts:
        raise UsageError(
            "the irc adapter needs a server: --irc-server HOST:PORT --irc-nick NICK "
            "[--irc-channels '#a,#b'], or --irc-config FILE"
        )
    try:
        return IrcConfig(servers=servers_from(server_dicts), **settings)
    except TypeError as exc:
        raise UsageError(f"irc adapter settings: {exc}") from exc


class IrcAdapter(Adapter):
    """IRC client connections: IRC traffic -> ``irc-client.*``; control on reply_channel."""

    name: ClassVar[str] = "irc"
    summary: ClassVar[str] = (
        "IRC client: connects out to IRC servers; irc-client.connect/join/receive/disconnect, "
        "control messages on each connection's reply_channel"
    )
    listener_protocol: ClassVar[str | None] = None

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        add = group.add_argument
        add(
            "--irc-server",
            action="append",
            default=[],
            metavar="HOST:PORT",
            help="IRC server to connect to (repeatable; port 6667 if omitted)",
        )
        add("--irc-tls", action="store_true", help="connect with TLS (usually port 6697)")
        add(
            "--irc-tls-insecure",
            action="store_true",
            help="do not verify the server's certificate (testing only)",
        )
        add("--irc-tls-ca-file", metavar="PEM", help="CA bundle to verify the server with")
        add("--irc-nick", metavar="NICK", help="the bot's nick")
        add(
            "--irc-alt-nicks",
            metavar="NICK,NICK",
            help="nicks to try when the nick is taken (then NICK_, NICK__, NICK1...)",
        )
        add(
            "--irc-channels",
            metavar="'#a,#b'",
            help="channels to join on connect (and rejoin); '#chan key' for a keyed channel",
        )
        add("--irc-username", default="cspbus", metavar="USER", help="USER name (default cspbus)")
        add(
            "--irc-realname",
            default="csp-bus IRC adapter",
            metavar="TEXT",
            help="real name (default: csp-bus IRC adapter)",
        )
        add(
            "--irc-password-file",
            metavar="FILE",
            help=f"server password (PASS) read from FILE (or ${PASSWORD_ENV})",
        )
        add("--irc-sasl-username", metavar="ACCOUNT", help="log in with SASL PLAIN as ACCOUNT")
        add(
            "--irc-sasl-password-file",
            metavar="FILE",
            help=f"SASL password read from FILE (or ${SASL_PASSWORD_ENV})",
        )
        add(
            "--irc-sasl-optional",
            action="store_true",
            help="go on unauthenticated if SASL fails (default: disconnect and retry)",
        )
        add(
            "--irc-flood-burst",
            type=int,
            metavar="LINES",
            help="flood control: lines sent at once before pacing (default 5)",
        )
        add(
            "--irc-flood-rate",
            type=float,
            metavar="LINES_PER_S",
            help="flood control: lines per second after the burst (default 0.5)",
        )
        add("--irc-reconnect-min", type=float, metavar="S", help="first reconnect delay (1)")
        add("--irc-reconnect-max", type=float, metavar="S", help="longest reconnect delay (120)")
        add("--irc-lag-interval", type=float, metavar="S", help="lag-check PING interval (60)")
        add(
            "--irc-lag-timeout",
            type=float,
            metavar="S",
            help="reconnect when a lag-check PING is unanswered this long (120)",
        )
        add(
            "--irc-rejoin-delay",
            type=float,
            metavar="S",
            help="rejoin this long after a kick (default 5; negative: never)",
        )
        add("--irc-quit-message", metavar="TEXT", help="QUIT reason on shutdown")
        add(
            "--irc-config",
            metavar="FILE",
            help="TOML file with [[server]] tables (host, port, tls, nick, channels, "
            "sasl_username, sasl_password, ...) and top-level settings",
        )

    def configure(self, args: argparse.Namespace, server: ServerConfig) -> IrcConfig:
        return config_from_args(args)

    async def run(
        self,
        runtime: ServerRuntime,
        config: Any,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            states = await nursery.start(run_irc, runtime.layer, config)
            runtime.extensions["irc.connections"] = states
            task_status.started()


adapter = IrcAdapter()
