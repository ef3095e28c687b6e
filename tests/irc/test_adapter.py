"""The ``irc`` adapter of ``csp-bus serve``: options, config file, and a real serve run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio
from csp_bus.adapters.irc.client import IrcConfig, IrcServerConfig, parse_server
from csp_bus.adapters.irc.plugin import config_from_args

from csp_bus.cli import build_parser
from csp_bus.errors import UsageError
from csp_bus.server.adapter import load_adapter

ROOT = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> IrcConfig:
    args = build_parser().parse_args(["serve", "--adapter", "irc", *argv])
    return config_from_args(args)


def test_entry_point_finds_the_adapter() -> None:
    adapter = load_adapter("irc")
    assert adapter.name == "irc"
    assert adapter.listener_protocol is None


def test_options_build_a_frozen_config(tmp_path: Path) -> None:
    secret = tmp_path / "sasl"
    secret.write_text("hunter2\n")
    config = parse(
        "--irc-server", "irc.example.org:6697",
        "--irc-server", "[::1]",
        "--irc-tls",
        "--irc-nick", "bot",
        "--irc-alt-nicks", "bot2, bot3",
        "--irc-channels", "#a, #b,#secret key",
        "--irc-sasl-username", "acct",
        "--irc-sasl-password-file", str(secret),
        "--irc-flood-burst", "3",
        "--irc-flood-rate", "1.5",
        "--irc-rejoin-delay", "-1",
    )  # fmt: skip
    first, second = config.servers
    assert (first.host, first.port, first.tls) == ("irc.example.org", 6697, True)
    assert (second.host, second.port) == ("::1", 6667)
    assert first.alt_nicks == ("bot2", "bot3")
    assert first.channels == ("#a", "#b", "#secret key")
    assert (first.sasl_username, first.sasl_password) == ("acct", "hunter2")
    assert (config.flood_burst, config.flood_rate) == (3, 1.5)
    assert config.rejoin_delay is None
    with pytest.raises(AttributeError):
        config.flood_rate = 2  # type: ignore[misc]


def test_config_file_with_several_servers(tmp_path: Path) -> None:
    path = tmp_path / "irc.toml"
    path.write_text(
        textwrap.dedent(
            """\
            flood_rate = 1.0
            lag_interval = 30

            [[server]]
            host = "irc.one.example"
            port = 6697
            tls = true
            nick = "bot"
            channels = ["#a", "#b"]

            [[server]]
            host = "irc.two.example:7000"
            nick = "otherbot"
            channels = "#c,#d"
            """
        )
    )
    config = parse("--irc-config", str(path), "--irc-flood-rate", "2")
    assert [s.host for s in config.servers] == ["irc.one.example", "irc.two.example"]
    assert config.servers[1].port == 7000
    assert config.servers[1].channels == ("#c", "#d")
    assert config.flood_rate == 2.0  # the command line wins
    assert config.lag_interval == 30


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        ((), "needs a server"),
        (("--irc-server", "h:1"), "needs --irc-nick"),
        (("--irc-server", "h:x", "--irc-nick", "b"), "HOST:PORT"),
        (("--irc-server", "h:1", "--irc-nick", "b\r\nQUIT"), "nick"),
        (("--irc-server", "h:1", "--irc-nick", "b", "--irc-channels", "#a\rQUIT"), "channels"),
        (("--irc-server", "h:1", "--irc-nick", "b", "--irc-sasl-username", "u"), "password"),
        (("--irc-server", "h:1", "--irc-nick", "b", "--irc-flood-rate", "0"), "flood"),
        (("--irc-config", "/nonexistent/irc.toml"), "irc.toml"),
        (("--irc-server", "h:1", "--irc-nick", "b", "--irc-tls-ca-file", "/no/ca.pem"), "CA file"),
    ],
)
def test_bad_options(argv: tuple[str, ...], match: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CSP_BUS_IRC_SASL_PASSWORD", raising=False)
    with pytest.raises(UsageError, match=match):
        parse(*argv)


def test_bad_config_file(tmp_path: Path) -> None:
    path = tmp_path / "irc.toml"
    path.write_text('flood = 1\n[[server]]\nhost = "h"\nnick = "b"\n')
    with pytest.raises(UsageError, match="unknown setting"):
        parse("--irc-config", str(path))
    path.write_text('[[server]]\nhost = "h"\nnick = "b"\nport_number = 1\n')
    with pytest.raises(UsageError, match="unknown key"):
        parse("--irc-config", str(path))
    path.write_text("[[server]\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        parse("--irc-config", str(path))


def test_parse_server_and_backoff() -> None:
    assert parse_server("irc.libera.chat:6697") == ("irc.libera.chat", 6697)
    assert parse_server("localhost") == ("localhost", 6667)
    assert parse_server("[::1]:7000") == ("::1", 7000)
    config = IrcConfig(
        servers=(IrcServerConfig(host="h", nick="b"),), reconnect_min=1, reconnect_max=60
    )
    import random

    rng = random.Random(7)
    delays = [config.backoff(attempt, rng) for attempt in range(10)]
    for attempt, delay in enumerate(delays):
        ceiling = min(60, 2**attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered


async def test_csp_bus_serve_runs_a_bot(irc_server: Any, humans: Any, tmp_path: Path) -> None:
    """``csp-bus serve --adapter irc --app ...`` as a real process, stopped by SIGTERM."""
    pytest.importorskip("csp_bus.embedded", reason="--app needs the embedded workers")
    # The bot is the one docs/irc.md shows, taken from the page: the docs stay runnable.
    docs = (ROOT / "docs" / "irc.md").read_text()
    bot_code = docs.split("`bot.py`, the whole bot:", 1)[1].split("```python\n", 1)[1]
    (tmp_path / "ircbot_app.py").write_text(bot_code.split("```", 1)[0])
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    env.pop("CSP_BUS_LAYER", None)
    alice = await humans("alice")
    await alice.join("#test")
    process = await trio.lowlevel.open_process(
        [
            sys.executable, "-m", "csp_bus", "serve", "--adapter", "irc",
            "--app", "ircbot_app:routes",
            "--irc-server", f"{irc_server.host}:{irc_server.port}",
            "--irc-nick", "servebot", "--irc-channels", "#test",
            "--irc-quit-message", "bye for now",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        await alice.expect(
            lambda w: len(w) > 1 and w[0].startswith(b":servebot!") and w[1] == b"JOIN", 20
        )
        await alice.send("PRIVMSG #test :!hello")
        assert await alice.expect_privmsg("servebot") == "hello, alice!"
        await alice.send("PRIVMSG servebot :!hello")  # private: the answer comes privately
        line = await alice.expect(lambda w: len(w) > 2 and w[1] == b"PRIVMSG", 20)
        assert line.endswith(b" PRIVMSG alice :hello, alice!")
        process.send_signal(signal.SIGTERM)
        quit_line = await alice.expect(lambda w: len(w) > 1 and w[1] == b"QUIT", 20)
        assert quit_line.startswith(b":servebot!") and b"bye for now" in quit_line
        with trio.fail_after(20):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        assert process.stderr is not None
        await process.stderr.aclose()
