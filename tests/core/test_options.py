"""Layer URLs: ``open_layer`` picks the layer by scheme and parses the common parameters
(``csp_bus.layers.options``); anything it cannot use is an ``InvalidLayerURL`` that lists
what is accepted."""

from __future__ import annotations

import dataclasses

import pytest

from csp_bus import InvalidLayerURL, LayerOptions, UsageError, open_layer
from csp_bus.layers import layer_class, normalize_url
from csp_bus.layers.memory import MemoryLayer
from csp_bus.layers.options import COMMON_PARAMETERS, parse_channel_capacity


async def _open_error(url: str) -> InvalidLayerURL:
    with pytest.raises(InvalidLayerURL) as info:
        async with open_layer(url):
            pytest.fail("open_layer yielded a layer for a bad URL")
    return info.value


@pytest.mark.parametrize("url", ["nope://", "amqp://localhost:5672", "Memcached://x"])
async def test_unknown_scheme_lists_the_accepted_ones(url: str) -> None:
    error = await _open_error(url)
    text = str(error)
    assert "unknown layer scheme" in text
    assert repr(url.split("://")[0].lower()) in text
    for scheme in ["memory://", "redis://", "rediss://", "unix://", "redis+sentinel://"]:
        assert scheme in text


@pytest.mark.parametrize("url", ["memory", "", "localhost:6379", "/tmp/redis.sock"])
async def test_url_without_a_scheme(url: str) -> None:
    error = await _open_error(url)
    assert "SCHEME://" in str(error)
    assert "memory://" in str(error)


async def test_not_a_string() -> None:
    with pytest.raises(InvalidLayerURL):
        layer_class(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("query", ["bogus=1", "capacity=5&bogus=1&other=2", "Capacity=5"])
async def test_unknown_parameter_lists_every_accepted_one(query: str) -> None:
    error = await _open_error(f"memory://?{query}")
    text = str(error)
    assert "unknown parameter" in text
    for name in query.split("&"):
        key = name.split("=")[0]
        if key not in COMMON_PARAMETERS:
            assert key in text.split(";")[0]
    for name, description in COMMON_PARAMETERS.items():
        assert f"{name}: {description}" in text


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("capacity=abc", "capacity='abc' must be an integer"),
        ("capacity=", "capacity='' must be an integer"),
        ("capacity=1.5", "must be an integer"),
        ("capacity=0", "capacity='0' must be positive"),
        ("capacity=-3", "must be positive"),
        ("max_message_size=big", "must be an integer"),
        ("max_message_size=0", "must be positive"),
        ("expiry=soon", "expiry='soon' must be a number"),
        ("expiry=0", "positive, finite"),
        ("expiry=-1", "positive, finite"),
        ("expiry=inf", "positive, finite"),
        ("expiry=nan", "positive, finite"),
        ("group_expiry=0", "positive, finite"),
        ("group_expiry=x", "must be a number"),
        ("channel_capacity=http.request", "PATTERN:NUMBER"),
        ("channel_capacity=:5", "PATTERN:NUMBER"),
        ("channel_capacity=a:0", "must be positive"),
        ("channel_capacity=a:x", "must be an integer"),
        ("channel_capacity=a:1,b", "PATTERN:NUMBER"),
    ],
)
async def test_bad_value_says_what_is_accepted(query: str, fragment: str) -> None:
    error = await _open_error(f"memory://?{query}")
    assert fragment in str(error)


@pytest.mark.parametrize(
    "url", ["memory://host", "memory://host:1/", "memory:///path", "memory://a@b"]
)
async def test_memory_url_names_no_host_or_path(url: str) -> None:
    error = await _open_error(url)
    assert "names no host or path" in str(error)


async def test_invalid_layer_url_is_a_usage_error_and_value_error() -> None:
    error = await _open_error("nope://")
    assert isinstance(error, UsageError)
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    "url", ["memory://", "memory:///", "memory://?", "MEMORY://", "Memory:///?"]
)
async def test_memory_url_forms(url: str) -> None:
    async with open_layer(url) as layer:
        assert isinstance(layer, MemoryLayer)
        assert layer.options == LayerOptions()


