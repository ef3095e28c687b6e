"""The sans-IO WebSocket core, driven over a fake wire by a real wsproto client."""

from __future__ import annotations

import ast
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import h11
import pytest
from csp_bus.adapters.websocket import protocol
from csp_bus.adapters.websocket.protocol import (
    NEED_DATA,
    ConnectRequest,
    Disconnected,
    InvalidReply,
    MessageReceived,
    State,
    WebSocketConfig,
    WebSocketConnection,
    WebSocketProtocolError,
    accept_token,
    negotiate_deflate,
    origin_allowed,
)
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate as ClientDeflate

from csp_bus.errors import RemoteProtocolError

REPLY = "websocket.send.abc!c1"


def new_server(config: WebSocketConfig | None = None) -> WebSocketConnection:
    return WebSocketConnection(
        config or WebSocketConfig(),
        reply_channel=REPLY,
        client=("127.0.0.1", 50000),
        server=("127.0.0.1", 8000),
    )


def drain(server: WebSocketConnection) -> list[Any]:
    events = []
    while (event := server.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def to_client(server: WebSocketConnection, client: WSConnection) -> list[Any]:
    client.receive_data(server.data_to_send())
    return list(client.events())


def open_pair(
    config: WebSocketConfig | None = None,
    *,
    target: str = "/chat/lobby/",
    subprotocols: tuple[str, ...] = (),
    deflate: ClientDeflate | None = None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[WSConnection, WebSocketConnection, ConnectRequest]:
    client = WSConnection(ConnectionType.CLIENT)
    server = new_server(config)
    server.receive_data(
        client.send(
            Request(
                host="chat.example",
                target=target,
                subprotocols=list(subprotocols),
                extensions=[deflate] if deflate else [],
                extra_headers=extra_headers or [],
            )
        )
    )
    event = server.next_event()
    assert isinstance(event, ConnectRequest)
    return client, server, event


def accepted_pair(
    config: WebSocketConfig | None = None, **kwargs: Any
) -> tuple[WSConnection, WebSocketConnection]:
    client, server, _ = open_pair(config, **kwargs)
    server.reply({"accept": True})
    [accept] = to_client(server, client)
    assert isinstance(accept, AcceptConnection)
    return client, server


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    """A client frame built by hand, for what wsproto's client refuses to send."""
    first = (0x80 if fin else 0) | rsv | opcode
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = bytes([first, 0x80 | length])
    elif length < 65536:
        header = bytes([first, 0x80 | 126]) + struct.pack("!H", length)
    else:
        header = bytes([first, 0x80 | 127]) + struct.pack("!Q", length)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + body


# ------------------------------------------------------------------------- the module


def test_protocol_module_never_imports_trio() -> None:
    tree = ast.parse(Path(protocol.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "trio" not in imported
    assert "anyio" not in imported and "asyncio" not in imported
    assert {"h11", "wsproto"} <= imported


def test_errors_are_remote_protocol_errors() -> None:
    assert issubclass(WebSocketProtocolError, RemoteProtocolError)


# -------------------------------------------------------------------------- handshake


def test_connect_message_follows_design_section_4() -> None:
    _, server, event = open_pair(
        target="/chat/caf%C3%A9/?room=1&x=%20",
        subprotocols=("chat.v2", "chat.v1"),
        extra_headers=[(b"Origin", b"https://chat.example"), (b"X-Thing", b"a")],
    )
    message = event.message
    assert message["reply_channel"] == REPLY
    assert message["order"] == 0
    assert message["path"] == "/chat/café/"
    assert message["query_string"] == b"room=1&x=%20"
    assert message["method"] == "GET"
    assert message["http_version"] == "1.1"
    assert message["scheme"] == "ws"
    assert message["root_path"] == ""
    assert message["client"] == ["127.0.0.1", 50000]
    assert message["server"] == ["127.0.0.1", 8000]
    assert message["subprotocols"] == ["chat.v2", "chat.v1"]
    assert [b"origin", b"https://chat.example"] in message["headers"]
    assert [b"x-thing", b"a"] in message["headers"]
    assert all(name == name.lower() for name, _ in message["headers"])
    assert event.origin == "https://chat.example"
    assert server.state is State.CONNECTING
    assert server.data_to_send() == b""  # nothing answered before the application


def test_accept_with_subprotocol() -> None:
    client, server, _ = open_pair(subprotocols=("chat.v2", "chat.v1"))
    server.reply({"accept": True, "subprotocol": "chat.v1"})
    [accept] = to_client(server, client)
    assert isinstance(accept, AcceptConnection)
    assert accept.subprotocol == "chat.v1"
    assert server.state is State.OPEN


def test_unoffered_subprotocol_is_an_invalid_reply() -> None:
    _, server, _ = open_pair(subprotocols=("chat.v2",))
    with pytest.raises(InvalidReply, match="not offered"):
        server.reply({"accept": True, "subprotocol": "other"})
    assert server.state is State.CONNECTING
    assert server.data_to_send() == b""


@pytest.mark.parametrize("reply", [{"accept": False}, {"close": True}, {"close": 4000}])
def test_reject_is_http_403_and_owes_a_disconnect(reply: dict[str, Any]) -> None:
    client, server, _ = open_pair()
    server.reply(reply)
    events = to_client(server, client)
    assert isinstance(events[0], RejectConnection)
    assert events[0].status_code == 403
    assert server.state is State.CLOSED
    assert server.rejected_status == 403
    [gone] = drain(server)
    assert isinstance(gone, Disconnected)
    assert gone.message == {
        "reply_channel": REPLY,
        "path": "/chat/lobby/",
        "code": 1006,
        "order": 1,
    }


@pytest.mark.parametrize(("status", "reason"), [(503, "full"), (504, "no answer"), (500, "")])
def test_glue_rejections(status: int, reason: str) -> None:
    client, server, _ = open_pair()
    server.reject(status, reason)
    events = to_client(server, client)
    assert isinstance(events[0], RejectConnection)
    assert events[0].status_code == status
    body = b"".join(e.data for e in events if isinstance(e, RejectData))
    assert (reason.encode() or b"") in body
    assert isinstance(drain(server)[0], Disconnected)


def test_data_before_accept_implies_accept() -> None:
    client, server, _ = open_pair()
    server.reply({"text": "hello", "close": 4001})
    events = to_client(server, client)
    assert isinstance(events[0], AcceptConnection)
    assert events[1] == TextMessage(data="hello")
    assert isinstance(events[2], CloseConnection) and events[2].code == 4001
    assert server.state is State.CLOSING


def test_server_close_while_connecting_answers_503() -> None:
    client, server, _ = open_pair()
    server.close(1001)
    events = to_client(server, client)
    assert isinstance(events[0], RejectConnection) and events[0].status_code == 503


def test_eof_while_connecting_owes_a_disconnect() -> None:
    _, server, _ = open_pair()
    server.receive_data(b"")
    [gone] = drain(server)
    assert isinstance(gone, Disconnected) and gone.code == 1006
    server.reply({"accept": True})  # the application answers late: dropped
    assert server.data_to_send() == b""


def raw_request(*lines: bytes, method: bytes = b"GET", version: bytes = b"1.1") -> bytes:
    head = [method + b" /ws HTTP/" + version, b"Host: example", *lines]
    return b"\r\n".join(head) + b"\r\n\r\n"


GOOD = (
    b"Upgrade: websocket",
    b"Connection: keep-alive, Upgrade",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    b"Sec-WebSocket-Version: 13",
)


def test_raw_handshake_accept_token_from_rfc_6455() -> None:
    server = new_server()
    server.receive_data(raw_request(*GOOD))
    assert isinstance(server.next_event(), ConnectRequest)
    server.reply({"accept": True})
    response = server.data_to_send()
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    # RFC 6455 section 1.3's worked example.
    assert b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response
    assert accept_token(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (raw_request(*GOOD[1:]), 426),  # no Upgrade: a plain HTTP request
        (raw_request(GOOD[0], *GOOD[2:]), 400),  # no Connection: Upgrade
        (raw_request(*GOOD[:3], b"Sec-WebSocket-Version: 8"), 426),
        (raw_request(*GOOD[:3]), 426),  # no version
        (raw_request(*GOOD[:2], GOOD[3]), 400),  # no key
        (raw_request(*GOOD[:2], b"Sec-WebSocket-Key: c2hvcnQ=", GOOD[3]), 400),
        (raw_request(*GOOD[:2], b"Sec-WebSocket-Key: !!!!", GOOD[3]), 400),
        (raw_request(*GOOD, GOOD[2]), 400),  # two keys
        (raw_request(*GOOD, method=b"POST"), 405),
        (raw_request(*GOOD, version=b"1.0"), 400),
        (raw_request(*GOOD, b"Sec-WebSocket-Protocol: a b"), 400),
        (raw_request(*GOOD, b"Content-Length: 3") + b"abc", 400),
        (b"GET /ws HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /%ff HTTP/1.1\r\nHost: x\r\n" + b"\r\n".join(GOOD) + b"\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # TLS to a ws port
        (raw_request(*GOOD, b"X-Big: " + b"a" * 70000), 431),
    ],
)
def test_bad_handshakes_are_answered_with_the_documented_status(
    request_bytes: bytes, status: int
) -> None:
    server = new_server()
    server.receive_data(request_bytes)
    with pytest.raises(WebSocketProtocolError) as info:
        drain(server)
    assert info.value.hint == status
    assert server.data_to_send().startswith(b"HTTP/1.1 %d " % status)
    assert server.state is State.CLOSED
    assert not server.connect_sent
    assert drain(server) == []  # no websocket.disconnect without a websocket.connect


def test_version_mismatch_advertises_13() -> None:
    server = new_server()
    server.receive_data(raw_request(*GOOD[:3], b"Sec-WebSocket-Version: 8"))
    with pytest.raises(WebSocketProtocolError):
        server.next_event()
    assert b"sec-websocket-version: 13\r\n" in server.data_to_send()


def test_handshake_byte_by_byte() -> None:
    server = new_server()
    data = raw_request(*GOOD)
    for index in range(len(data)):
        server.receive_data(data[index : index + 1])
        event = server.next_event()
        if index < len(data) - 1:
            assert event is NEED_DATA
    assert isinstance(event, ConnectRequest)


def test_frames_sent_with_the_request_are_kept() -> None:
    client = WSConnection(ConnectionType.CLIENT)
    server = new_server()
    request = client.send(Request(host="x", target="/"))
    server.receive_data(request + masked_frame(0x1, b"early"))
    assert isinstance(server.next_event(), ConnectRequest)
    assert server.next_event() is NEED_DATA
    server.reply({"accept": True})
    [received] = drain(server)
    assert received.message["text"] == "early"


def test_handover_from_the_http_listener_with_trailing_bytes() -> None:
    """The HTTP adapter parsed the request with its own h11 connection."""
    client = WSConnection(ConnectionType.CLIENT)
    wire = client.send(Request(host="x", target="/ws/room?k=v")) + masked_frame(0x2, b"\x00\x01")
    http = h11.Connection(h11.SERVER)
    http.receive_data(wire)
    request = http.next_event()
    assert isinstance(request, h11.Request)
    assert isinstance(http.next_event(), h11.EndOfMessage)
    assert http.next_event() is h11.PAUSED
    trailing, eof = http.trailing_data
    server = new_server()
    server.receive_request(request, trailing, eof=eof)
    event = server.next_event()
    assert isinstance(event, ConnectRequest)
    assert event.message["query_string"] == b"k=v"
    server.reply({"accept": True})
    [accept] = to_client(server, client)
    assert isinstance(accept, AcceptConnection)
    [received] = drain(server)
    assert received.message["bytes"] == b"\x00\x01"


# ------------------------------------------------------------------------------- origin


@pytest.mark.parametrize(
    ("origin", "allowed", "ok"),
    [
        (None, ("https://a.example",), True),
        ("https://a.example", None, True),
        ("https://a.example", ("https://a.example",), True),
        ("https://a.example:443", ("https://a.example",), True),
        ("HTTPS://A.EXAMPLE", ("https://a.example",), True),
        ("http://a.example", ("https://a.example",), False),
        ("https://a.example:8443", ("https://a.example",), False),
        ("https://evil.example", ("https://a.example",), False),
        ("https://a.example", ("a.example",), True),
        ("http://a.example:8000", ("a.example:8000",), True),
        ("http://a.example:8001", ("a.example:8000",), False),
        ("https://x.a.example", ("*.a.example",), True),
        ("https://a.example", ("*.a.example",), True),
        ("https://xa.example", ("*.a.example",), False),
        ("https://a.example.evil", ("*.a.example",), False),
        ("null", ("https://a.example",), False),
        ("null", ("null",), True),
        ("garbage", ("https://a.example",), False),
        ("https://anything", ("*",), True),
        ("https://a.example", (), False),
    ],
)
def test_origin_allowed(origin: str | None, allowed: tuple[str, ...] | None, ok: bool) -> None:
    assert origin_allowed(origin, allowed) is ok


def test_cross_site_origin_is_refused_with_403_before_the_application() -> None:
    config = WebSocketConfig(allowed_origins=("https://chat.example",))
    server = new_server(config)
    server.receive_data(raw_request(*GOOD, b"Origin: https://evil.example"))
    with pytest.raises(WebSocketProtocolError) as info:
        server.next_event()
    assert info.value.hint == 403
    assert server.data_to_send().startswith(b"HTTP/1.1 403 Forbidden")
    assert not server.connect_sent
    server = new_server(config)
    server.receive_data(raw_request(*GOOD, b"Origin: https://chat.example"))
    assert isinstance(server.next_event(), ConnectRequest)


# ------------------------------------------------------------------------------- frames


def test_text_and_bytes_in_order() -> None:
    client, server = accepted_pair()
    server.receive_data(
        client.send(TextMessage(data="héllo"))
        + client.send(BytesMessage(data=b"\x00\xff"))
        + client.send(TextMessage(data=""))
    )
    events = drain(server)
    assert [e.message for e in events] == [
        {
            "reply_channel": REPLY,
            "path": "/chat/lobby/",
            "order": 1,
            "text": "héllo",
            "bytes": None,
        },
        {
            "reply_channel": REPLY,
            "path": "/chat/lobby/",
            "order": 2,
            "text": None,
            "bytes": b"\x00\xff",
        },
        {"reply_channel": REPLY, "path": "/chat/lobby/", "order": 3, "text": "", "bytes": None},
    ]
    server.reply({"text": "back"})
    server.reply({"bytes": b"raw"})
    assert to_client(server, client) == [TextMessage(data="back"), BytesMessage(data=b"raw")]


def test_fragmented_message_with_a_ping_between_fragments() -> None:
    client, server = accepted_pair()
    wire = (
        client.send(TextMessage(data="frag", message_finished=False))
        + client.send(Ping(payload=b"p"))
        + client.send(TextMessage(data="men", message_finished=False))
        + client.send(TextMessage(data="ted", message_finished=True))
    )
    server.receive_data(wire)
    [event] = drain(server)
    assert isinstance(event, MessageReceived)
    assert event.message["text"] == "fragmented"
    assert to_client(server, client) == [Pong(payload=b"p")]


def test_utf8_split_across_fragments() -> None:
    _client, server = accepted_pair()
    encoded = "€".encode()
    server.receive_data(masked_frame(0x1, encoded[:1], fin=False) + masked_frame(0x0, encoded[1:]))
    [event] = drain(server)
    assert event.message["text"] == "€"


def test_ping_is_answered_with_the_same_payload() -> None:
    client, server = accepted_pair()
    server.receive_data(client.send(Ping(payload=b"are you there")))
    assert drain(server) == []
    assert to_client(server, client) == [Pong(payload=b"are you there")]


def test_peer_close_is_echoed_and_reported() -> None:
    client, server = accepted_pair()
    server.receive_data(
        client.send(TextMessage(data="x")) + client.send(CloseConnection(code=4321))
    )
    received, gone = drain(server)
    assert isinstance(received, MessageReceived)
    assert isinstance(gone, Disconnected)
    assert gone.message == {
        "reply_channel": REPLY,
        "path": "/chat/lobby/",
        "code": 4321,
        "order": 2,
    }
    assert server.state is State.CLOSED
    [echo] = to_client(server, client)
    assert isinstance(echo, CloseConnection) and echo.code == 4321


def test_peer_close_without_code_is_1005() -> None:
    _client, server = accepted_pair()
    server.receive_data(masked_frame(0x8, b""))
    [gone] = drain(server)
    assert gone.code == 1005
    assert server.data_to_send() == b"\x88\x00"  # an empty Close back


@pytest.mark.parametrize(("code", "expected"), [(1001, 1001), (1012, 1012)])
def test_server_close_for_shutdown_and_restart(code: int, expected: int) -> None:
    client, server = accepted_pair()
    server.close(code)
    [close] = to_client(server, client)
    assert isinstance(close, CloseConnection) and close.code == expected
    assert server.state is State.CLOSING
    server.receive_data(client.send(close.response()))
    [gone] = drain(server)
    assert gone.code == expected and server.state is State.CLOSED


def test_app_close_then_transport_lost() -> None:
    _, server = accepted_pair()
    server.reply({"close": 4004})
    server.connection_lost()
    [gone] = drain(server)
    assert gone.code == 4004
    server.connection_lost()
    assert drain(server) == []  # exactly once


def test_eof_is_1006() -> None:
    _, server = accepted_pair()
    server.receive_data(b"")
    [gone] = drain(server)
    assert gone.code == 1006 and server.state is State.CLOSED


def test_data_after_our_close_is_dropped() -> None:
    client, server = accepted_pair()
    server.close(1000)
    server.receive_data(client.send(TextMessage(data="late")))
    assert drain(server) == []


def test_oversized_message_closes_with_1009() -> None:
    client, server = accepted_pair(WebSocketConfig(max_message_size=10))
    server.receive_data(client.send(TextMessage(data="0123456789")))
    assert drain(server)[0].message["text"] == "0123456789"
    server.receive_data(client.send(BytesMessage(data=b"0123456789A")))
    with pytest.raises(WebSocketProtocolError) as info:
        drain(server)
    assert info.value.hint == 1009
    [close] = to_client(server, client)
    assert isinstance(close, CloseConnection) and close.code == 1009


def test_oversize_counts_utf8_bytes_and_fragments() -> None:
    client, server = accepted_pair(WebSocketConfig(max_message_size=10))
    server.receive_data(
        client.send(TextMessage(data="€€€", message_finished=False))  # 9 bytes
        + client.send(TextMessage(data="é", message_finished=True))  # 11
    )
    with pytest.raises(WebSocketProtocolError, match="bigger") as info:
        drain(server)
    assert info.value.hint == 1009


def test_invalid_utf8_closes_with_1007() -> None:
    client, server = accepted_pair()
    server.receive_data(masked_frame(0x1, b"ok \xff"))
    with pytest.raises(WebSocketProtocolError) as info:
        drain(server)
    assert info.value.hint == 1007
    [close] = to_client(server, client)
    assert isinstance(close, CloseConnection) and close.code == 1007
    assert server.state is State.CLOSED  # failed: no waiting for the peer's Close
    [gone] = drain(server)
    assert gone.code == 1007


@pytest.mark.parametrize(
    "frame",
    [
        masked_frame(0x3, b"x"),  # reserved opcode
        masked_frame(0x1, b"x", rsv=0x40),  # RSV1 without an extension
        masked_frame(0x0, b"x"),  # continuation without a message
        masked_frame(0x9, b"p", fin=False),  # fragmented control frame
        masked_frame(0x9, b"p" * 126),  # control frame too long
        masked_frame(0x8, b"\x03"),  # one-byte close payload
        masked_frame(0x8, struct.pack("!H", 999)),  # invalid close code
        masked_frame(0x8, struct.pack("!H", 1006)),  # local-only close code
        bytes([0x81, 0x03]) + b"abc",  # unmasked client frame
        masked_frame(0x1, b"a", fin=False) + masked_frame(0x1, b"b"),  # new message mid-way
    ],
)
def test_protocol_errors_close_with_1002(frame: bytes) -> None:
    client, server = accepted_pair()
    server.receive_data(frame)
    with pytest.raises(WebSocketProtocolError) as info:
        drain(server)
    assert info.value.hint == 1002
    events = to_client(server, client)
    assert isinstance(events[-1], CloseConnection) and events[-1].code == 1002


def test_messages_before_a_protocol_error_are_delivered_first() -> None:
    client, server = accepted_pair()
    server.receive_data(client.send(TextMessage(data="fine")) + masked_frame(0x3, b""))
    assert server.next_event().message["text"] == "fine"
    with pytest.raises(WebSocketProtocolError):
        server.next_event()


# --------------------------------------------------------------------------- replies


@pytest.mark.parametrize(
    "reply",
    [
        {"text": "a", "bytes": b"b"},
        {"text": b"a"},
        {"bytes": "a"},
        {"close": 1005},
        {"close": 999},
        {"close": "yes"},
        {"accept": "yes"},
        {"subprotocol": 3, "accept": True},
        ["not", "a", "dict"],
    ],
)
def test_invalid_replies(reply: Any) -> None:
    _client, server, _ = open_pair()
    with pytest.raises(InvalidReply):
        server.reply(reply)
    assert server.state is State.CONNECTING and server.data_to_send() == b""


def test_empty_reply_while_connecting_is_invalid() -> None:
    _, server, _ = open_pair()
    with pytest.raises(InvalidReply):
        server.reply({})


def test_accept_after_open_is_ignored_and_replies_after_close_are_dropped() -> None:
    client, server = accepted_pair()
    server.reply({"accept": True})
    assert server.data_to_send() == b""
    server.reply({"close": True})
    [close] = to_client(server, client)
    assert close.code == 1000
    server.reply({"text": "too late"})
    assert server.data_to_send() == b""


# ------------------------------------------------------------------ permessage-deflate


def test_deflate_round_trip_with_context_takeover() -> None:
    client, server = accepted_pair(deflate=ClientDeflate())
    text = "compress me " * 500
    for _ in range(3):
        wire = client.send(TextMessage(data=text))
        assert len(wire) < 200
        server.receive_data(wire)
        [event] = drain(server)
        assert event.message["text"] == text
        server.reply({"text": text})
        out = server.data_to_send()
        assert len(out) < 200 and out[0] & 0x40  # RSV1: compressed
        client.receive_data(out)
        assert list(client.events()) == [TextMessage(data=text)]


def test_deflate_no_context_takeover_and_window_bits() -> None:
    deflate = ClientDeflate(
        client_no_context_takeover=True,
        server_no_context_takeover=True,
        client_max_window_bits=10,
        server_max_window_bits=9,
    )
    client, server = accepted_pair(deflate=deflate)
    for payload in (b"x" * 3000, bytes(range(256)) * 20, b""):
        server.receive_data(client.send(BytesMessage(data=payload)))
        [event] = drain(server)
        assert event.message["bytes"] == payload
        server.reply({"bytes": payload})
        assert to_client(server, client) == [BytesMessage(data=payload)]


def test_deflate_bomb_closes_with_1009_without_inflating_it() -> None:
    client, server = accepted_pair(
        WebSocketConfig(max_message_size=100_000), deflate=ClientDeflate()
    )
    bomb = client.send(BytesMessage(data=bytes(50_000_000)))
    assert len(bomb) < 100_000
    server.receive_data(bomb)
    with pytest.raises(WebSocketProtocolError) as info:
        drain(server)
    assert info.value.hint == 1009


def test_deflated_invalid_data_is_1007() -> None:
    _, server = accepted_pair(deflate=ClientDeflate())
    server.receive_data(masked_frame(0x2, b"\xff\xff\xff\xff", rsv=0x40))
    with pytest.raises(WebSocketProtocolError) as info:
        drain(server)
    assert info.value.hint == 1007


def test_compression_off_declines_offers() -> None:
    client, server, _ = open_pair(WebSocketConfig(compression=False), deflate=ClientDeflate())
    server.reply({"accept": True})
    [accept] = to_client(server, client)
    assert accept.extensions == []


@pytest.mark.parametrize(
    ("offers", "response"),
    [
        (["permessage-deflate"], b"permessage-deflate"),
        (["x-webkit-deflate-frame", "permessage-deflate"], b"permessage-deflate"),
        (
            ["permessage-deflate; client_max_window_bits"],
            b"permessage-deflate",
        ),
        (
            ["permessage-deflate; client_max_window_bits=10; server_max_window_bits=12"],
            b"permessage-deflate; server_max_window_bits=12; client_max_window_bits=10",
        ),
        (
            ["permessage-deflate; server_no_context_takeover; client_no_context_takeover"],
            b"permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
        (
            ['permessage-deflate; server_max_window_bits="8"'],
            b"permessage-deflate; server_max_window_bits=8",
        ),
        (
            ["permessage-deflate; server_max_window_bits=7", "permessage-deflate"],
            b"permessage-deflate",
        ),
        (["permessage-deflate; server_max_window_bits"], None),
        (["permessage-deflate; mystery=1"], None),
        (["permessage-deflate; server_no_context_takeover; server_no_context_takeover"], None),
        (["permessage-deflate; client_max_window_bits=16"], None),
        (["permessage-deflate; server_no_context_takeover=1"], None),
        (["other"], None),
        ([], None),
    ],
)
def test_negotiate_deflate(offers: list[str], response: bytes | None) -> None:
    extension, header = negotiate_deflate(offers, max_message_size=1000)
    assert header == response
    assert (extension is None) == (response is None)


def test_server_window_of_8_bits_is_decodable_with_an_8_bit_window() -> None:
    extension, _ = negotiate_deflate(
        ["permessage-deflate; server_max_window_bits=8"], max_message_size=1000
    )
    assert extension is not None
    from wsproto.frame_protocol import Opcode, RsvBits

    data = b"abcabcabc" * 200
    _, out = extension.frame_outbound(None, Opcode.TEXT, RsvBits(False, False, False), data, True)
    assert zlib.decompressobj(-8).decompress(out + b"\x00\x00\xff\xff") == data


# ------------------------------------------------------------------------- keep-alive


def test_keepalive_pings_a_silent_peer_then_drops_it() -> None:
    client, server = accepted_pair(WebSocketConfig(ping_interval=10, ping_timeout=5))
    server.tick(100.0)
    assert server.next_deadline() == 110.0
    server.tick(105.0)
    assert server.data_to_send() == b""
    server.tick(110.0)
    [ping] = to_client(server, client)
    assert isinstance(ping, Ping)
    assert server.next_deadline() == 115.0
    server.tick(114.9)
    assert server.state is State.OPEN
    server.tick(115.0)
    assert server.state is State.CLOSED
    [close] = to_client(server, client)
    assert close.code == 1011
    [gone] = drain(server)
    assert gone.code == 1006
    assert server.next_deadline() is None


def test_keepalive_any_data_keeps_the_peer_alive() -> None:
    client, server = accepted_pair(WebSocketConfig(ping_interval=10, ping_timeout=5))
    server.tick(0.0)
    server.tick(10.0)
    [ping] = to_client(server, client)
    server.receive_data(client.send(ping.response()))
    assert drain(server) == []
    server.tick(15.0)  # the pong arrived: not dead, next ping 10 s from now
    assert server.state is State.OPEN
    assert server.next_deadline() == 25.0
    server.receive_data(client.send(TextMessage(data="busy")))
    drain(server)
    server.tick(25.0)
    assert server.data_to_send() == b""  # heard from it: no ping needed
    assert server.next_deadline() == 35.0


def test_keepalive_disabled() -> None:
    _, server = accepted_pair(WebSocketConfig(ping_interval=None))
    server.tick(0.0)
    server.tick(1e9)
    assert server.next_deadline() is None and server.data_to_send() == b""


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        WebSocketConfig(max_message_size=0)
    with pytest.raises(ValueError):
        WebSocketConfig(ping_interval=-1)
    with pytest.raises(ValueError):
        WebSocketConfig(allowed_origins="https://a.example")  # type: ignore[arg-type]
