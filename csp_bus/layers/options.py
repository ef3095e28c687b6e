"""Layer options, parsed once from a URL into a frozen object.

``memory://?capacity=50&expiry=30`` and ``redis://host:6379/0?capacity=100`` share these
parameters; a layer may accept more (its ``URL_PARAMETERS``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidLayerURL
from ..messages import DEFAULT_MAX_MESSAGE_SIZE

__all__ = ["COMMON_PARAMETERS", "LayerOptions", "parse_channel_capacity"]

#: parameter -> (converter, description) accepted by every layer URL.
COMMON_PARAMETERS: dict[str, str] = {
    "capacity": "messages a channel holds before send raises ChannelFull (default 100)",
    "channel_capacity": "per-pattern capacities, e.g. http.request:200,websocket.send*:20",
    "expiry": "seconds an unreceived message lives (default 60)",
    "group_expiry": "seconds a group membership lives without a refresh (default 86400)",
    "max_message_size": "largest serialized message in bytes (default 1048576)",
}


def parse_channel_capacity(text: str) -> dict[str, int]:
    """``"http.request:200,websocket.send*:20"`` -> ``{"http.request": 200, ...}``."""
    result: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        pattern, sep, number = item.rpartition(":")
        if not sep or not pattern:
            raise InvalidLayerURL(
                f"channel_capacity item {item!r} must look like PATTERN:NUMBER "
                "(e.g. http.request:200,websocket.send*:20)"
            )
        result[pattern] = _positive_int("channel_capacity", number)
    return result


def _positive_int(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidLayerURL(f"parameter {name}={text!r} must be an integer") from None
    if value <= 0:
        raise InvalidLayerURL(f"parameter {name}={text!r} must be positive")
    return value


def _positive_float(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidLayerURL(f"parameter {name}={text!r} must be a number") from None
    if not value > 0 or value == float("inf"):
        raise InvalidLayerURL(f"parameter {name}={text!r} must be a positive, finite number")
    return value


@dataclass(frozen=True, kw_only=True)
class LayerOptions:
    """What every layer honours. Frozen: built once at the edge, passed down."""

    capacity: int = 100
    channel_capacity: Mapping[str, int] = field(default_factory=dict)
    expiry: float = 60.0
    group_expiry: float = 86400.0
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE

    def __post_init__(self) -> None:
        if self.capacity <= 0:
            raise ValueError("capacity must be positive")
        if self.expiry <= 0 or self.group_expiry <= 0:
            raise ValueError("expiry and group_expiry must be positive")
        if self.max_message_size <= 0:
            raise ValueError("max_message_size must be positive")
        for pattern, value in self.channel_capacity.items():
            if value <= 0:
                raise ValueError(f"channel_capacity[{pattern!r}] must be positive")
        # Patterns are globs (fnmatch); a plain name also matches as an exact name.
        compiled = tuple(
            (re.compile(fnmatch.translate(pattern)), value)
            for pattern, value in self.channel_capacity.items()
        )
        object.__setattr__(self, "_compiled", compiled)

    def capacity_for(self, key: str) -> int:
        """Capacity of a queue key: the first matching pattern, else ``capacity``."""
        for regex, value in self._compiled:  # type: ignore[attr-defined]
            if regex.match(key):
                return value  # type: ignore[no-any-return]
        return self.capacity

    @classmethod
    def from_query(
        cls, query: Mapping[str, str], *, layer: str, extra: Mapping[str, str] | None = None
    ) -> tuple[LayerOptions, dict[str, str]]:
        """Split URL query parameters into common options and the layer's own ones.

        Unknown parameters are an :class:`InvalidLayerURL` listing what is accepted.
        """
        extra = extra or {}
        accepted = {**COMMON_PARAMETERS, **extra}
        unknown = sorted(set(query) - set(accepted))
        if unknown:
            listing = "\n".join(f"  {name}: {text}" for name, text in accepted.items())
            raise InvalidLayerURL(
                f"unknown parameter(s) {', '.join(unknown)} for a {layer} layer; "
                f"accepted parameters:\n{listing}"
            )
        converters: dict[str, Callable[[str, str], Any]] = {
            "capacity": _positive_int,
            "expiry": _positive_float,
            "group_expiry": _positive_float,
            "max_message_size": _positive_int,
            "channel_capacity": lambda _name, text: parse_channel_capacity(text),
        }
        common = {
            name: converters[name](name, value)
            for name, value in query.items()
            if name in COMMON_PARAMETERS
        }
        own = {name: value for name, value in query.items() if name not in COMMON_PARAMETERS}
        return cls(**common), own
