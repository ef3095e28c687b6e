"""The sans-IO core's fast path for small, complete client data frames behaves exactly
as wsproto does: the same input (hostile or not, cut anywhere) gives the same events,
the same errors and the same bytes on the wire with the fast path on and off; so do
the frames it writes for the application's replies."""

from __future__ import annotations

import struct
from typing import Any

from csp_bus.adapters.websocket.protocol import (
    NEED_DATA,
    ConnectRequest,
    MessageReceived,
    WebSocketConfig,
    WebSocketConnection,
    WebSocketProtocolError,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CONFIG = WebSocketConfig(max_message_size=300)
REQUEST = (
    b"GET /chat HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
)
DEFLATE = b"Sec-WebSocket-Extensions: permessage-deflate\r\n"


class Reference(WebSocketConnection):  # type: ignore[misc]
    """wsproto parses every frame."""

    _FAST_PATH = False


def opened(cls: type[WebSocketConnection], deflate: bool) -> WebSocketConnection:
    server = cls(CONFIG, reply_channel="websocket.send.x!c", client=None, server=None)
    server.receive_data(REQUEST + (DEFLATE if deflate else b"") + b"\r\n")
    assert isinstance(server.next_event(), ConnectRequest)
    server.reply({"accept": True})
    server.data_to_send()
    return server


def frame(opcode: int, payload: bytes, fin: bool, rsv: int, mask: bytes | None, wide: int) -> bytes:
    """A client frame; ``wide`` forces a 16-bit (1) or 64-bit (2) length field."""
    length = len(payload)
    flag = 0x80 if mask is not None else 0
    if wide == 2 or length > 65535:
        header = bytes([flag | 127]) + struct.pack("!Q", length)
    elif wide == 1 or length > 125:
        header = bytes([flag | 126]) + struct.pack("!H", length)
    else:
        header = bytes([flag | length])
    first = bytes([(0x80 if fin else 0) | rsv | opcode])
    if mask is None:
        return first + header + payload
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return first + header + mask + body


payloads = st.one_of(
    st.text(max_size=40).map(lambda text: text.encode("utf-8")),
    st.binary(max_size=40),
    st.integers(min_value=100, max_value=400).map(lambda n: ("é" * n).encode()[:n]),
    st.sampled_from([b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"ok\xc3", b"\x80", b""]),
)
hostile_frames = st.builds(
    frame,
    opcode=st.sampled_from([1, 2, 0, 8, 9, 10, 3, 11]),
    payload=payloads,
    fin=st.booleans(),
    rsv=st.sampled_from([0, 0, 0x40, 0x20, 0x10]),
    mask=st.binary(min_size=4, max_size=4) | st.just(b"\x00\x00\x00\x00") | st.none(),
    wide=st.sampled_from([0, 0, 1, 2]),
)
simple_frames = st.builds(  # what the fast path takes
    frame,
    opcode=st.sampled_from([1, 2]),
    payload=payloads | st.integers(295, 305).map(lambda n: b"a" * n),
    fin=st.just(True),
    rsv=st.just(0),
    mask=st.binary(min_size=4, max_size=4),
    wide=st.sampled_from([0, 0, 0, 1]),
)
near_frames = st.builds(  # one thing off
    lambda base, index, value: base[:index] + bytes([value]) + base[index + 1 :],
    simple_frames,
    st.integers(0, 1),
    st.sampled_from([0x00, 0x01, 0x02, 0x7E, 0x7F, 0x80, 0x83, 0x88, 0x89, 0x8A, 0xC1, 0xA2, 0x91])
    | st.integers(0, 255),
)
frames = simple_frames | near_frames | hostile_frames
steps = st.one_of(
    st.tuples(
        st.just("data"),
        st.lists(frames, min_size=1, max_size=6),
        st.integers(1, 64) | st.integers(300, 2000),
    ),
    st.tuples(st.just("close"), st.sampled_from([1000, 4000]), st.just(0)),
    st.tuples(
        st.just("send"),
        st.sampled_from(
            ["", "hi", "é" * 70, "x" * 201, "é" * 40000, b"", b"\x00" * 127, b"b" * 70000]
        ),
        st.just(0),
    ),
    st.tuples(st.just("lost"), st.none(), st.just(0)),
    st.tuples(st.just("feed"), st.lists(frames, min_size=1, max_size=3), st.just(0)),
)


def replay(cls: type[WebSocketConnection], deflate: bool, script: list[Any]) -> list[Any]:
    server = opened(cls, deflate)
    record: list[Any] = []
    for kind, value, cut in script:
        if kind == "data":
            data = b"".join(value)
            chunks = [data[i : i + cut] for i in range(0, len(data), cut)] + [b""] * (cut % 3 == 0)
            for chunk in chunks:
                server.receive_data(chunk)
                # Half of the time the glue reads twice before taking the events.
                if cut % 2:
                    continue
                record.extend(events(server))
        elif kind == "feed":  # read now, take the events after the next step
            server.receive_data(b"".join(value))
            continue
        elif kind == "close":
            server.reply({"close": value})
        elif kind == "send":
            server.reply({"text": value} if isinstance(value, str) else {"bytes": value})
        else:
            server.connection_lost()
        record.extend(events(server))
        record.append(("state", server.state, server.data_to_send()))
    return record


def events(server: WebSocketConnection) -> list[Any]:
    out: list[Any] = []
    while True:
        try:
            event = server.next_event()
        except WebSocketProtocolError as exc:
            out.append(("error", exc.hint))
            continue
        if event is NEED_DATA:
            return out
        out.append((type(event).__name__, getattr(event, "message", None)))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(steps, min_size=1, max_size=8), deflate=st.booleans())
