"""End to end: a real IRC server, the adapter, a worker running sync consumers, and a
raw-socket human (see conftest.py for the server and the human)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import pytest
import trio
from csp_bus.adapters.irc.client import IrcConfig, IrcServerConfig, run_irc

from csp_bus.layers import open_layer
from csp_bus.layers.base import ChannelLayer
from csp_bus.sync import SyncLayer, bind

LONG_TEXT = "".join(f"word{index:04d} " for index in range(400))[:2000]
assert len(LONG_TEXT) == 2000
INJECTION = "ok\r\nQUIT :pwned\r\nPRIVMSG #test :injected\nNICK hacked\x00"


class Recorder:
    """Bus messages seen by the consumers, for the test to wait on (thread-safe)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.token = trio.lowlevel.current_trio_token()
        self._changed = trio.Event()

    def add(self, channel: str, content: dict[str, Any]) -> None:
        # thread-safe hand-off to the Trio loop (consumers run in worker threads)
        self.token.run_sync_soon(self._add, channel, content)

    def _add(self, channel: str, content: dict[str, Any]) -> None:
        self.items.append((channel, content))
        self._changed.set()
        self._changed = trio.Event()

    def of(self, channel: str) -> list[dict[str, Any]]:
        return [content for name, content in self.items if name == channel]

    async def wait(
        self,
        channel: str,
        predicate: Callable[[dict[str, Any]], bool] = lambda m: True,
        count: int = 1,
        timeout: float = 10,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                found = [m for m in self.of(channel) if predicate(m)]
                if len(found) >= count:
                    return found[count - 1]
                await self._changed.wait()


Consumer = Callable[[SyncLayer, str, dict[str, Any]], None]


def bot_consumers(recorder: Recorder) -> dict[str, Consumer]:
    """The bot: plain sync consumers, one per channel, run in worker threads."""

    def record(bus: SyncLayer, channel: str, content: dict[str, Any]) -> None:
        recorder.add(channel, content)

    def on_receive(bus: SyncLayer, channel: str, content: dict[str, Any]) -> None:
        record(bus, channel, content)
        if content["type"] != "message":
            return
        sender = content["user"]["nick"]
        # A private message arrives with the bot's nick as channel: answer the sender.
        target = content["channel"] if content["channel"][0] in "#&" else sender
        body = content["body"]

        def reply(message: dict[str, Any]) -> None:
            bus.send(content["reply_channel"], message)

        if body == "!ping":
            reply({"type": "message", "channel": target, "body": f"pong {sender}"})
        elif body == "!long":
            reply({"type": "message", "channel": target, "body": LONG_TEXT})
        elif body == "!inject":
            reply({"type": "message", "channel": target, "body": INJECTION.replace("\x00", "")})
            reply({"type": "message", "channel": target, "body": INJECTION})  # NUL: refused
            reply({"type": "raw", "body": "PRIVMSG #test :x\r\nQUIT :pwned"})  # refused
            reply({"type": "notice", "channel": target, "body": "done"})

    return {
        "irc-client.connect": record,
        "irc-client.join": record,
        "irc-client.disconnect": record,
        "irc-client.receive": on_receive,
    }


async def small_worker(
    layer: ChannelLayer,
    consumers: dict[str, Consumer],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A worker in a few lines: receive, run the sync consumer in a thread with a
    blocking facade of this very layer (``csp_bus.sync.bind``)."""
    bus = bind(layer)
    task_status.started()
    while True:
        channel, content = await layer.receive(*consumers)
        await trio.to_thread.run_sync(consumers[channel], bus, channel, content)


def make_config(server: Any, **options: Any) -> IrcConfig:
    server_options = {
        key: options.pop(key) for key in ("nick", "channels", "alt_nicks") if key in options
    }
    server_options.setdefault("nick", "bot")
    server_options.setdefault("channels", ("#test",))
    defaults: dict[str, Any] = {
        "flood_burst": 10,
        "flood_rate": 20.0,
        "reconnect_min": 0.05,
        "reconnect_max": 0.5,
        "rejoin_delay": 0.2,
        "write_timeout": 2.0,
    }
    defaults.update(options)
    return IrcConfig(
        servers=(IrcServerConfig(host=server.host, port=server.port, **server_options),),
        **defaults,
    )


async def start_bot(
    nursery: trio.Nursery, layer: ChannelLayer, config: IrcConfig
) -> tuple[Recorder, Any, trio.CancelScope]:
    recorder = Recorder()
    await nursery.start(partial(small_worker, layer, bot_consumers(recorder)))
    scope = trio.CancelScope()

    async def irc(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await run_irc(layer, config, task_status=task_status)

    states = await nursery.start(irc)
    return recorder, states[0], scope


def joined_by(nick: str, channel: str = "#test") -> Callable[[list[bytes]], bool]:
    return lambda w: (
        len(w) > 2
        and w[1] == b"JOIN"
        and w[0].startswith(f":{nick}!".encode())
        and w[2].lstrip(b":") == channel.encode()
    )


async def test_bot_joins_answers_and_quits(irc_server: Any, humans: Any) -> None:
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        alice = await humans("alice")
        await alice.join("#test")
        recorder, state, scope = await start_bot(nursery, layer, make_config(irc_server))
        connect = await recorder.wait("irc-client.connect")
        assert connect["server"] == [irc_server.host, irc_server.port]
        assert connect["nickname"] == "bot"
        assert connect["reply_channel"] == state.reply_channel
        joined = await recorder.wait("irc-client.join")
        assert joined == {"reply_channel": state.reply_channel, "channel": "#test"}
        await alice.expect(joined_by("bot"))

        await alice.send("PRIVMSG #test :!ping")
        assert await alice.expect_privmsg("bot") == "pong alice"
        received = await recorder.wait("irc-client.receive", lambda m: m["body"] == "!ping")
        assert received["type"] == "message"
        assert received["channel"] == "#test"
        assert received["user"]["nick"] == "alice"
        assert received["user"]["host"]
        assert received["reply_channel"] == state.reply_channel

        await alice.send("PRIVMSG bot :!ping")  # private: channel is the bot's nick
        assert await alice.expect_privmsg("bot") == "pong alice"
        private = await recorder.wait("irc-client.receive", lambda m: m["channel"] == "bot")
        assert private["body"] == "!ping"

        await alice.send("PRIVMSG #test :\x01ACTION waves\x01", "TOPIC #test :fresh topic")
        action = await recorder.wait("irc-client.receive", lambda m: m["type"] == "action")
        assert action["body"] == "waves"
        topic = await recorder.wait("irc-client.receive", lambda m: m["type"] == "topic")
        assert topic["body"] == "fresh topic"

        scope.cancel()  # shutdown: the bot says QUIT
        quit_line = await alice.expect(lambda w: len(w) > 1 and w[1] == b"QUIT")
        assert quit_line.startswith(b":bot!")
        assert b"csp-bus shutting down" in quit_line  # ngircd adds quotes
        gone = await recorder.wait("irc-client.disconnect")
        assert gone["reply_channel"] == state.reply_channel
        nursery.cancel_scope.cancel()


async def test_long_reply_is_split_on_the_wire(irc_server: Any, humans: Any) -> None:
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        alice = await humans("alice")
        await alice.join("#test")
        await start_bot(nursery, layer, make_config(irc_server))
        await alice.expect(joined_by("bot"))
        await alice.send("PRIVMSG #test :!long")
        pieces = []
        while len(" ".join(pieces)) < len(LONG_TEXT):
            pieces.append(await alice.expect_privmsg("bot"))
        assert " ".join(pieces) == LONG_TEXT  # wrapped at spaces, each space dropped once
        assert len(pieces) >= 4
        relayed = [line for line in alice.seen if b" PRIVMSG #test :word" in line]
        assert all(len(line) + 2 <= 512 for line in relayed)
        nursery.cancel_scope.cancel()


async def test_nick_collision(irc_server: Any, humans: Any) -> None:
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        squatter = await humans("bot")  # the bot's nick is taken
        await squatter.join("#test")
        recorder, state, _ = await start_bot(
            nursery, layer, make_config(irc_server, alt_nicks=("bot2",))
        )
        connect = await recorder.wait("irc-client.connect")
        assert connect["nickname"] == "bot2"
        assert state.nick == "bot2"
        await squatter.expect(joined_by("bot2"))
        await squatter.send("PRIVMSG #test :!ping")
        assert await squatter.expect_privmsg("bot2") == "pong bot"
        nursery.cancel_scope.cancel()


async def test_survives_a_server_restart(irc_server: Any, humans: Any) -> None:
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        recorder, state, _ = await start_bot(nursery, layer, make_config(irc_server))
        await recorder.wait("irc-client.join")
        reply_channel = state.reply_channel

        await trio.to_thread.run_sync(irc_server.restart)
        gone = await recorder.wait("irc-client.disconnect")
        assert gone["reply_channel"] == reply_channel
        connect = await recorder.wait("irc-client.connect", count=2)
        assert connect["reply_channel"] == reply_channel  # stable across reconnects
        await recorder.wait("irc-client.join", count=2)
        assert state.connects == 2

        bob = await humans("bob")
        await bob.send("JOIN #test", "PRIVMSG #test :!ping")
        assert await bob.expect_privmsg("bot") == "pong bob"
        nursery.cancel_scope.cancel()


async def test_unreachable_server_is_retried_with_backoff(irc_server: Any) -> None:
    irc_server.stop()
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        recorder, state, _ = await start_bot(nursery, layer, make_config(irc_server))
        with trio.fail_after(10):
            while state.connect_failures < 3:  # a few refused attempts
                await state.changed.wait()
        assert state.connects == 0
        await trio.to_thread.run_sync(irc_server.start)
        await recorder.wait("irc-client.connect")
        await recorder.wait("irc-client.join")
        nursery.cancel_scope.cancel()


async def test_no_crlf_from_content_ever_reaches_the_wire(
    irc_server: Any, humans: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A recording proxy between the bot and the server keeps every byte the bot sent."""
    sent = bytearray()

    async def pipe(source: trio.SocketStream, sink: trio.SocketStream, record: bool) -> None:
        try:
            while data := await source.receive_some(65536):
                if record:
                    sent.extend(data)
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def proxy(client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream(irc_server.host, irc_server.port)
        async with client, upstream, trio.open_nursery() as pipes:
            pipes.start_soon(pipe, client, upstream, True)
            pipes.start_soon(pipe, upstream, client, False)

    caplog.set_level(logging.WARNING, logger="csp_bus.adapters.irc")
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, proxy, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]

        class Proxied:
            host = "127.0.0.1"

        Proxied.port = port  # type: ignore[attr-defined]
        alice = await humans("alice")
        await alice.join("#test")
        _, state, _ = await start_bot(nursery, layer, make_config(Proxied))
        await alice.expect(joined_by("bot"))
        await alice.send("PRIVMSG #test :!inject")
        texts = []
        while True:
            line = await alice.expect(lambda w: len(w) > 2 and w[0].startswith(b":bot!"))
            if b" NOTICE " in line:
                break
            texts.append(line.split(b" :", 1)[1].decode())
        assert texts == ["ok", "QUIT :pwned", "PRIVMSG #test :injected", "NICK hacked"]
        assert state.invalid_controls == 2
        assert "raw: character '\\r' at position 16" in caplog.text
        assert "body: character '\\x00'" in caplog.text
        assert not any(b" QUIT " in line and line.startswith(b":bot!") for line in alice.seen)

        lines = bytes(sent).split(b"\r\n")
        assert lines[-1] == b""
        for line in lines[:-1]:
            assert b"\r" not in line and b"\n" not in line and b"\x00" not in line
            assert len(line) + 2 <= 512
        commands = [line.split(b" ")[0] for line in lines[:-1]]
        assert b"QUIT" not in commands and b"NICK" in commands  # NICK only at registration
        assert commands.count(b"NICK") == 1
        nursery.cancel_scope.cancel()


async def test_kicked_bot_rejoins_after_the_delay(irc_server_with_kick: Any, humans: Any) -> None:
    irc_server = irc_server_with_kick
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        op = await humans("op")
        await op.send("JOIN #test")  # first in: channel operator
        await op.expect(lambda w: len(w) > 1 and w[1] == b"366")
        recorder, state, _ = await start_bot(nursery, layer, make_config(irc_server))
        await op.expect(joined_by("bot"))
        started = trio.current_time()
        await op.send("KICK #test bot :behave")
        kick = await recorder.wait("irc-client.receive", lambda m: m["type"] == "kick")
        assert kick["target"] == "bot" and kick["body"] == "behave"
        assert kick["user"]["nick"] == "op"
        await op.expect(joined_by("bot"))
        assert trio.current_time() - started >= 0.2
        await recorder.wait("irc-client.join", count=2)
        assert [c.lower() for c in state.channels] == ["#test"]
        nursery.cancel_scope.cancel()


async def test_other_users_traffic(irc_server: Any, humans: Any) -> None:
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        recorder, _, _ = await start_bot(nursery, layer, make_config(irc_server))
        await recorder.wait("irc-client.join")
        carol = await humans("carol")
        await carol.join("#test")
        # an old latin-1 client: not UTF-8, decoded as latin-1 rather than lost
        await carol.stream.send_all(b"PRIVMSG #test :caf\xe9 cr\xe8me\r\n")
        await carol.send("NICK carola", "PART #test :bye", "QUIT :gone")
        joined = await recorder.wait("irc-client.receive", lambda m: m["type"] == "join")
        assert joined["user"]["nick"] == "carol" and joined["channel"] == "#test"
        nick = await recorder.wait("irc-client.receive", lambda m: m["type"] == "nick")
        assert nick["body"] == "carola" and nick["channel"] is None
        latin = await recorder.wait("irc-client.receive", lambda m: m["type"] == "message")
        assert latin["body"] == "café crème"
        part = await recorder.wait("irc-client.receive", lambda m: m["type"] == "part")
        assert part["user"]["nick"] == "carola" and part["body"] == "bye"
        nursery.cancel_scope.cancel()


async def test_lag_is_measured(irc_server: Any) -> None:
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        config = make_config(irc_server, lag_interval=0.05, lag_timeout=5.0)
        recorder, state, _ = await start_bot(nursery, layer, config)
        await recorder.wait("irc-client.connect")
        with trio.fail_after(5):
            while state.lag is None:
                await state.changed.wait()
        assert 0 <= state.lag < 1
        nursery.cancel_scope.cancel()


async def test_tls(irc_tls_server: Any) -> None:
    server = irc_tls_server
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        config = make_config(server)
        tls_server = replace(config.servers[0], tls=True, tls_ca_file=server.ca_file)
        recorder, _, _ = await start_bot(nursery, layer, replace(config, servers=(tls_server,)))
        connect = await recorder.wait("irc-client.connect")
        assert connect["nickname"] == "bot"
        await recorder.wait("irc-client.join")
        nursery.cancel_scope.cancel()


async def test_tls_refuses_an_unknown_certificate(
    irc_tls_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = irc_tls_server
    caplog.set_level(logging.WARNING, logger="csp_bus.adapters.irc")
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        config = make_config(server)
        untrusted = replace(config.servers[0], tls=True)  # the system CAs: not ours
        _, state, _ = await start_bot(nursery, layer, replace(config, servers=(untrusted,)))
        with trio.fail_after(10):
            while state.connect_failures < 2:
                await state.changed.wait()
        assert state.connects == 0
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
        nursery.cancel_scope.cancel()


async def test_silent_server_is_left_by_lag_check_and_registration_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that accepts, registers the bot once, then never answers anything."""
    caplog.set_level(logging.WARNING, logger="csp_bus.adapters.irc")
    connections: list[bytes] = []
    third = trio.Event()

    async def silent(stream: trio.SocketStream) -> None:
        async with stream:
            connections.append(b"")
            if len(connections) == 3:
                third.set()
            if len(connections) == 1:
                await stream.send_all(b":silent 001 bot :Welcome\r\n")
            with trio.move_on_after(10):
                while data := await stream.receive_some(4096):
                    connections[-1] += data

    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))

        class Silent:
            host = "127.0.0.1"
            port = listeners[0].socket.getsockname()[1]

        config = make_config(
            Silent, lag_interval=0.1, lag_timeout=0.3, registration_timeout=0.3, reconnect_min=0.01
        )
        recorder, state, _ = await start_bot(nursery, layer, config)
        await recorder.wait("irc-client.connect")
        gone = await recorder.wait("irc-client.disconnect")
        assert gone["reason"] == "no PONG within 0.3 s (lag check)"
        with trio.fail_after(5):
            await third.wait()  # the second one timed out registering
        assert state.connects == 1
        assert b"PING csp-bus-lag-1\r\n" in connections[0]
        assert connections[0].count(b"PING") == 1  # one outstanding lag PING at a time
        assert b"QUIT" in connections[0]  # a lag timeout still says goodbye
        assert "not registered after 0.3 s; reconnecting" in caplog.text
        nursery.cancel_scope.cancel()


async def test_flood_control_paces_lines_on_the_wire() -> None:
    """burst 3, then 10 lines/s: 13 lines take about a second, measured at the server."""
    arrivals: list[float] = []
    all_in = trio.Event()

    async def server(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b":srv 001 bot :Welcome\r\n")
            buffer = b""
            while data := await stream.receive_some(4096):
                buffer += data
                *lines, buffer = buffer.split(b"\r\n")
                for line in lines:
                    if line.startswith(b"PRIVMSG"):
                        arrivals.append(trio.current_time())
                if len(arrivals) >= 13:
                    all_in.set()

    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, server, 0, host="127.0.0.1"))

        class Local:
            host = "127.0.0.1"
            port = listeners[0].socket.getsockname()[1]

        config = make_config(Local, channels=(), flood_burst=3, flood_rate=10.0)
        recorder, state, _ = await start_bot(nursery, layer, config)
        await recorder.wait("irc-client.connect")
        await trio.sleep(0.4)  # the bucket refills after registration
        body = "\n".join(f"line {index}" for index in range(13))
        await layer.send(state.reply_channel, {"type": "message", "channel": "#x", "body": body})
        with trio.fail_after(5):
            await all_in.wait()
        # The bucket makes the lower bound exact whatever the load: 10 lines after the
        # burst of 3 need 10 tokens, one per 0.1 s. The upper bound leaves room for a busy
        # machine.
        assert 0.9 <= arrivals[-1] - arrivals[0] < 3.0
        nursery.cancel_scope.cancel()


async def test_full_receive_channel_drops_events_and_never_stalls(
    irc_server: Any, humans: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Nobody consumes irc-client.receive (capacity 3): events beyond are dropped and
    logged, and the connection keeps working (it still sends what it is told)."""
    caplog.set_level(logging.WARNING, logger="csp_bus.adapters.irc")
    async with open_layer("memory://?capacity=3") as layer, trio.open_nursery() as nursery:
        alice = await humans("alice")
        await alice.join("#test")
        states = await nursery.start(run_irc, layer, make_config(irc_server))
        state = states[0]
        await alice.expect(joined_by("bot"))
        await alice.send(*(f"PRIVMSG #test :message {index}" for index in range(8)))
        with trio.fail_after(10):
            while state.dropped_events < 5:
                await state.changed.wait()
        assert (await layer.stats("irc-client.receive"))["messages_pending"] == 3
        assert "irc-client.receive is full; message event dropped" in caplog.text
        await layer.send(
            state.reply_channel, {"type": "message", "channel": "#test", "body": "alive"}
        )
        assert await alice.expect_privmsg("bot") == "alive"
        _, first = await layer.receive("irc-client.receive")
        assert first["body"] == "message 0"  # the oldest kept, FIFO
        nursery.cancel_scope.cancel()


async def test_several_connections_each_with_its_reply_channel(
    irc_server: Any, humans: Any
) -> None:
    """Two configured connections (here to the same server, as two nicks): each has its
    own reply_channel, and a control message goes out on its own connection only."""
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        alice = await humans("alice")
        await alice.join("#test")
        first = IrcServerConfig(
            host=irc_server.host, port=irc_server.port, nick="one", channels=("#test",)
        )
        second = replace(first, nick="two")
        config = replace(make_config(irc_server), servers=(first, second))
        recorder, _, _ = await start_bot(nursery, layer, config)
        connects = [await recorder.wait("irc-client.connect", count=n) for n in (1, 2)]
        channels = {c["nickname"]: c["reply_channel"] for c in connects}
        assert set(channels) == {"one", "two"}
        assert channels["one"] != channels["two"]
        await recorder.wait("irc-client.join", count=2)
        for nick in ("one", "two"):
            await layer.send(
                channels[nick], {"type": "message", "channel": "#test", "body": f"I am {nick}"}
            )
            assert await alice.expect_privmsg(nick) == f"I am {nick}"
        nursery.cancel_scope.cancel()
