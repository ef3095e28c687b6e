"""Property tests of message validation and the msgpack codec in ``csp_bus.messages``:
``decode(encode(m))`` equals ``m`` with tuples turned into lists, bad values are named by
their path, the size limit is exact."""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from csp_bus import InvalidMessage, MessageTooLarge
from csp_bus.messages import (
    DEFAULT_MAX_MESSAGE_SIZE,
    decode,
    encode,
    encode_unchecked,
    validate_message,
)

INT_MIN, INT_MAX = -(2**63), 2**64 - 1

scalars = (
    st.text()
    | st.binary()
    | st.integers(INT_MIN, INT_MAX)
    | st.floats()  # NaN and infinities included
    | st.booleans()
    | st.none()
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=5).map(tuple)
        | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=40,
)
messages = st.dictionaries(st.text(max_size=10), values, max_size=8)


def normalized(value: Any) -> Any:
    """What a receiver gets: tuples become lists, everything else stays."""
    if isinstance(value, tuple | list):
        return [normalized(item) for item in value]
    if isinstance(value, dict):
        return {key: normalized(item) for key, item in value.items()}
    return value


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (``1 == 1.0 == True`` otherwise);
    NaN equals NaN, and -0.0 differs from 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


@given(messages)
def test_round_trip(message: dict[str, Any]) -> None:
    validate_message(message)
    assert same(decode(encode(message)), normalized(message))


@given(messages)
def test_encode_unchecked_agrees_with_encode(message: dict[str, Any]) -> None:
    assert same(decode(encode_unchecked(message)), decode(encode(message)))


@given(messages)
def test_decode_returns_a_fresh_object_every_time(message: dict[str, Any]) -> None:
    payload = encode(message)
    first, second = decode(payload), decode(payload)
    assert first is not second
    first["__mutated__"] = [1]
    for value in first.values():
        if isinstance(value, list):
            value.append("mutated")
        elif isinstance(value, dict):
            value["mutated"] = True
    assert same(second, normalized(message))


@given(messages, st.integers(1, 4096))
def test_size_limit_is_exact(message: dict[str, Any], limit: int) -> None:
    size = len(encode(message, max_size=2**40))
    if size > limit:
        with pytest.raises(MessageTooLarge) as info:
            encode(message, max_size=limit)
        assert (info.value.size, info.value.limit) == (size, limit)
    else:
        assert len(encode(message, max_size=limit)) == size


def test_default_size_limit_is_one_mebibyte() -> None:
    assert DEFAULT_MAX_MESSAGE_SIZE == 1024 * 1024
    with pytest.raises(MessageTooLarge):
        encode({"b": b"x" * DEFAULT_MAX_MESSAGE_SIZE})


# -- bad values are named by their path --------------------------------------------------------


class Opaque:
    pass


bad_values = st.sampled_from(
    [{1, 2}, frozenset(), Opaque(), 1j, bytearray(b"x"), memoryview(b"x"), 2**64, INT_MIN - 1]
)
steps = st.lists(st.one_of(st.text(max_size=8).map(lambda k: ("key", k)), st.just(("index", 0))))


def _bury(bad: Any, path: list[tuple[str, Any]], filler: list[Any]) -> tuple[Any, str]:
    """Build a value with ``bad`` at ``path``, valid siblings before it; return it and the
    path text the error must show."""
    value, text = bad, ""
    for kind, key in reversed(path):
        if kind == "key":
            container: Any = {key: value}
            text = f"[{json.dumps(key)}]" + text
        else:
            container = [*filler, value]
            text = f"[{len(filler)}]" + text
        value = container
    return value, text


@given(
    st.text(max_size=8),
    steps,
    bad_values,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=8), values, max_size=3),
)
def test_bad_value_is_named_by_its_path(
    top: str, path: list[tuple[str, Any]], bad: Any, filler: list[Any], before: dict[str, Any]
) -> None:
    buried, text = _bury(bad, path, filler)
    message = {k: v for k, v in before.items() if k != top}
    message[top] = buried
    expected = f"message[{json.dumps(top)}]{text}"
    with pytest.raises(InvalidMessage) as info:
        encode(message)
    assert info.value.path == expected
    assert "not allowed" in info.value.reason or "64 bits" in info.value.reason
    with pytest.raises(InvalidMessage) as info:
        validate_message(message)
    assert info.value.path == expected
    # A failed encode leaves nothing behind for the next one.
    assert same(decode(encode(before)), normalized(before))


@given(
    st.text(max_size=8),
    steps,
    st.sampled_from([1, b"k", None, 1.5, (1,), True]),
    st.lists(scalars, max_size=2),
)
def test_non_str_key_is_named_by_its_path(
    top: str, path: list[tuple[str, Any]], key: Any, filler: list[Any]
) -> None:
    buried, text = _bury({key: "value"}, path, filler)
    with pytest.raises(InvalidMessage) as info:
        encode({top: buried})
    assert info.value.path == f"message[{json.dumps(top)}]{text}[{key!r}]"
    assert info.value.reason == f"key of type {type(key).__name__} is not allowed (keys are str)"


@pytest.mark.parametrize(
    ("message", "path", "reason"),
    [
        ({"items": [1, 2, 3, {1}]}, 'message["items"][3]', "set is not allowed"),
        ({'say "hi"': {1}}, 'message["say \\"hi\\""]', "set is not allowed"),
        ({1: 2}, "message[1]", "key of type int is not allowed (keys are str)"),
        ([], "message", "must be a dict, not list"),
    ],
)
def test_error_text(message: Any, path: str, reason: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        encode(message)
    assert str(info.value) == f"{path}: {reason}"
    assert isinstance(info.value, TypeError)


def test_subclasses_are_refused() -> None:
    class Text(str):
        pass

    class Number(int):
        pass

    for message, path in [
        ({"a": Text("x")}, 'message["a"]'),
        ({"a": Number(1)}, 'message["a"]'),
        ({"a": [Text("x")]}, 'message["a"][0]'),
    ]:
        with pytest.raises(InvalidMessage) as info:
            encode(message)
        assert info.value.path == path
    with pytest.raises(InvalidMessage) as info:
        encode({Text("k"): 1})
    assert "key of type Text" in info.value.reason


def test_nesting_deeper_than_msgpack_allows_is_refused_with_a_path() -> None:
    value: Any = "bottom"
    for _ in range(600):
        value = [value]
    with pytest.raises(InvalidMessage, match="nested more than 500 levels"):
        encode({"deep": value})


# -- decode of foreign payloads ----------------------------------------------------------------


@given(st.binary())
def test_decode_of_any_bytes_is_a_message_or_invalid_message(payload: bytes) -> None:
    try:
        message = decode(payload)
    except InvalidMessage:
        return
    validate_message(message)


@pytest.mark.parametrize(
    "payload",
    [
        msgpack.packb({b"k": 1}),
        msgpack.packb({"a": msgpack.ExtType(5, b"x")}),
        msgpack.packb({"a": 1}) + b"extra",
        b"\xc1",
        msgpack.packb({1: 2}),
    ],
    ids=["bytes-key", "ext-type", "extra-data", "reserved-byte", "int-key"],
)
def test_decode_refuses_foreign_payloads(payload: bytes) -> None:
    with pytest.raises(InvalidMessage):
        decode(payload)


@pytest.mark.parametrize("payload", [msgpack.packb([1]), msgpack.packb("x"), msgpack.packb(None)])
def test_decode_refuses_a_non_dict(payload: bytes) -> None:
    with pytest.raises(InvalidMessage, match="not a dict"):
        decode(payload)