def test_fast_path_matches_wsproto(script: list[Any], deflate: bool) -> None:
    assert replay(WebSocketConnection, deflate, script) == replay(Reference, deflate, script)


def test_fast_path_is_taken_for_small_masked_frames() -> None:
    server = opened(WebSocketConnection, False)
    mask = b"\x01\x02\x03\x04"
    data = frame(1, "héllo".encode(), True, 0, mask, 0) + frame(2, b"\x00" * 200, True, 0, mask, 0)
    server.receive_data(data)
    assert server._pending == data  # kept from wsproto
    first, second = server.next_event(), server.next_event()
    assert isinstance(first, MessageReceived) and isinstance(second, MessageReceived)
    assert first.message["text"] == "héllo" and first.message["order"] == 1
    assert second.message["bytes"] == b"\x00" * 200 and second.message["order"] == 2
    assert server.next_event() is NEED_DATA


def test_wsproto_internals_the_fast_path_reads_exist() -> None:
    server = opened(WebSocketConnection, False)
    ws = server._ws
    assert ws is not None
    decoder = ws._proto._frame_decoder
    assert decoder.buffer.buffer == bytearray() and decoder.header is None
    assert ws._proto._message_decoder.opcode is None and not ws._events
    assert server._fast_ready()


def masked(payload: bytes, mask: bytes = b"\x11\x22\x33\x44") -> bytes:
    return mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


HEADS = [  # second byte and what follows it
    bytes([0x83]) + masked(b"abc"),
    bytes([0x80]) + masked(b""),
    bytes([0x03]) + b"abc",  # not masked
    bytes([0x80 | 126]) + struct.pack("!H", 3) + masked(b"abc"),  # not the shortest form
    bytes([0x80 | 126]) + struct.pack("!H", 200) + masked(b"b" * 200),
    bytes([0x80 | 126]) + struct.pack("!H", 301) + masked(b"b" * 301),  # over the limit
    bytes([0x80 | 127]) + struct.pack("!Q", 3) + masked(b"abc"),
    bytes([0x82]) + masked(b"\xc3\x28"),  # invalid UTF-8
    bytes([0x81]) + masked(b"\xc3"),  # truncated UTF-8
]


def test_every_first_byte_matches_wsproto() -> None:
    after = frame(1, b"next", True, 0, b"\x01\x02\x03\x04", 0)
    for first in range(256):
        for head in HEADS:
            data = bytes([first]) + head
            for script in (
                [("data", [data, after], 2000)],
                [("data", [data], 2000), ("data", [after], 2000)],
                [("data", [after, data, after], 7)],
                [("feed", [after, data], 0), ("close", 1000, 0), ("data", [after], 2000)],
            ):
                fast = replay(WebSocketConnection, False, script)
                assert fast == replay(Reference, False, script), (first, head, script)


def test_fast_path_is_on_with_this_wsproto_and_off_when_its_internals_move(
    monkeypatch: Any,
) -> None:
    from csp_bus.adapters.websocket import protocol

    assert WebSocketConnection._FAST_PATH  # the installed wsproto keeps them where we look

    class Moved:  # a wsproto whose parser state lives elsewhere
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._events: list[Any] = []

    monkeypatch.setattr(protocol, "Connection", Moved)
    assert protocol._wsproto_state_readable() is False
