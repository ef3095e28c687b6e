"""The WebSocket adapter end to end: a real server on 127.0.0.1, real clients.

Polite clients are the ``websockets`` library (an independent implementation, its
blocking client run in a thread); hostile or silent ones are a raw wsproto client.
"""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import trio
from csp_bus.adapters.websocket.protocol import WebSocketConfig
from csp_bus.adapters.websocket.server import WebSocketServerConfig
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    TextMessage,
)

from csp_bus.server import ServerConfig

WSServer = Any  # the conftest's server handle (test folders are not packages)
CHANNELS_ALL = ("websocket.connect", "websocket.receive", "websocket.disconnect")


async def in_thread(fn: Any, *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)


async def test_echo_and_the_message_formats(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    server: WSServer = await serve(nursery)

    def client() -> tuple[Any, ...]:
        with connect(server.url("/chat/caf%C3%A9/?room=1"), subprotocols=None) as ws:
            ws.send("hello")
            text = ws.recv(timeout=5)
            ws.send(b"\x00\xff")
            data = ws.recv(timeout=5)
            big = "x" * 200_000
            ws.send(big)
            echoed = ws.recv(timeout=5)
            return text, data, echoed == big

    assert await in_thread(client) == ("hello", b"\x00\xff", True)
    await server.wait_for("websocket.disconnect")
    [connect_message] = server.of("websocket.connect")
    assert connect_message["path"] == "/chat/café/"
    assert connect_message["query_string"] == b"room=1"
    assert connect_message["order"] == 0
    assert connect_message["scheme"] == "ws"
    assert connect_message["client"][0] == "127.0.0.1"
    assert connect_message["server"] == ["127.0.0.1", server.port]
    receives = server.of("websocket.receive")
    assert [m["order"] for m in receives] == [1, 2, 3]
    assert receives[0]["text"] == "hello" and receives[0]["bytes"] is None
    assert receives[1]["bytes"] == b"\x00\xff" and receives[1]["text"] is None
    [gone] = server.of("websocket.disconnect")
    assert gone == {
        "reply_channel": connect_message["reply_channel"],
        "path": "/chat/café/",
        "code": 1000,
        "order": 4,
    }
    with trio.fail_after(5):  # logged when the connection is over
        while '"GET /chat/caf%C3%A9/?room=1 HTTP/1.1" 101' not in server.log.getvalue():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_subprotocol_negotiation(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    async def app(server: WSServer, channel: str, message: dict[str, Any]) -> None:
        if channel == "websocket.connect":
            assert message["subprotocols"] == ["chat.v2", "chat.v1"]
            await server.layer.send(
                message["reply_channel"], {"accept": True, "subprotocol": "chat.v1"}
            )

    server = await serve(nursery, app)

    def client() -> str | None:
        with connect(server.url(), subprotocols=["chat.v2", "chat.v1"]) as ws:
            return ws.subprotocol

    assert await in_thread(client) == "chat.v1"


@pytest.mark.parametrize("answer", [{"accept": False}, {"close": True}])
async def test_reject_is_403(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any, answer: dict[str, Any]
) -> None:
    async def app(server: WSServer, channel: str, message: dict[str, Any]) -> None:
        if channel == "websocket.connect":
            await server.layer.send(message["reply_channel"], answer)

    server = await serve(nursery, app)

    def client() -> int:
        with pytest.raises(InvalidStatus) as info:
            connect(server.url())
        return info.value.response.status_code

    assert await in_thread(client) == 403
    await server.wait_for("websocket.disconnect")  # the app may clean up what connect did
    assert server.of("websocket.disconnect")[0]["code"] == 1006
    with trio.fail_after(5):  # logged when the connection is over
        while '"GET / HTTP/1.1" 403' not in server.log.getvalue():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_no_answer_is_504_after_the_handshake_timeout(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    async def silent(server: WSServer, channel: str, message: dict[str, Any]) -> None:
        pass

    server = await serve(nursery, silent, ws=WebSocketServerConfig(handshake_timeout=0.3))
    client, event = await raw.connect(server.port)
    assert isinstance(event, RejectConnection) and event.status_code == 504
    await client.aclose()


async def test_full_connect_channel_is_503(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    server = await serve(
        nursery,
        None,  # nobody reads websocket.connect
        layer_url="memory://?channel_capacity=websocket.connect:1",
        ws=WebSocketServerConfig(handshake_timeout=10),
    )
    first = await trio.open_tcp_stream("127.0.0.1", server.port)  # fills the channel
    waiting = raw(first)
    from wsproto.events import Request

    await waiting.send(Request(host="x", target="/"))
    with trio.fail_after(5):
        # the layer has no "queue reached N" event to wait on
        while (await server.layer.stats("websocket.connect"))["messages_pending"] < 1:  # noqa: ASYNC110
            await trio.sleep(0.01)
    client, event = await raw.connect(server.port)
    assert isinstance(event, RejectConnection) and event.status_code == 503
    await client.aclose()
    await waiting.aclose()
    with trio.fail_after(5):
        while (await server.layer.stats("websocket.disconnect"))["messages_pending"] < 1:  # noqa: ASYNC110
            await trio.sleep(0.01)
    # one disconnect: for the waiting handshake; none for the refused one, whose
    # websocket.connect never reached the bus
    await trio.sleep(0.2)
    assert (await server.layer.stats("websocket.disconnect"))["messages_pending"] == 1


async def test_app_close_codes_reach_the_client(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    async def app(server: WSServer, channel: str, message: dict[str, Any]) -> None:
        if channel == "websocket.connect":
            await server.layer.send(message["reply_channel"], {"text": "bye", "close": 4321})

    server = await serve(nursery, app)

    def client() -> tuple[str, int]:
        with connect(server.url()) as ws:
            text = ws.recv(timeout=5)
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=5)
            assert info.value.rcvd is not None
            return text, info.value.rcvd.code

    assert await in_thread(client) == ("bye", 4321)
    await server.wait_for("websocket.disconnect")
    assert server.of("websocket.disconnect")[0]["code"] == 4321


async def test_client_close_code_is_reported(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    server = await serve(nursery)

    def client() -> None:
        with connect(server.url()) as ws:
            ws.close(code=4002, reason="done")

    await in_thread(client)
    await server.wait_for("websocket.disconnect")
    assert server.of("websocket.disconnect")[0]["code"] == 4002


async def test_ping_timeout_drops_a_silent_peer(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    config = WebSocketServerConfig(protocol=WebSocketConfig(ping_interval=0.2, ping_timeout=0.3))
    server = await serve(nursery, ws=config)
    client, event = await raw.connect(server.port)
    assert isinstance(event, AcceptConnection)
    with trio.fail_after(3):
        events = await client.events(2)  # never answered: the ping, then the close
    assert isinstance(events[0], Ping)
    assert isinstance(events[1], CloseConnection) and events[1].code == 1011
    await client.wait_closed()
    await server.wait_for("websocket.disconnect")
    assert server.of("websocket.disconnect")[0]["code"] == 1006
    await client.aclose()


async def test_ping_answered_keeps_the_connection(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    config = WebSocketServerConfig(protocol=WebSocketConfig(ping_interval=0.1, ping_timeout=0.2))
    server = await serve(nursery, ws=config)

    def client() -> str:
        # websockets answers pings on its own; stay connected well past the timeout.
        with connect(server.url()) as ws:
            import time

            time.sleep(1.0)
            ws.send("still here")
            return str(ws.recv(timeout=5))

    assert await in_thread(client) == "still here"


async def test_oversized_message_is_closed_with_1009(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    config = WebSocketServerConfig(protocol=WebSocketConfig(max_message_size=1000))
    server = await serve(nursery, ws=config)

    def client() -> int:
        with connect(server.url(), compression=None) as ws:
            ws.send("x" * 1000)
            assert ws.recv(timeout=5) == "x" * 1000
            ws.send("x" * 1001)
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=5)
            assert info.value.rcvd is not None
            return info.value.rcvd.code

    assert await in_thread(client) == 1009
    await server.wait_for("websocket.disconnect")
    assert server.of("websocket.disconnect")[0]["code"] == 1009


async def test_compressed_oversized_message_is_closed_with_1009(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    config = WebSocketServerConfig(protocol=WebSocketConfig(max_message_size=10_000))
    server = await serve(nursery, ws=config)

    def client() -> int:
        with connect(server.url(), compression="deflate") as ws:
            ws.send(bytes(5_000_000))  # a few KiB on the wire
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=5)
            assert info.value.rcvd is not None
            return info.value.rcvd.code

    assert await in_thread(client) == 1009


async def test_invalid_utf8_is_closed_with_1007(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    server = await serve(nursery)
    client, event = await raw.connect(server.port)
    assert isinstance(event, AcceptConnection)
    mask = b"\x00\x00\x00\x00"
    await client.send_raw(bytes([0x81, 0x80 | 4]) + mask + b"ok\xc3\x28")
    [close] = await client.events(1)
    assert isinstance(close, CloseConnection) and close.code == 1007
    await client.wait_closed()
    await server.wait_for("websocket.disconnect")
    assert server.of("websocket.disconnect")[0]["code"] == 1007
    assert server.of("websocket.receive") == []
    await client.aclose()


async def test_protocol_error_is_closed_with_1002(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    server = await serve(nursery)
    client, _ = await raw.connect(server.port)
    await client.send_raw(bytes([0x83, 0x80]) + b"\x00\x00\x00\x00")  # reserved opcode
    [close] = await client.events(1)
    assert isinstance(close, CloseConnection) and close.code == 1002
    await client.wait_closed()
    await client.aclose()


async def test_cross_site_origin_is_refused(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    config = WebSocketServerConfig(
        protocol=WebSocketConfig(allowed_origins=("https://chat.example", "localhost:8000"))
    )
    server = await serve(nursery, ws=config)

    def client(origin: str) -> int:
        try:
            with connect(server.url(), origin=origin):  # type: ignore[arg-type]
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    assert await in_thread(client, "https://evil.example") == 403
    assert await in_thread(client, "https://chat.example") == 101
    assert await in_thread(client, "http://localhost:8000") == 101
    assert len(server.of("websocket.connect")) == 2  # the refused one never reached the bus


async def test_a_full_receive_channel_stops_reading_without_dropping(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    release = trio.Event()

    async def slow_app(server: WSServer, channel: str, message: dict[str, Any]) -> None:
        if channel == "websocket.receive" and message["order"] == 1:
            await release.wait()  # the application stalls: websocket.receive fills up
        await echo(server, channel, message)

    server = await serve(
        nursery,
        slow_app,
        layer_url="memory://?channel_capacity=websocket.receive:3",
        ws=WebSocketServerConfig(receive_timeout=30),
    )
    count = 300

    def client() -> list[str]:
        with connect(server.url(), compression=None) as ws:
            for index in range(count):
                ws.send(f"m{index}")
            return [str(ws.recv(timeout=10)) for _ in range(count)]

    async def unblock_later() -> None:
        with trio.fail_after(5):
            # the layer has no "queue reached N" event to wait on
            while (await server.layer.stats("websocket.receive"))["messages_pending"] < 3:  # noqa: ASYNC110
                await trio.sleep(0.01)
        await trio.sleep(0.2)  # full, and staying full: the server waits, not drops
        release.set()

    nursery.start_soon(unblock_later)
    echoed = await in_thread(client)
    assert echoed == [f"m{index}" for index in range(count)]
    stats = await server.layer.stats()
    assert stats["channel_full_count"] > 0  # it was full, and yet nothing was lost


async def test_a_receive_channel_full_for_too_long_closes_with_1013(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    async def stuck(server: WSServer, channel: str, message: dict[str, Any]) -> None:
        if channel == "websocket.connect":
            await server.layer.send(message["reply_channel"], {"accept": True})

    server = await serve(
        nursery,
        stuck,
        channels=("websocket.connect", "websocket.disconnect"),  # nobody reads receive
        layer_url="memory://?channel_capacity=websocket.receive:2",
        ws=WebSocketServerConfig(receive_timeout=0.3),
    )
    client, _ = await raw.connect(server.port)
    for index in range(3):
        await client.send(TextMessage(data=f"m{index}"))
    [close] = await client.events(1)
    assert isinstance(close, CloseConnection) and close.code == 1013
    await client.aclose()


async def test_a_client_that_does_not_read_is_closed_with_1008(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    chunk = bytes(64 * 1024)

    async def firehose(server: WSServer, channel: str, message: dict[str, Any]) -> None:
        if channel == "websocket.connect":
            await server.layer.send(message["reply_channel"], {"accept": True})
            for _ in range(1000):  # 64 MiB for a client that reads nothing
                try:
                    await server.layer.send_wait(
                        message["reply_channel"], {"bytes": chunk}, timeout=5
                    )
                except Exception:
                    return
                if server.of("websocket.disconnect"):
                    return

    server = await serve(
        nursery,
        None,
        ws=WebSocketServerConfig(max_send_buffer=256 * 1024, close_timeout=0.5),
    )

    async def consume() -> None:
        while True:
            channel, message = await server.layer.receive(
                "websocket.connect", "websocket.disconnect"
            )
            server.record(channel, message)
            if channel == "websocket.connect":
                nursery.start_soon(firehose, server, channel, message)

    nursery.start_soon(consume)
    client, event = await raw.connect(server.port)
    assert isinstance(event, AcceptConnection)
    await server.wait_for("websocket.disconnect", limit=20)
    assert server.of("websocket.disconnect")[0]["code"] == 1008
    await client.aclose()


async def test_shutdown_closes_with_1001(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    server = await serve(nursery)
    client, _ = await raw.connect(server.port)
    await client.send(TextMessage(data="hi"))
    [echo] = await client.events(1)
    assert echo == TextMessage(data="hi")
    server.runtime.shutdown()
    [close] = await client.events(1)
    assert isinstance(close, CloseConnection) and close.code == 1001
    await client.send(close.response())
    await client.wait_closed()
    await server.wait_for("websocket.disconnect")
    assert server.of("websocket.disconnect")[0]["code"] == 1001
    await client.aclose()


async def test_restart_closes_with_1012(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    server = await serve(nursery)
    client, _ = await raw.connect(server.port)
    server.runtime.extensions["websocket.shutdown_code"] = 1012
    server.runtime.shutdown()
    [close] = await client.events(1)
    assert isinstance(close, CloseConnection) and close.code == 1012
    await client.aclose()


async def test_connection_limit_is_503(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    server = await serve(nursery, ws=WebSocketServerConfig(max_connections=1))
    first, event = await raw.connect(server.port)
    assert isinstance(event, AcceptConnection)
    second, event = await raw.connect(server.port)
    assert isinstance(event, RejectConnection) and event.status_code == 503
    await second.aclose()
    await first.send(BytesMessage(data=b"still served"))
    [echo] = await first.events(1)
    assert echo == BytesMessage(data=b"still served")
    await first.aclose()


async def test_plain_http_is_404_with_websocket_alone(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    server = await serve(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    with trio.fail_after(5):
        data = await stream.receive_some(4096)
    assert data.startswith(b"HTTP/1.1 404")
    await stream.aclose()


async def test_frames_sent_right_after_the_request_are_not_lost(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    server = await serve(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    client = raw(stream)
    from wsproto.events import Request

    request = client.ws.send(Request(host="x", target="/"))
    frame = bytes([0x81, 0x80 | 5]) + b"\x00\x00\x00\x00" + b"early"
    await stream.send_all(request + frame)  # before the 101 came back
    events = await client.events(2)
    assert isinstance(events[0], AcceptConnection)
    assert events[1] == TextMessage(data="early")
    await stream.aclose()


def test_command_line_options_build_the_config() -> None:
    import argparse
    import math

    from csp_bus.adapters.websocket.server import WebSocketAdapter

    from csp_bus.errors import UsageError
    from csp_bus.server import ServerConfig

    adapter = WebSocketAdapter()
    parser = argparse.ArgumentParser()
    adapter.add_arguments(parser.add_argument_group("websocket"))
    args = parser.parse_args(
        [
            "--ws-max-message-size",
            "2M",
            "--ws-ping-interval",
            "off",
            "--allowed-origins",
            "https://a.example,*.b.example",
            "--allowed-origins",
            "localhost:8000",
            "--no-ws-compression",
            "--ws-max-connections",
            "7",
            "--ws-receive-timeout",
            "3",
        ]
    )
    config = adapter.configure(args, ServerConfig(root_path="/api"))
    assert config.protocol.max_message_size == 2 * 1024 * 1024
    assert config.protocol.ping_interval is None
    assert config.protocol.allowed_origins == ("https://a.example", "*.b.example", "localhost:8000")
    assert config.protocol.compression is False
    assert config.protocol.root_path == "/api"
    assert config.max_connections == 7
    assert config.receive_timeout == 3
    assert math.isclose(config.handshake_timeout, 5)
    defaults = adapter.configure(parser.parse_args([]), ServerConfig())
    assert defaults.protocol.allowed_origins is None
    assert defaults.protocol.ping_interval == 20
    with pytest.raises(UsageError):
        adapter.configure(parser.parse_args(["--ws-max-connections", "0"]), ServerConfig())


async def test_one_message_bigger_than_the_send_buffer_goes_through(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    config = WebSocketServerConfig(
        protocol=WebSocketConfig(max_message_size=900_000), max_send_buffer=64 * 1024
    )
    server = await serve(nursery, ws=config)

    def client() -> int:
        with connect(server.url(), compression=None, max_size=None) as ws:
            ws.send(b"x" * 800_000)
            return len(ws.recv(timeout=10))

    assert await in_thread(client) == 800_000


async def test_http_and_websocket_share_the_port(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    from csp_bus.adapters.http import HTTPConfig

    async def app(server: WSServer, channel: str, message: dict[str, Any]) -> None:
        if channel == "http.request":
            await server.layer.send(
                message["reply_channel"], {"status": 200, "headers": [], "content": b"plain"}
            )
        else:
            await echo(server, channel, message)

    server = await serve(nursery, app, http=HTTPConfig(), channels=("http.request", *CHANNELS_ALL))
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(b"GET /page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    received = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(4096):
            received += chunk
    await stream.aclose()
    assert received.startswith(b"HTTP/1.1 200") and received.endswith(b"plain")
    client, event = await raw.connect(server.port, "/ws/")
    assert isinstance(event, AcceptConnection)
    await client.send(TextMessage(data="same port"))
    assert await client.events(1) == [TextMessage(data="same port")]
    await client.aclose()


async def test_wss_echo_big_messages_and_close(
    serve: Any, nursery: trio.Nursery, self_signed_cert: tuple[str, str]
) -> None:
    # Over TLS the connection is read and written by helper tasks (the direct paths
    # need the plain socket): the same behaviour, big messages included.
    cert, key = self_signed_cert
    server: WSServer = await serve(
        nursery,
        server=ServerConfig(
            binds=(("127.0.0.1", 0),), certfile=str(cert), keyfile=str(key), graceful_timeout=5
        ),
    )
    context = ssl.create_default_context(cafile=str(cert))

    def client() -> tuple[Any, ...]:
        url = f"wss://127.0.0.1:{server.port}/tls"
        with connect(url, ssl=context, compression=None) as ws:
            ws.send("hello")
            text = ws.recv(timeout=5)
            big = b"y" * 500_000
            for _ in range(3):
                ws.send(big)
            echoed = [ws.recv(timeout=5) for _ in range(3)]
            ws.close(4001)
            return text, echoed == [big] * 3

    assert await in_thread(client) == ("hello", True)
    await server.wait_for("websocket.disconnect")
    assert server.of("websocket.connect")[0]["scheme"] == "wss"
    assert server.of("websocket.disconnect")[0]["code"] == 4001


async def test_ended_connections_are_not_kept_by_the_deadline_heap(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any
) -> None:
    # Deadlines (handshake, keep-alive) live in one heap per process; the entries of
    # connections that ended must not keep them in memory until their deadline passes.
    server = await serve(nursery)
    timekeeper = server.runtime.extensions["websocket.server"].timekeeper
    for _ in range(150):
        client, event = await raw.connect(server.port)
        assert isinstance(event, AcceptConnection)
        await client.send(CloseConnection(code=1000))
        await client.wait_closed()
        await client.aclose()
    await server.wait_for("websocket.disconnect", 150)
    client, _ = await raw.connect(server.port)  # one more entry: the heap is compacted
    assert len(timekeeper.heap) <= 2 * 1 + 64 + 1
    await client.aclose()


async def test_a_reply_that_breaks_the_glue_drops_only_its_connection(
    serve: Any, nursery: trio.Nursery, raw: Any, echo: Any, monkeypatch: Any
) -> None:
    # Replies are applied in the reply dispatcher's task: an unexpected error there
    # drops that one connection and the dispatcher goes on serving the others.
    from csp_bus.adapters.websocket import protocol

    original = protocol.WebSocketConnection.reply

    def reply(self: Any, message: dict[str, Any]) -> None:
        if message.get("text") == "boom":
            raise RuntimeError("a bug")
        original(self, message)

    monkeypatch.setattr(protocol.WebSocketConnection, "reply", reply)
    server = await serve(nursery)
    victim, _ = await raw.connect(server.port)
    other, _ = await raw.connect(server.port)
    await victim.send(TextMessage(data="boom"))
    await victim.wait_closed()
    await server.wait_for("websocket.disconnect")
    await other.send(TextMessage(data="still served"))
    [event] = await other.events(1)
    assert isinstance(event, TextMessage) and event.data == "still served"
    await victim.aclose()
    await other.aclose()
