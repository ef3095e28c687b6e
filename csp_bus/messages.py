"""Channel and group names, message validation, and the msgpack codec.

The rules are DESIGN.md section 3. Everything here is pure and synchronous so that every
layer (and services in other languages, see ``docs/``) applies exactly the same rules.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Mapping
from typing import Any, Final

import msgpack

from .errors import InvalidChannelName, InvalidGroupName, InvalidMessage, MessageTooLarge

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_NAME_LENGTH",
    "Message",
    "decode",
    "decode_trusted",
    "encode",
    "encode_unchecked",
    "new_channel_name",
    "new_process_prefix",
    "queue_key",
    "random_suffix",
    "validate_group_name",
    "validate_message",
    "validate_receive_name",
    "validate_send_name",
]

Message = dict[str, Any]

MAX_NAME_LENGTH: Final = 99  # "under 100 characters"
DEFAULT_MAX_MESSAGE_SIZE: Final = 1024 * 1024

_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
_MARKERS: Final = frozenset("!?")

# msgpack integers are 64-bit: signed down to -2**63, unsigned up to 2**64 - 1.
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1


def _check_chars(name: object, *, markers: bool, error: type[InvalidChannelName]) -> str:
    if not isinstance(name, str):
        raise error(name, f"must be a str, not {type(name).__name__}")
    if not name:
        raise error(name, "must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise error(name, f"must be under 100 characters (it has {len(name)})")
    marker_seen = False
    for char in name:
        if char in _NAME_CHARS:
            continue
        if markers and char in _MARKERS:
            if marker_seen:
                raise error(name, f"has a second {char!r}; at most one '!' or '?' is allowed")
            marker_seen = True
            continue
        raise error(name, f"character {char!r} is not allowed")
    return name


# Names are checked on every send and receive; caching the verdict keeps the check off the
# hot path. The caches are bounded: cleared when full, never grown without limit.
_SEND_OK: dict[str, str] = {}
_RECEIVE_OK: dict[str, str] = {}
_CACHE_LIMIT: Final = 4096


def _remember(cache: dict[str, str], name: str, key: str) -> str:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[name] = key
    return key


def validate_send_name(name: str) -> str:
    """Check a name that a message is sent to; return its *queue key*.

    The queue key is the name itself, except for process-local names (``prefix!rest``)
    whose messages are queued, counted and capped on their prefix ``prefix!``.
    """
    try:
        return _SEND_OK[name]
    except (KeyError, TypeError):
        pass
    _check_chars(name, markers=True, error=InvalidChannelName)
    if name[-1] in _MARKERS:
        raise InvalidChannelName(
            name,
            f"a name ending in {name[-1]!r} is a pattern for new_channel() or a receive "
            "prefix; messages go to a full name such as the one new_channel() returns",
        )
    if name[0] in _MARKERS:
        raise InvalidChannelName(name, f"must not start with {name[0]!r}")
    return _remember(_SEND_OK, name, queue_key(name))


def validate_receive_name(name: str) -> str:
    """Check a name passed to ``receive``; return its queue key.

    Process-local channels are received through their prefix only: ``receive("a.b!")``
    returns messages sent to ``a.b!x``, ``a.b!y``... (ASGI 1.x rule).
    """
    try:
        return _RECEIVE_OK[name]
    except (KeyError, TypeError):
        pass
    _check_chars(name, markers=True, error=InvalidChannelName)
    bang = name.find("!")
    if bang != -1 and bang != len(name) - 1:
        raise InvalidChannelName(
            name,
            f"a process-local channel is received through its prefix {name[: bang + 1]!r}",
        )
    if name[0] in _MARKERS:
        raise InvalidChannelName(name, f"must not start with {name[0]!r}")
    if name.endswith("?"):
        raise InvalidChannelName(
            name, "'?' names are single-reader channels: receive the full name new_channel() made"
        )
    return _remember(_RECEIVE_OK, name, name)


def validate_group_name(name: str) -> str:
    """Check a group name: the channel rules without ``!`` or ``?``."""
    return _check_chars(name, markers=False, error=InvalidGroupName)


def queue_key(name: str) -> str:
    """The queue a (valid) channel name's messages live in: ``a!b`` -> ``a!``."""
    bang = name.find("!")
    return name if bang == -1 else name[: bang + 1]


def random_suffix() -> str:
    """A fresh random suffix: 64 bits of randomness, hex, valid in any name."""
    return secrets.token_hex(8)


def new_channel_name(pattern: str) -> str:
    """``pattern`` (ending in ``!`` or ``?``) plus a fresh random suffix."""
    _check_chars(pattern, markers=True, error=InvalidChannelName)
    if pattern[-1] not in _MARKERS:
        raise InvalidChannelName(pattern, "a new_channel() pattern must end in '!' or '?'")
    if pattern[0] in _MARKERS:
        raise InvalidChannelName(pattern, f"must not start with {pattern[0]!r}")
    name = pattern + random_suffix()
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidChannelName(pattern, "too long to add a random suffix and stay under 100")
    return name


def new_process_prefix(base: str) -> str:
    """A process-local prefix ``base.<random>!`` that one reading process owns.

    A server takes one per adapter, receives on it, and names each connection's reply
    channel ``prefix + connection_id`` (DESIGN.md section 5).
    """
    prefix = f"{base}.{random_suffix()}!"
    validate_receive_name(prefix)
    return prefix


# ---------------------------------------------------------------------------- messages

_SCALARS: Final = frozenset({str, bytes, bool, float, type(None)})


def _type_name(value: object) -> str:
    return type(value).__name__


def _key_path(path: str, key: object) -> str:
    # message["items"][3]: str keys in double quotes, as JSON and Python both read them.
    return f"{path}[{json.dumps(key) if isinstance(key, str) else repr(key)}]"


