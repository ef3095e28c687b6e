"""Messages on the wire (DESIGN.md section 3, "Messages"): every allowed type survives a
send/receive, bytes stay bytes, tuples come back as lists, a receiver gets a fresh copy,
bad messages raise InvalidMessage naming the path, big ones MessageTooLarge."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest
import trio

from csp_bus import ChannelLayer, InvalidMessage, MessageTooLarge
from csp_bus.messages import encode

EVERY_TYPE: dict[str, Any] = {
    "str": "héllo wörld ✓ 🚌",
    "empty_str": "",
    "bytes": b"\x00\x01\xfe\xff binary",
    "empty_bytes": b"",
    "int": 42,
    "negative": -7,
    "zero": 0,
    "int64_min": -(2**63),
    "int64_max": 2**63 - 1,
    "uint64_max": 2**64 - 1,
    "float": 3.25,
    "negative_zero": -0.0,
    "infinity": float("inf"),
    "true": True,
    "false": False,
    "none": None,
    "list": [1, "two", b"three", None, 4.5, False],
    "empty_list": [],
    "dict": {"a": 1, "b": {"c": [b"x", {"d": None}]}},
    "empty_dict": {},
    "nested": [[[[{"deep": [b"bottom"]}]]]],
    "headers": [[b"host", b"example.com"], [b"x-empty", b""]],
}


def same(a: object, b: object) -> bool:
    """Equality that also compares types (``1 == 1.0 == True`` in Python)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


async def test_round_trip_every_allowed_type(layer: ChannelLayer) -> None:
    await layer.send("types", EVERY_TYPE)
    channel, message = await layer.receive("types")
    assert channel == "types"
    assert same(message, EVERY_TYPE)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"raw\xff", b"raw\xff"),
        ("text", "text"),
        ((1, 2), [1, 2]),
        ((), []),
        ((b"a", (b"b", ("c",))), [b"a", [b"b", ["c"]]]),
        ({"t": (1, {"u": (2,)})}, {"t": [1, {"u": [2]}]}),
        ([(1, 2), (3, 4)], [[1, 2], [3, 4]]),
        (True, True),
        (1, 1),
        (1.0, 1.0),
    ],
    ids=[
        "bytes",
        "str",
        "tuple",
        "empty-tuple",
        "nested-tuples",
        "tuple-in-dict",
        "list-of-tuples",
        "bool",
        "int",
        "float",
    ],
)
async def test_value_comes_back_as(layer: ChannelLayer, value: object, expected: object) -> None:
    await layer.send("one", {"v": value})
    _, message = await layer.receive("one")
    assert same(message["v"], expected)


async def test_receiver_gets_a_copy_not_the_senders_object(layer: ChannelLayer) -> None:
    original = {"items": [1, 2], "inner": {"k": "v"}}
    await layer.send("copy", original)
    original["items"].append(3)  # type: ignore[attr-defined]
    original["inner"]["k"] = "changed"  # type: ignore[index]
    _, message = await layer.receive("copy")
    assert message == {"items": [1, 2], "inner": {"k": "v"}}
    message["items"].append("mine")
    assert original["items"] == [1, 2, 3]


async def test_group_receivers_get_independent_copies(layer: ChannelLayer) -> None:
    await layer.group_add("room", "reader-a")
    await layer.group_add("room", "reader-b")
    await layer.send_group("room", {"items": [1], "inner": {"k": "v"}})
    _, first = await layer.receive("reader-a")
    first["items"].append("mutated")
    first["inner"]["k"] = "mutated"
    _, second = await layer.receive("reader-b")
    assert second == {"items": [1], "inner": {"k": "v"}}
    assert first is not second


async def test_two_messages_from_one_dict_are_independent(layer: ChannelLayer) -> None:
    shared = {"items": [1]}
    await layer.send("twice", shared)
    await layer.send("twice", shared)
    _, first = await layer.receive("twice")
    _, second = await layer.receive("twice")
    first["items"].append(2)
    assert second == {"items": [1]}


class Opaque:
    pass


