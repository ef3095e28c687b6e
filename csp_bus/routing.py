"""Routing: which consumer handles a message (DESIGN.md section 6).

A route names a channel, a consumer, and optional regex *filters* on message keys::

    routes = [
        route("websocket.connect", ws_connect, path=r"^/chat/(?P<room>\\w+)/$"),
        route("websocket.receive", ws_message, path=r"^/chat/(?P<room>\\w+)/$"),
        route_class(EchoConsumer, path=r"^/echo/$"),
        include("myapp.routing", path=r"^/api"),
    ]
    router = Router(routes)

A filter matches with ``re.match`` against the message's value for that key (a ``str``,
or ``bytes`` decoded as UTF-8); named groups become keyword arguments of the consumer.
``include`` nests another route list: its filters must match a *prefix* of the value and
the inner routes see the value with that prefix stripped (``/api/users/`` reaches the
inner ``path=r"^/users/$"``). The consumer always gets the original message.

Every route is checked when the :class:`Router` is built: a bad regex, an unknown
consumer import path or a bad channel name raises :class:`RoutingError` naming the
route's position (``routes[2] > routes[0]``), so a worker fails at start-up, not at the
first message.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from .errors import UsageError
from .messages import validate_receive_name

__all__ = [
    "Include",
    "Match",
    "Route",
    "RouteClass",
    "Router",
    "RoutingError",
    "import_object",
    "include",
    "route",
    "route_class",
]

Consumer: TypeAlias = Callable[..., Any]


class RoutingError(UsageError):
    """A route list is invalid; the text names the route's position."""


def import_object(path: str) -> Any:
    """Import ``"package.module:attribute"`` or ``"package.module.attribute"``.

    Raises ``ImportError``/``AttributeError`` with the path in the text.
    """
    if ":" in path:
        module_name, _, attribute = path.partition(":")
    else:
        module_name, _, attribute = path.rpartition(".")
        if not module_name:
            return importlib.import_module(path)
    module = importlib.import_module(module_name)
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AttributeError(f"{module_name!r} has no attribute {attribute!r}") from None
    return target


def _compile_filters(filters: Mapping[str, str | re.Pattern[str]]) -> dict[str, re.Pattern[str]]:
    compiled: dict[str, re.Pattern[str]] = {}
    for key, pattern in filters.items():
        if isinstance(pattern, re.Pattern):
            compiled[key] = pattern
        elif isinstance(pattern, str):
            try:
                compiled[key] = re.compile(pattern)
            except re.error as exc:
                raise RoutingError(f"filter {key}={pattern!r} is not a valid regex: {exc}") from exc
        else:
            raise RoutingError(
                f"filter {key}={pattern!r} must be a regex string, not {type(pattern).__name__}"
            )
    return compiled


def _value(content: Mapping[str, Any], key: str) -> str | None:
    value = content.get(key)
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def _match_filters(
    filters: Mapping[str, re.Pattern[str]], content: Mapping[str, Any], *, prefix: bool = False
) -> tuple[dict[str, str], dict[str, str]] | None:
    """``(kwargs, stripped)`` if every filter matches, else None.

    ``stripped`` maps each filtered key to its value minus the matched part (include).
    """
    kwargs: dict[str, str] = {}
    stripped: dict[str, str] = {}
    for key, regex in filters.items():
        value = _value(content, key)
        if value is None:
            return None
        found = regex.match(value)
        if found is None:
            return None
        kwargs.update({k: v for k, v in found.groupdict().items() if v is not None})
        if prefix:
            stripped[key] = value[found.end() :]
    return kwargs, stripped


@dataclass(frozen=True)
class Match:
    """What :meth:`Router.match` found: the consumer, its kwargs, the route's label."""

    consumer: Consumer
    kwargs: dict[str, str]
    route: str


@dataclass
class Route:
    """``route(channel, consumer, **filters)``; built by :func:`route`."""

    channel: str
    consumer: Consumer | str
    filters: dict[str, str | re.Pattern[str]] = field(default_factory=dict)

    def _resolve(self) -> tuple[Consumer, dict[str, re.Pattern[str]]]:
        try:
            validate_receive_name(self.channel)
        except UsageError as exc:
            raise RoutingError(str(exc)) from exc
        consumer = self.consumer
        if isinstance(consumer, str):
            try:
                consumer = import_object(consumer)
            except (ImportError, AttributeError, ValueError) as exc:
                raise RoutingError(f"cannot import consumer {self.consumer!r}: {exc}") from exc
        if not callable(consumer):
            raise RoutingError(f"consumer {consumer!r} is not callable")
        return consumer, _compile_filters(self.filters)

    def label(self) -> str:
        name = self.consumer if isinstance(self.consumer, str) else _callable_name(self.consumer)
        filters = "".join(f", {k}={_pattern_text(v)!r}" for k, v in self.filters.items())
        return f"route({self.channel!r}, {name}{filters})"


