"""Property tests of the channel and group name rules (DESIGN.md section 3) in
``csp_bus.messages``: every generated valid name passes, every name with one forbidden
character raises ``InvalidChannelName`` naming that character."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from csp_bus import InvalidChannelName, InvalidGroupName
from csp_bus.messages import (
    MAX_NAME_LENGTH,
    new_channel_name,
    new_process_prefix,
    queue_key,
    random_suffix,
    validate_group_name,
    validate_receive_name,
    validate_send_name,
)

ALLOWED = string.ascii_letters + string.digits + "-_."
MARKERS = "!?"

plain = st.text(alphabet=ALLOWED, min_size=1, max_size=MAX_NAME_LENGTH)


@st.composite
def marked(draw: st.DrawFn, marker: str) -> tuple[str, str]:
    """``(head + marker, tail)`` with both parts non-empty and under 100 in all."""
    head = draw(st.text(alphabet=ALLOWED, min_size=1, max_size=MAX_NAME_LENGTH - 2))
    tail = draw(st.text(alphabet=ALLOWED, min_size=1, max_size=MAX_NAME_LENGTH - len(head) - 1))
    return head + marker, tail


forbidden_char = st.characters().filter(lambda c: c not in ALLOWED and c not in MARKERS)


@given(plain)
def test_any_plain_name_is_valid_everywhere(name: str) -> None:
    assert validate_send_name(name) == name
    assert validate_receive_name(name) == name
    assert validate_group_name(name) == name
    assert queue_key(name) == name


@given(marked("!"))
def test_process_local_names(parts: tuple[str, str]) -> None:
    prefix, tail = parts
    name = prefix + tail
    assert validate_send_name(name) == prefix  # queued and capped on the prefix
    assert queue_key(name) == prefix
    assert validate_receive_name(prefix) == prefix
    with pytest.raises(InvalidChannelName, match="received through its prefix"):
        validate_receive_name(name)
    with pytest.raises(InvalidChannelName):
        validate_send_name(prefix)  # a prefix is not a destination
    with pytest.raises(InvalidGroupName):
        validate_group_name(name)


@given(marked("?"))
def test_single_reader_names(parts: tuple[str, str]) -> None:
    pattern, tail = parts
    name = pattern + tail
    assert validate_send_name(name) == name
    assert validate_receive_name(name) == name
    for check in (validate_send_name, validate_receive_name):
        with pytest.raises(InvalidChannelName):
            check(pattern)  # a bare pattern is not a channel
    with pytest.raises(InvalidGroupName):
        validate_group_name(name)


@given(plain.filter(lambda n: len(n) < MAX_NAME_LENGTH), forbidden_char, st.data())
def test_a_forbidden_character_is_named(name: str, char: str, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(name)))
    bad = name[:at] + char + name[at:]
    for check in (validate_send_name, validate_receive_name, validate_group_name):
        with pytest.raises(InvalidChannelName) as info:
            check(bad)
        assert repr(char) in info.value.reason
        assert info.value.name == bad
    with pytest.raises(InvalidChannelName) as info:
        new_channel_name(bad + "?")
    assert repr(char) in info.value.reason


@given(plain.filter(lambda n: len(n) < MAX_NAME_LENGTH), st.sampled_from(MARKERS), st.data())
def test_markers_are_not_allowed_in_group_names(
    name: str, marker: str, data: st.DataObject
) -> None:
    at = data.draw(st.integers(0, len(name)))
    with pytest.raises(InvalidGroupName) as info:
        validate_group_name(name[:at] + marker + name[at:])
    assert repr(marker) in info.value.reason
    assert "group name" in str(info.value)


@given(
    plain.filter(lambda n: len(n) <= MAX_NAME_LENGTH - 2),
    st.sampled_from(MARKERS),
    st.sampled_from(MARKERS),
    st.data(),
)
def test_a_second_marker_is_refused(
    name: str, first: str, second: str, data: st.DataObject
) -> None:
    i = data.draw(st.integers(0, len(name)))
    j = data.draw(st.integers(i, len(name)))
    bad = name[:i] + first + name[i:j] + second + name[j:]
    for check in (validate_send_name, validate_receive_name):
        with pytest.raises(InvalidChannelName) as info:
            check(bad)
        assert "second" in info.value.reason or "start with" in info.value.reason


@given(st.text(alphabet=ALLOWED + MARKERS, min_size=MAX_NAME_LENGTH + 1, max_size=300))
def test_names_of_100_characters_or_more_are_refused(name: str) -> None:
    for check in (validate_send_name, validate_receive_name, validate_group_name):
        with pytest.raises(InvalidChannelName, match="under 100"):
            check(name)


@given(st.sampled_from(MARKERS), plain.filter(lambda n: len(n) < MAX_NAME_LENGTH))
def test_a_leading_marker_is_refused(marker: str, rest: str) -> None:
    for check in (validate_send_name, validate_receive_name):
        with pytest.raises(InvalidChannelName):
            check(marker + rest)
    with pytest.raises(InvalidChannelName):
        new_channel_name(marker)


@pytest.mark.parametrize("name", [b"bytes", 3, None, ["a"], ("a",)], ids=repr)
def test_non_str_names_are_refused(name: object) -> None:
    for check in (validate_send_name, validate_receive_name, validate_group_name):
        with pytest.raises(InvalidChannelName, match="must be a str"):
            check(name)  # type: ignore[arg-type]


def test_empty_name_is_refused() -> None:
    for check in (validate_send_name, validate_receive_name, validate_group_name):
        with pytest.raises(InvalidChannelName, match="empty"):
            check("")


def test_group_errors_are_channel_errors_and_value_errors() -> None:
    with pytest.raises(InvalidGroupName) as info:
        validate_group_name("a!b")
    assert isinstance(info.value, InvalidChannelName)
    assert isinstance(info.value, ValueError)


# -- new names --------------------------------------------------------------------------------


@given(st.sampled_from(MARKERS).flatmap(lambda m: marked(m)))
def test_new_channel_name_makes_a_valid_unique_name(parts: tuple[str, str]) -> None:
    pattern = parts[0]
    if len(pattern) + len(random_suffix()) > MAX_NAME_LENGTH:
        with pytest.raises(InvalidChannelName, match="too long"):
            new_channel_name(pattern)
        return
    first, second = new_channel_name(pattern), new_channel_name(pattern)
    assert first != second
    for name in (first, second):
        assert name.startswith(pattern)
        validate_send_name(name)
        if pattern.endswith("!"):
            assert queue_key(name) == pattern
        else:
            assert validate_receive_name(name) == name


@given(plain)
def test_new_channel_pattern_must_end_in_a_marker(pattern: str) -> None:
    with pytest.raises(InvalidChannelName, match="must end in"):
        new_channel_name(pattern)


def test_random_suffix_is_valid_and_fresh() -> None:
    suffixes = {random_suffix() for _ in range(10_000)}
    assert len(suffixes) == 10_000
    assert all(set(suffix) <= set(ALLOWED) for suffix in suffixes)


@given(st.text(alphabet=ALLOWED, min_size=1, max_size=60))
def test_new_process_prefix(base: str) -> None:
    prefix = new_process_prefix(base)
    assert prefix.startswith(base + ".")
    assert prefix.endswith("!")
    assert validate_receive_name(prefix) == prefix
    assert queue_key(prefix + "conn1") == prefix
    assert new_process_prefix(base) != prefix