@pytest.mark.parametrize(
    ("message", "path", "reason"),
    [
        ({"items": [1, 2, 3, {1, 2}]}, 'message["items"][3]', "set is not allowed"),
        ({"a": {"b": [0, (1, Opaque())]}}, 'message["a"]["b"][1][1]', "Opaque is not allowed"),
        ({"when": 1j}, 'message["when"]', "complex is not allowed"),
        ({"f": frozenset()}, 'message["f"]', "frozenset is not allowed"),
        ({"b": bytearray(b"x")}, 'message["b"]', "bytearray is not allowed"),
        ({"od": OrderedDict(a=1)}, 'message["od"]', "OrderedDict is not allowed"),
        ({"big": 2**64}, 'message["big"]', "int does not fit in 64 bits"),
        ({"small": -(2**63) - 1}, 'message["small"]', "int does not fit in 64 bits"),
        ({1: "one"}, "message[1]", "key of type int is not allowed (keys are str)"),
        (
            {"x": {b"k": 1}},
            "message[\"x\"][b'k']",
            "key of type bytes is not allowed (keys are str)",
        ),
        ({"x": [{None: 1}]}, 'message["x"][0][None]', "key of type NoneType is not allowed"),
        ([1, 2], "message", "must be a dict, not list"),
        ("text", "message", "must be a dict, not str"),
        (None, "message", "must be a dict, not NoneType"),
        (OrderedDict(a=1), "message", "must be a dict, not OrderedDict"),
    ],
    ids=[
        "set-in-list",
        "object-deep",
        "complex",
        "frozenset",
        "bytearray",
        "dict-subclass",
        "int-too-big",
        "int-too-small",
        "int-key",
        "bytes-key-nested",
        "none-key-in-list",
        "not-a-dict-list",
        "not-a-dict-str",
        "not-a-dict-none",
        "top-level-subclass",
    ],
)
async def test_invalid_message_names_the_path(
    layer: ChannelLayer, message: Any, path: str, reason: str
) -> None:
    with pytest.raises(InvalidMessage) as info:
        await layer.send("bad", message)
    assert info.value.path == path
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{path}: ")
    # Nothing was enqueued.
    assert await layer.receive_nowait("bad") is None


async def test_invalid_message_raised_by_send_group_too(layer: ChannelLayer) -> None:
    await layer.group_add("g", "member")
    with pytest.raises(InvalidMessage) as info:
        await layer.send_group("g", {"items": [1, 2, 3, {1}]})
    assert info.value.path == 'message["items"][3]'
    assert await layer.receive_nowait("member") is None


async def test_invalid_message_raised_by_send_wait(layer: ChannelLayer) -> None:
    with pytest.raises(InvalidMessage):
        await layer.send_wait("bad", {"s": {1}}, timeout=0.1)


async def test_invalid_message_is_a_type_error_and_usage_error(layer: ChannelLayer) -> None:
    from csp_bus import BusError, UsageError

    with pytest.raises(TypeError) as info:
        await layer.send("bad", {"s": {1}})
    assert isinstance(info.value, UsageError)
    assert isinstance(info.value, BusError)


def _sized_message(size: int) -> dict[str, Any]:
    """A message whose msgpack encoding is exactly ``size`` bytes."""
    overhead = len(encode({"b": b""})) + 4  # bin 32 header is 5 bytes, bin 8 is 2
    message = {"b": b"x" * (size - overhead)}
    while len(encode(message, max_size=2**40)) > size:
        message = {"b": message["b"][:-1]}
    while len(encode(message, max_size=2**40)) < size:
        message = {"b": message["b"] + b"x"}
    assert len(encode(message, max_size=2**40)) == size
    return message


async def test_message_at_the_limit_passes_one_byte_more_does_not(make_layer: Any) -> None:
    layer = await make_layer(max_message_size=2000)
    await layer.send("sized", _sized_message(2000))
    _, message = await layer.receive("sized")
    assert len(message["b"]) > 1900
    with pytest.raises(MessageTooLarge) as info:
        await layer.send("sized", _sized_message(2001))
    assert info.value.size == 2001
    assert info.value.limit == 2000
    assert isinstance(info.value, InvalidMessage)
    assert await layer.receive_nowait("sized") is None


async def test_default_limit_is_one_mebibyte(layer: ChannelLayer) -> None:
    await layer.send("big", _sized_message(1024 * 1024))
    _, message = await layer.receive("big")
    assert len(message["b"]) > 1024 * 1000
    with pytest.raises(MessageTooLarge) as info:
        await layer.send("big", {"b": b"x" * (1024 * 1024)})
    assert info.value.limit == 1024 * 1024


async def test_send_group_refuses_a_large_message(make_layer: Any) -> None:
    layer = await make_layer(max_message_size=100)
    await layer.group_add("g", "member")
    with pytest.raises(MessageTooLarge):
        await layer.send_group("g", {"b": b"x" * 200})
    assert await layer.receive_nowait("member") is None


async def test_binary_payload_of_every_byte_value(layer: ChannelLayer) -> None:
    payload = bytes(range(256)) * 64
    await layer.send("bin", {"bytes": payload, "text": payload.decode("latin-1")})
    _, message = await layer.receive("bin")
    assert message["bytes"] == payload
    assert type(message["bytes"]) is bytes
    assert message["text"] == payload.decode("latin-1")


async def test_message_shape_survives_a_group_send(layer: ChannelLayer) -> None:
    await layer.group_add("g", "member")
    await layer.send_group("g", EVERY_TYPE)
    with trio.fail_after(5):
        _, message = await layer.receive("member")
    assert same(message, EVERY_TYPE)