@dataclass
class RouteClass:
    """``route_class(ConsumerClass, **filters)``: one route per channel the class names."""

    consumer_class: type[Any] | str
    filters: dict[str, str | re.Pattern[str]] = field(default_factory=dict)

    def label(self) -> str:
        cls = self.consumer_class
        name = cls if isinstance(cls, str) else _callable_name(cls)
        filters = "".join(f", {k}={_pattern_text(v)!r}" for k, v in self.filters.items())
        return f"route_class({name}{filters})"


@dataclass
class Include:
    """``include(routes, **prefix_filters)``: nested routes behind prefix filters."""

    routes: Any
    filters: dict[str, str | re.Pattern[str]] = field(default_factory=dict)

    def label(self) -> str:
        name = self.routes if isinstance(self.routes, str) else type(self.routes).__name__
        filters = "".join(f", {k}={_pattern_text(v)!r}" for k, v in self.filters.items())
        return f"include({name!r}{filters})"


def _pattern_text(pattern: str | re.Pattern[str]) -> str:
    return pattern.pattern if isinstance(pattern, re.Pattern) else pattern


def _callable_name(obj: object) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or repr(obj)
    return f"{module}.{name}" if module else str(name)


def route(channel: str, consumer: Consumer | str, **filters: str | re.Pattern[str]) -> Route:
    """Route messages on ``channel`` whose keys match ``filters`` to ``consumer``.

    ``consumer`` is a callable ``consumer(message, **kwargs)`` (sync: run in a worker
    thread; ``async def``: run on the worker's Trio loop) or its import path
    (``"app.consumers:chat_receive"``). Each filter is a regex matched at the start of
    that message key's value; its named groups become keyword arguments.
    """
    return Route(channel, consumer, dict(filters))


def route_class(consumer_class: type[Any] | str, **filters: str | re.Pattern[str]) -> RouteClass:
    """Route every channel a class-based consumer declares (``channel_names()``)."""
    return RouteClass(consumer_class, dict(filters))


def include(routes: Any, **filters: str | re.Pattern[str]) -> Include:
    """Nest ``routes`` (a list, a :class:`Router`, or an import path such as
    ``"app.routing"`` / ``"app.routing:chat_routes"``) behind prefix ``filters``.

    Each filter should start with ``^``; the matched part is stripped from that key's
    value before the inner routes are tried, and named groups are passed on as kwargs.
    """
    return Include(routes, dict(filters))


# -- the compiled form -------------------------------------------------------------------


_Level: TypeAlias = tuple[dict[str, re.Pattern[str]], bool]


@dataclass(frozen=True)
class _Leaf:
    channel: str
    consumer: Consumer
    # (filters, is_include_prefix) per level: outer include filters first, then the route's
    filters: tuple[_Level, ...]
    label: str


def load_routes(source: Any) -> Any:
    """Resolve an import path to the route list or router it names."""
    if not isinstance(source, str):
        return source
    if ":" in source:
        return import_object(source)
    module = importlib.import_module(source)
    for name in ("router", "routes", "channel_routing"):
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(
        f"module {source!r} has no 'router', 'routes' or 'channel_routing'; "
        f"name the attribute as {source}:NAME"
    )