def _walk(value: object, path: str, depth: int) -> None:
    # Recursion is bounded by msgpack's own nesting limit (512); deeper is refused here
    # with a path rather than a RecursionError later.
    if depth > 500:
        raise InvalidMessage(path, "nested more than 500 levels deep")
    kind = type(value)
    if kind in _SCALARS:
        return
    # Exact types only (``kind is``): subclasses would not survive the round trip.
    if kind is int and isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise InvalidMessage(path, "int does not fit in 64 bits")
        return
    if kind is dict and isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str:
                raise InvalidMessage(
                    _key_path(path, key),
                    f"key of type {_type_name(key)} is not allowed (keys are str)",
                )
            if type(item) not in _SCALARS:
                _walk(item, _key_path(path, key), depth + 1)
        return
    if (kind is list or kind is tuple) and isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if type(item) not in _SCALARS:
                _walk(item, f"{path}[{index}]", depth + 1)
        return
    raise InvalidMessage(path, f"{_type_name(value)} is not allowed")


def _plain(value: dict[Any, Any] | list[Any] | tuple[Any, ...], depth: int) -> bool:
    """True when everything nested in ``value`` (an exact dict, list or tuple) is of an
    allowed exact type, with str keys in every dict.

    The hot path's check of a nested message: it builds no paths (ints out of 64 bits
    are left to msgpack, which refuses them). False sends the message to
    :func:`_walk`, which names what is wrong.
    """
    if depth > 500:
        return False
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                return False
            kind = type(item)
            if kind not in _FLAT and (kind not in _CONTAINERS or not _plain(item, depth + 1)):
                return False
        return True
    for item in value:
        kind = type(item)
        if kind not in _FLAT and (kind not in _CONTAINERS or not _plain(item, depth + 1)):
            return False
    return True


def validate_message(message: object) -> None:
    """Raise :class:`InvalidMessage` naming the path to the first bad value.

    Allowed: a ``dict`` with ``str`` keys whose values are ``str``, ``bytes``, ``int``
    (64-bit), ``float``, ``bool``, ``None``, ``list``/``tuple`` and ``dict``, nested.
    Subclasses (an ``OrderedDict``, a ``str`` enum) are refused: they would not survive
    the round trip as themselves.
    """
    if type(message) is not dict:
        raise InvalidMessage("message", f"must be a dict, not {_type_name(message)}")
    _walk(message, "message", 0)


class _Unsupported(Exception):
    """Raised by the packer's ``default`` hook: the walker then names the bad value."""


def _default(value: object) -> object:
    if type(value) is tuple:
        return list(value)
    raise _Unsupported


_FLAT: Final = frozenset({str, bytes, bool, float, int, type(None)})
_CONTAINERS: Final = frozenset({dict, list, tuple})
_local = threading.local()


def _packer() -> msgpack.Packer:
    # One Packer per thread: Packer.pack is several times faster than packb, but a Packer
    # is not safe to share between threads (its default hook runs Python code).
    try:
        return _local.packer  # type: ignore[no-any-return]
    except AttributeError:
        _local.packer = msgpack.Packer(
            use_bin_type=True, datetime=False, strict_types=True, default=_default
        )
        return _local.packer  # type: ignore[no-any-return]


def encode(message: Message, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> bytes:
    """Validate and serialize ``message``; refuse it when bigger than ``max_size``.

    Hot path: a flat message (the common case) is checked by one loop over its items,
    and msgpack's C code checks the value types exactly (``strict_types``); a nested one
    by :func:`_plain`; only failures go through the walker, which names the bad
    value's path.
    """
    if type(message) is not dict:
        raise InvalidMessage("message", f"must be a dict, not {_type_name(message)}")
    for key, value in message.items():
        if type(key) is not str or type(value) not in _FLAT:
            if not _plain(message, 0):
                _walk(message, "message", 0)
            break
    try:
        payload: bytes = _packer().pack(message)
    except (_Unsupported, OverflowError, ValueError, TypeError) as exc:
        _walk(message, "message", 0)  # raises InvalidMessage with the path
        raise InvalidMessage("message", f"cannot be serialized: {exc}") from exc
    if len(payload) > max_size:
        raise MessageTooLarge(len(payload), max_size)
    return payload


def _refuse_ext(code: int, data: bytes) -> object:
    raise InvalidMessage("message", f"msgpack extension type {code} is not allowed")


def decode(payload: bytes) -> Message:
    """Deserialize and check a payload from any msgpack writer (another language's
    service, ``redis-cli``): it becomes a valid message or raises ``InvalidMessage``.
    Always returns a fresh object."""
    try:
        message = msgpack.unpackb(
            payload, raw=False, use_list=True, strict_map_key=True, ext_hook=_refuse_ext
        )
    except InvalidMessage:
        raise
    except (ValueError, TypeError) as exc:  # msgpack's ExtraData, FormatError, StackError...
        raise InvalidMessage("payload", f"is not a msgpack message: {exc}") from exc
    if type(message) is not dict:
        raise InvalidMessage("message", f"decoded to {_type_name(message)}, not a dict")
    for key, value in message.items():
        if type(key) is not str or type(value) not in _FLAT:
            if not _plain(message, 0):
                _walk(message, "message", 0)
            break
    return message


def decode_trusted(payload: bytes) -> Message:
    """Deserialize a payload :func:`encode` made in this process: no checks needed."""
    return msgpack.unpackb(payload, raw=False, use_list=True)  # type: ignore[no-any-return]


def encode_unchecked(message: Mapping[str, Any]) -> bytes:
    """Serialize without validation: only for messages csp-bus built itself."""
    return _packer().pack(message)  # type: ignore[no-any-return]