async def test_parameters_reach_the_layer() -> None:
    url = (
        "memory://?capacity=50&expiry=30&group_expiry=7.5&max_message_size=4096"
        "&channel_capacity=http.request:200,websocket.send*:20"
    )
    async with open_layer(url) as layer:
        assert layer.options == LayerOptions(
            capacity=50,
            expiry=30.0,
            group_expiry=7.5,
            max_message_size=4096,
            channel_capacity={"http.request": 200, "websocket.send*": 20},
        )


async def test_percent_encoded_values() -> None:
    async with open_layer("memory://?channel_capacity=reply%21%3A3%2Cws.%2A%3A2") as layer:
        assert dict(layer.options.channel_capacity) == {"reply!": 3, "ws.*": 2}


def test_layer_class_by_scheme() -> None:
    assert layer_class("memory://") is MemoryLayer
    assert layer_class("MEMORY://?capacity=1") is MemoryLayer


def test_defaults() -> None:
    options = LayerOptions()
    assert options.capacity == 100
    assert options.expiry == 60
    assert options.group_expiry == 86400
    assert options.max_message_size == 1024 * 1024
    assert dict(options.channel_capacity) == {}


def test_options_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        LayerOptions().capacity = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"capacity": 0},
        {"expiry": 0},
        {"group_expiry": -1},
        {"max_message_size": 0},
        {"channel_capacity": {"a": 0}},
    ],
)
def test_options_refuse_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LayerOptions(**kwargs)  # type: ignore[arg-type]


def test_capacity_for_exact_and_glob_patterns() -> None:
    options = LayerOptions(
        capacity=10,
        channel_capacity={"http.request": 200, "websocket.send*": 20, "reply!": 3, "*.log": 1},
    )
    assert options.capacity_for("http.request") == 200
    assert options.capacity_for("http.request.body") == 10  # exact means exact
    assert options.capacity_for("http.requests") == 10
    assert options.capacity_for("websocket.send") == 20
    assert options.capacity_for("websocket.send.x") == 20
    assert options.capacity_for("websocket.receive") == 10
    assert options.capacity_for("reply!") == 3  # a process-local prefix (its queue key)
    assert options.capacity_for("server.log") == 1
    assert options.capacity_for("other") == 10


def test_capacity_for_takes_the_first_matching_pattern() -> None:
    options = LayerOptions(capacity=10, channel_capacity={"a.*": 1, "a.b*": 2})
    assert options.capacity_for("a.bc") == 1
    options = LayerOptions(capacity=10, channel_capacity={"a.b*": 2, "a.*": 1})
    assert options.capacity_for("a.bc") == 2
    assert options.capacity_for("a.x") == 1


def test_parse_channel_capacity() -> None:
    assert parse_channel_capacity("http.request:200, websocket.send*:20,") == {
        "http.request": 200,
        "websocket.send*": 20,
    }
    assert parse_channel_capacity("") == {}
    assert parse_channel_capacity("a:b:3") == {"a:b": 3}


def test_from_query_splits_common_and_layer_parameters() -> None:
    options, own = LayerOptions.from_query(
        {"capacity": "5", "prefix": "x"}, layer="test://", extra={"prefix": "key prefix"}
    )
    assert options.capacity == 5
    assert own == {"prefix": "x"}
    with pytest.raises(InvalidLayerURL, match=r"prefix: key prefix"):
        LayerOptions.from_query({"bogus": "1"}, layer="test://", extra={"prefix": "key prefix"})


def test_normalize_url_names_the_bus_not_its_options() -> None:
    assert normalize_url("memory://") == normalize_url("memory:///?capacity=5&expiry=2")
    assert normalize_url("MEMORY://") == normalize_url("memory://")
    assert normalize_url("redis://h:1/0?prefix=a") != normalize_url("redis://h:1/0?prefix=b")
    assert normalize_url("redis://h:1/0?prefix=a&capacity=1") == normalize_url(
        "redis://h:1/0?capacity=9&prefix=a"
    )