class Router:
    """A compiled route list: answers *which channels* and *which consumer*.

    Accepts a list of :func:`route`/:func:`route_class`/:func:`include` entries, another
    Router, a dict ``{channel: consumer}``, or an import path. Routes are tried in order;
    the first whose channel and filters match wins.
    """

    def __init__(self, routes: Any) -> None:
        self._leaves: list[_Leaf] = []
        self._by_channel: dict[str, list[_Leaf]] = {}
        self._compile(routes, (), "routes", ())
        for leaf in self._leaves:
            self._by_channel.setdefault(leaf.channel, []).append(leaf)
        self.channels: frozenset[str] = frozenset(self._by_channel)

    @classmethod
    def of(cls, routes: Any) -> Router:
        """``routes`` if it is a Router already, else ``Router(routes)``."""
        return routes if isinstance(routes, Router) else cls(routes)

    def _compile(
        self,
        routes: Any,
        outer: tuple[_Level, ...],
        where: str,
        seen: tuple[int, ...],
    ) -> None:
        if isinstance(routes, str):
            try:
                routes = load_routes(routes)
            except (ImportError, AttributeError, ValueError) as exc:
                raise RoutingError(f"{where}: cannot import routes: {exc}") from exc
        if isinstance(routes, Router):
            for leaf in routes._leaves:
                self._leaves.append(
                    _Leaf(leaf.channel, leaf.consumer, outer + leaf.filters, leaf.label)
                )
            return
        if id(routes) in seen:
            raise RoutingError(f"{where}: include() loops back to a route list that includes it")
        seen = (*seen, id(routes))
        if isinstance(routes, Mapping):
            routes = [route(channel, consumer) for channel, consumer in routes.items()]
        if not isinstance(routes, Iterable):
            raise RoutingError(
                f"{where}: expected a list of routes, a Router or a dict, "
                f"not {type(routes).__name__}"
            )
        for index, entry in enumerate(routes):
            position = f"{where}[{index}]"
            try:
                self._compile_entry(entry, outer, position, seen)
            except RoutingError as exc:
                if str(exc).startswith(position):
                    raise
                raise RoutingError(f"{position} {_entry_label(entry)}: {exc}") from exc

    def _compile_entry(
        self,
        entry: Any,
        outer: tuple[_Level, ...],
        position: str,
        seen: tuple[int, ...],
    ) -> None:
        if isinstance(entry, Route):
            consumer, filters = entry._resolve()
            self._leaves.append(
                _Leaf(
                    entry.channel,
                    consumer,
                    (*outer, (filters, False)),
                    f"{position} {entry.label()}",
                )
            )
        elif isinstance(entry, RouteClass):
            cls = entry.consumer_class
            if isinstance(cls, str):
                try:
                    cls = import_object(cls)
                except (ImportError, AttributeError, ValueError) as exc:
                    raise RoutingError(f"cannot import consumer class {cls!r}: {exc}") from exc
            names = getattr(cls, "channel_names", None)
            as_consumer = getattr(cls, "as_consumer", None)
            if not callable(names) or not callable(as_consumer):
                raise RoutingError(
                    f"{cls!r} is not a class-based consumer (it needs channel_names() and "
                    "as_consumer(); subclass csp_bus.consumers.BaseConsumer)"
                )
            filters = _compile_filters(entry.filters)
            consumer = as_consumer()
            for channel in sorted(names()):
                try:
                    validate_receive_name(channel)
                except UsageError as exc:
                    raise RoutingError(str(exc)) from exc
                self._leaves.append(
                    _Leaf(
                        channel, consumer, (*outer, (filters, False)), f"{position} {entry.label()}"
                    )
                )
        elif isinstance(entry, Include):
            filters = _compile_filters(entry.filters)
            self._compile(entry.routes, (*outer, (filters, True)), position, seen)
        else:
            raise RoutingError(
                f"{position}: expected route(), route_class() or include(), got {entry!r}"
            )

    def match(self, channel: str, content: Mapping[str, Any]) -> Match | None:
        """The first route for ``channel`` whose filters all match ``content``, or None."""
        leaves = self._by_channel.get(channel)
        if not leaves:
            return None
        for leaf in leaves:
            found = _match_leaf(leaf, content)
            if found is not None:
                return Match(leaf.consumer, found, leaf.label)
        return None

    def routes_for(self, channel: str) -> list[str]:
        """Labels of the routes listening on ``channel`` (for logs and ``--help`` output)."""
        return [leaf.label for leaf in self._by_channel.get(channel, ())]

    def __repr__(self) -> str:
        return f"<Router {len(self._leaves)} routes on {sorted(self.channels)}>"


def _entry_label(entry: Any) -> str:
    label = getattr(entry, "label", None)
    return label() if callable(label) else repr(entry)


def _match_leaf(leaf: _Leaf, content: Mapping[str, Any]) -> dict[str, str] | None:
    kwargs: dict[str, str] = {}
    view: Mapping[str, Any] = content
    for filters, is_prefix in leaf.filters:
        if not filters:
            continue
        found = _match_filters(filters, view, prefix=is_prefix)
        if found is None:
            return None
        kwargs.update(found[0])
        if is_prefix:  # an include level: the inner routes see the rest of the value
            view = {**view, **found[1]}
    return kwargs
