"""Hostile input for the sans-IO core: it parses or raises the documented error.

Every input is fed twice, whole and byte by byte; both runs must agree on the messages
delivered and on the error raised (``WebSocketProtocolError`` with an HTTP status
during the handshake, a close code after it), and nothing else may escape.
"""

from __future__ import annotations

import contextlib
import os
import struct
from typing import Any

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
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request
from wsproto.extensions import PerMessageDeflate as ClientDeflate

HANDSHAKE_STATUSES = {400, 403, 405, 426, 431}
CLOSE_CODES = {1002, 1007, 1009}
CONFIG = WebSocketConfig(max_message_size=4096, max_handshake_size=2048)

GOOD_REQUEST = (
    b"GET /chat HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: a, b\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"Origin: https://example\r\n\r\n"
)


def run(server: WebSocketConnection, chunks: list[bytes]) -> tuple[list[Any], int | None]:
    """Feed chunks, answer every connect with accept; return (events, error hint)."""
    events: list[Any] = []
    for chunk in chunks:
        server.receive_data(chunk)
        while True:
            try:
                event = server.next_event()
            except WebSocketProtocolError as exc:
                assert server.state in (State.CLOSING, State.CLOSED)
                assert server.data_to_send()  # the answer is queued
                rest = []
                while (more := server.next_event()) is not NEED_DATA:
                    rest.append(more)
                return events + rest, exc.hint
            if event is NEED_DATA:
                break
            events.append(event)
            if isinstance(event, ConnectRequest):
                server.reply({"accept": True})
        server.data_to_send()
        if server.state is State.CLOSED:
            break
    return events, None


def summary(events: list[Any]) -> list[Any]:
    return [
        (type(event).__name__, event.message.get("text"), event.message.get("bytes"))
        if isinstance(event, MessageReceived)
        else type(event).__name__
        for event in events
    ]


def check_both_ways(make: Any, data: bytes, allowed: set[int]) -> None:
    whole_events, whole_error = run(make(), [data] if data else [])  # b"" would be EOF
    split_events, split_error = run(make(), [data[i : i + 1] for i in range(len(data))])
    assert whole_error is None or whole_error in allowed
    assert summary(whole_events) == summary(split_events)
    assert whole_error == split_error
    disconnects = [e for e in whole_events if isinstance(e, Disconnected)]
    assert len(disconnects) <= 1


def new_server() -> WebSocketConnection:
    return WebSocketConnection(CONFIG, reply_channel="websocket.send.x!y")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_arbitrary_bytes_as_a_handshake(data: bytes) -> None:
    check_both_ways(new_server, data, HANDSHAKE_STATUSES)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, len(GOOD_REQUEST) - 1),
    st.integers(1, 20),
    st.binary(min_size=0, max_size=20),
)
def test_mutated_handshakes(position: int, length: int, replacement: bytes) -> None:
    data = GOOD_REQUEST[:position] + replacement + GOOD_REQUEST[position + length :]
    check_both_ways(new_server, data, HANDSHAKE_STATUSES | CLOSE_CODES)


def accepted_server(deflate: bool) -> tuple[WebSocketConnection, WSConnection]:
    client = WSConnection(ConnectionType.CLIENT)
    server = WebSocketConnection(CONFIG, reply_channel="websocket.send.x!y")
    server.receive_data(
        client.send(Request(host="x", target="/", extensions=[ClientDeflate()] if deflate else []))
    )
    assert isinstance(server.next_event(), ConnectRequest)
    server.reply({"accept": True})
    client.receive_data(server.data_to_send())
    list(client.events())
    return server, client


frames = st.builds(
    lambda opcode, fin, rsv, payload, length_kind: (opcode, fin, rsv, payload, length_kind),
    st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3, 0xB]),
    st.booleans(),
    st.sampled_from([0, 0, 0, 0x40, 0x20, 0x10]),
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.just(struct.pack("!H", 1000) + b"bye"),
    ),
    st.sampled_from(["short", "short", "short", "medium", "long"]),
)


def encode(frame: tuple[int, bool, int, bytes, str], masked: bool) -> bytes:
    opcode, fin, rsv, payload, length_kind = frame
    first = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if masked else 0
    length = len(payload)
    if length_kind == "short" and length < 126:
        header = bytes([first, mask_bit | length])
    elif length_kind == "long":
        header = bytes([first, mask_bit | 127]) + struct.pack("!Q", length)
    else:
        header = bytes([first, mask_bit | 126]) + struct.pack("!H", length)
    if not masked:
        return header + payload
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames, max_size=8), st.booleans(), st.integers(0, 20))
# Found by hypothesis: a new compressed TEXT frame before the last one's final fragment
# was inflated (1007 when it came whole) before the 1002 it gets one byte at a time.
@example([(1, False, 0, b"", "short"), (1, False, 0x40, b"\x00" * 5, "short")], True, 2)
def test_hostile_frames(frame_list: list[Any], deflate: bool, unmasked_at: int) -> None:
    data = b"".join(encode(f, masked=i != unmasked_at) for i, f in enumerate(frame_list))
    check_both_ways(lambda: accepted_server(deflate)[0], data, CLOSE_CODES)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_arbitrary_bytes_after_accept(data: bytes, deflate: bool) -> None:
    check_both_ways(lambda: accepted_server(deflate)[0], data, CLOSE_CODES)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)
replies = st.dictionaries(
    st.sampled_from(["accept", "text", "bytes", "close", "subprotocol", "other"]),
    json_values,
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(replies, min_size=1, max_size=4), st.booleans())
def test_hostile_replies_apply_or_raise_invalid_reply(
    messages: list[dict[str, Any]], accept_first: bool
) -> None:
    client = WSConnection(ConnectionType.CLIENT)
    server = WebSocketConnection(CONFIG, reply_channel="websocket.send.x!y")
    server.receive_data(client.send(Request(host="x", target="/", subprotocols=["a"])))
    assert isinstance(server.next_event(), ConnectRequest)
    if accept_first:
        server.reply({"accept": True})
    for message in messages:
        with contextlib.suppress(InvalidReply):
            server.reply(message)
    if out := server.data_to_send():
        client.receive_data(out)
        list(client.events())  # what the server wrote is valid WebSocket (or HTTP)


def test_new_message_inside_a_compressed_message_is_a_protocol_error() -> None:
    # A TEXT frame while a compressed message still waits for its final fragment: 1002,
    # whether or not its payload would inflate, and however the bytes arrive.
    first = (1, False, 0x40, b"\x02\x00", "short")
    for payload in (b"\x00" * 5, b"\x02\x00"):
        data = b"".join(encode(f, masked=True) for f in (first, (1, True, 0x40, payload, "short")))
        for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
            events, error = run(accepted_server(True)[0], chunks)
            assert error == 1002, (payload, len(chunks), events)
