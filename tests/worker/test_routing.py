"""Routing: regex filters with named groups, include() prefix stripping, start-up errors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from csp_bus.consumers import BaseConsumer, WebsocketConsumer
from csp_bus.routing import Router, RoutingError, include, route, route_class


def connect(message, **kwargs):
    return "connect", kwargs


def receive(message, **kwargs):
    return "receive", kwargs


def fallback(message, **kwargs):
    return "fallback", kwargs


def test_regex_filters_give_named_groups_as_kwargs() -> None:
    router = Router(
        [
            route("websocket.receive", receive, path=r"^/chat/(?P<room>\w+)/$"),
            route("websocket.receive", fallback),
        ]
    )
    match = router.match("websocket.receive", {"path": "/chat/lobby/"})
    assert match is not None
    assert match.consumer is receive
    assert match.kwargs == {"room": "lobby"}
    # No match on the first filter: the next route on the channel wins.
    other = router.match("websocket.receive", {"path": "/other/"})
    assert other is not None and other.consumer is fallback and other.kwargs == {}
    assert router.channels == {"websocket.receive"}


def test_every_filter_must_match_and_missing_keys_do_not() -> None:
    router = Router([route("x", receive, path=r"^/a/$", method=r"^GET$")])
    assert router.match("x", {"path": "/a/", "method": "GET"}) is not None
    assert router.match("x", {"path": "/a/", "method": "POST"}) is None
    assert router.match("x", {"path": "/a/"}) is None
    assert router.match("y", {"path": "/a/", "method": "GET"}) is None


def test_bytes_values_match_as_utf8() -> None:
    router = Router([route("x", receive, path=r"^/(?P<name>\w+)$")])
    match = router.match("x", {"path": b"/abc"})
    assert match is not None and match.kwargs == {"name": "abc"}
    assert router.match("x", {"path": b"\xff"}) is None


def test_include_strips_the_matched_prefix_for_inner_routes() -> None:
    inner = [
        route("websocket.connect", connect, path=r"^/(?P<room>\w+)/$"),
        route("websocket.receive", receive, path=r"^/(?P<room>\w+)/$"),
    ]
    router = Router([include(inner, path=r"^/chat/(?P<tenant>\w+)")])
    match = router.match("websocket.connect", {"path": "/chat/acme/lobby/"})
    assert match is not None and match.consumer is connect
    assert match.kwargs == {"tenant": "acme", "room": "lobby"}
    # The inner regex sees "/lobby/", never the full path.
    assert router.match("websocket.connect", {"path": "/lobby/"}) is None
    assert router.channels == {"websocket.connect", "websocket.receive"}


def test_nested_includes_strip_in_turn() -> None:
    router = Router(
        [include([include([route("c", receive, path=r"^/x$")], path=r"^/b")], path=r"^/a")]
    )
    assert router.match("c", {"path": "/a/b/x"}) is not None
    assert router.match("c", {"path": "/a/x"}) is None


def test_include_by_import_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "routing_fixture_app.py").write_text(
        textwrap.dedent(
            """
            from csp_bus.routing import route

            def consumer(message, **kwargs):
                pass

            routes = [route("http.request", consumer, path=r"^/(?P<page>\\w+)$")]
            other = [route("http.request", "routing_fixture_app:consumer")]
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        router = Router([include("routing_fixture_app", path=r"^/api")])
        match = router.match("http.request", {"path": "/api/users"})
        assert match is not None and match.kwargs == {"page": "users"}
        by_attribute = Router("routing_fixture_app:other")
        assert by_attribute.match("http.request", {}) is not None
    finally:
        sys.modules.pop("routing_fixture_app", None)


def test_dict_and_router_inputs() -> None:
    inner = Router({"a": connect, "b": receive})
    router = Router([include(inner, path=r"^/p")])
    assert router.match("a", {"path": "/p"}) is not None
    assert router.match("a", {"path": "/q"}) is None
    assert Router.of(inner) is inner


class Chat(WebsocketConsumer):
    pass


class Plain(BaseConsumer):
    method_mapping = {"thumbnail.make": "make"}

    def make(self, message, **kwargs):
        return ("made", kwargs)


def test_route_class_listens_on_the_class_channels() -> None:
    router = Router([route_class(Chat, path=r"^/chat/$"), route_class(Plain)])
    assert router.channels == {
        "websocket.connect",
        "websocket.receive",
        "websocket.disconnect",
        "thumbnail.make",
    }
    assert router.match("websocket.receive", {"path": "/chat/"}) is not None
    assert router.match("websocket.receive", {"path": "/x/"}) is None


def test_bad_regex_names_the_route_position() -> None:
    with pytest.raises(RoutingError) as info:
        Router([route("a", connect), include([route("b", receive, path=r"^(unclosed")])])
    text = str(info.value)
    assert "routes[1][0]" in text
    assert "not a valid regex" in text
    assert "route('b'" in text


def test_unknown_consumer_path_names_the_route_position() -> None:
    with pytest.raises(RoutingError) as info:
        Router([route("a", connect), route("b", "no_such_module_here.consumer")])
    assert "routes[1]" in str(info.value)
    assert "cannot import consumer 'no_such_module_here.consumer'" in str(info.value)


def test_other_start_up_errors() -> None:
    with pytest.raises(RoutingError, match=r"routes\[0\].*not allowed"):
        Router([route("bad channel", connect)])
    with pytest.raises(RoutingError, match=r"routes\[0\].*not callable"):
        Router([route("a", 42)])  # type: ignore[arg-type]
    with pytest.raises(RoutingError, match=r"routes\[0\].*expected route\(\)"):
        Router(["not a route"])
    with pytest.raises(RoutingError, match=r"routes\[0\].*not a class-based consumer"):
        Router([route_class(int)])
    with pytest.raises(RoutingError, match="cannot import routes"):
        Router("no_such_module_here")
    loop: list[object] = []
    loop.append(include(loop))
    with pytest.raises(RoutingError, match="loops back"):
        Router(loop)


def test_method_mapping_is_checked_when_the_class_is_defined() -> None:
    with pytest.raises(TypeError, match="not a method"):

        class Broken(BaseConsumer):
            method_mapping = {"a": "missing"}
