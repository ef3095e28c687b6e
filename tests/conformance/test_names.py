"""Channel and group names (DESIGN.md section 3, "Channel names") as every operation
applies them, and ``new_channel``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from csp_bus import ChannelLayer, InvalidChannelName, InvalidGroupName, UsageError

Operation = Callable[[ChannelLayer, str], Awaitable[Any]]

# Every operation that takes a channel name to send to (a full name).
SEND_NAME_OPERATIONS: dict[str, Operation] = {
    "send": lambda layer, name: layer.send(name, {}),
    "send_wait": lambda layer, name: layer.send_wait(name, {}, timeout=0.1),
    "group_add": lambda layer, name: layer.group_add("g", name),
    "group_discard": lambda layer, name: layer.group_discard("g", name),
}
# Every operation that takes a name to receive from (a full name or a `!` prefix).
RECEIVE_NAME_OPERATIONS: dict[str, Operation] = {
    "receive": lambda layer, name: layer.receive(name),
    "receive_nowait": lambda layer, name: layer.receive_nowait(name),
    "receive-among-others": lambda layer, name: layer.receive_nowait("ok", name, "fine"),
}
GROUP_NAME_OPERATIONS: dict[str, Operation] = {
    "group_add": lambda layer, name: layer.group_add(name, "member"),
    "group_discard": lambda layer, name: layer.group_discard(name, "member"),
    "send_group": lambda layer, name: layer.send_group(name, {}),
}
ALL_CHANNEL_OPERATIONS = {
    **{f"{k}": v for k, v in SEND_NAME_OPERATIONS.items()},
    **{f"{k}": v for k, v in RECEIVE_NAME_OPERATIONS.items()},
}

# name -> a fragment the error must contain (the offending character, or the rule)
BAD_FOR_EVERY_OPERATION = {
    "with space": "' '",
    "slash/name": "'/'",
    "colon:name": "':'",
    "star*": "'*'",
    "tab\tname": "'\\t'",
    "newline\n": "'\\n'",
    "ünïcode": "'ü'",
    "emoji🚌": "'🚌'",
    "percent%20": "'%'",
    "hash#x": "'#'",
    "a!b!c": "second '!'",
    "a?b?c": "second '?'",
    "a!b?c": "second '?'",
    "a?b!c": "second '!'",
    "x" * 100: "under 100",
    "x" * 250: "under 100",
    "": "empty",
}


@pytest.mark.parametrize("operation", ALL_CHANNEL_OPERATIONS, ids=str)
@pytest.mark.parametrize("name", BAD_FOR_EVERY_OPERATION, ids=repr)
async def test_bad_channel_name_is_refused_naming_the_problem(
    layer: ChannelLayer, operation: str, name: str
) -> None:
    with pytest.raises(InvalidChannelName) as info:
        await ALL_CHANNEL_OPERATIONS[operation](layer, name)
    assert BAD_FOR_EVERY_OPERATION[name] in str(info.value)
    assert info.value.name == name


@pytest.mark.parametrize("operation", ALL_CHANNEL_OPERATIONS, ids=str)
@pytest.mark.parametrize("name", [b"bytes", 17, None], ids=repr)
async def test_non_str_channel_name_is_refused(
    layer: ChannelLayer, operation: str, name: Any
) -> None:
    with pytest.raises(InvalidChannelName, match="must be a str"):
        await ALL_CHANNEL_OPERATIONS[operation](layer, name)


async def test_invalid_channel_name_is_a_value_error_and_usage_error(layer: ChannelLayer) -> None:
    with pytest.raises(ValueError) as info:
        await layer.send("bad name", {})
    assert isinstance(info.value, UsageError)


async def test_name_of_99_characters_is_fine(layer: ChannelLayer) -> None:
    name = "n" * 99
    await layer.send(name, {"ok": True})
    assert await layer.receive(name) == (name, {"ok": True})


async def test_every_allowed_character(layer: ChannelLayer) -> None:
    name = "abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789."
    await layer.send(name, {})
    assert await layer.receive(name) == (name, {})


@pytest.mark.parametrize("operation", SEND_NAME_OPERATIONS, ids=str)
@pytest.mark.parametrize("name", ["reply!", "body?", "!x", "?x"])
async def test_patterns_and_leading_markers_are_not_send_targets(
    layer: ChannelLayer, operation: str, name: str
) -> None:
    with pytest.raises(InvalidChannelName):
        await SEND_NAME_OPERATIONS[operation](layer, name)


@pytest.mark.parametrize("operation", RECEIVE_NAME_OPERATIONS, ids=str)
@pytest.mark.parametrize("name", ["a!x", "a.b!conn17", "body?", "!x", "?x", "!"])
async def test_bad_receive_names(layer: ChannelLayer, operation: str, name: str) -> None:
    """A process-local channel is received through its prefix only (``a!``, never
    ``a!x``); a bare ``?`` pattern is not a channel."""
    with pytest.raises(InvalidChannelName):
        await RECEIVE_NAME_OPERATIONS[operation](layer, name)


async def test_receiving_a_full_process_local_name_names_the_prefix(layer: ChannelLayer) -> None:
    with pytest.raises(InvalidChannelName, match=r"'a\.b!'"):
        await layer.receive("a.b!conn17")


@pytest.mark.parametrize("operation", GROUP_NAME_OPERATIONS, ids=str)
@pytest.mark.parametrize(
    ("name", "fragment"),
    [("room!", "'!'"), ("room?", "'?'"), ("ro!om", "'!'"), ("a b", "' '"), ("", "empty")],
)
async def test_bad_group_names(
    layer: ChannelLayer, operation: str, name: str, fragment: str
) -> None:
    with pytest.raises(InvalidGroupName) as info:
        await GROUP_NAME_OPERATIONS[operation](layer, name)
    assert fragment in str(info.value)
    assert "group name" in str(info.value)


async def test_group_name_of_99_characters_is_fine(layer: ChannelLayer) -> None:
    await layer.group_add("g" * 99, "member")
    await layer.send_group("g" * 99, {"n": 1})
    assert await layer.receive("member") == ("member", {"n": 1})
    with pytest.raises(InvalidGroupName, match="under 100"):
        await layer.group_add("g" * 100, "member")


async def test_bad_name_is_refused_before_the_message_is_looked_at(layer: ChannelLayer) -> None:
    with pytest.raises(InvalidChannelName):
        await layer.send("bad name", {"not": {"a", "valid", "message"}})


async def test_receive_with_no_channel_is_a_value_error(layer: ChannelLayer) -> None:
    with trio.fail_after(1), pytest.raises(ValueError):
        await layer.receive()


async def test_receive_nowait_with_no_channel_is_a_value_error(layer: ChannelLayer) -> None:
    with pytest.raises(ValueError):
        await layer.receive_nowait()


async def test_no_channel_is_a_value_error_after_other_receives(layer: ChannelLayer) -> None:
    await layer.receive_nowait("warm")
    with trio.fail_after(1), pytest.raises(ValueError):
        await layer.receive()
    with pytest.raises(ValueError):
        await layer.receive_nowait()


async def test_listen_with_no_channel_is_a_value_error(layer: ChannelLayer) -> None:
    with pytest.raises(ValueError):
        layer.listen()


# -- new_channel ---------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["x?", "x!", "http.request.body?", "http.response.k2j3!"])
async def test_new_channel_returns_fresh_valid_names(layer: ChannelLayer, pattern: str) -> None:
    names = {await layer.new_channel(pattern) for _ in range(1000)}
    assert len(names) == 1000
    for name in names:
        assert name.startswith(pattern)
        assert len(name) > len(pattern)
        assert len(name) < 100
        assert name.count("!") + name.count("?") == 1


async def test_new_single_reader_channel_carries_messages(layer: ChannelLayer) -> None:
    name = await layer.new_channel("http.request.body?")
    await layer.send(name, {"content": b"chunk1"})
    await layer.send(name, {"content": b"chunk2"})
    assert await layer.receive(name) == (name, {"content": b"chunk1"})
    assert await layer.receive(name) == (name, {"content": b"chunk2"})


async def test_new_process_local_channel_is_read_through_its_prefix(layer: ChannelLayer) -> None:
    name = await layer.new_channel("daphne.response!")
    await layer.send(name, {"n": 1})
    assert await layer.receive("daphne.response!") == (name, {"n": 1})


async def test_new_channel_result_is_usable_whatever_the_pattern(layer: ChannelLayer) -> None:
    """Whatever new_channel() returns can be sent to (or it raised InvalidChannelName)."""
    for pattern in ["!", "?", "a!", "a?", "-!", "._?", "9?"]:
        try:
            name = await layer.new_channel(pattern)
        except InvalidChannelName:
            continue
        await layer.send(name, {"p": pattern})
        receive_name = name if "?" in name else pattern
        assert await layer.receive(receive_name) == (name, {"p": pattern})


@pytest.mark.parametrize(
    "pattern",
    [
        "x",  # no marker
        "x!y",  # marker not at the end
        "x?y",
        "x!?",  # two markers
        "x!!",
        "bad name?",
        "bad$!",
        "",
        "!",  # nothing before the marker: the name could not be sent to
        "?",
        "p" * 98 + "?",  # no room for a suffix under 100 characters
    ],
    ids=repr,
)
async def test_new_channel_refuses_a_bad_pattern(layer: ChannelLayer, pattern: str) -> None:
    with pytest.raises(InvalidChannelName):
        await layer.new_channel(pattern)
