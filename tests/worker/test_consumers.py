"""Class-based consumers and the Channel/Group helpers outside workers."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import trio

from csp_bus import open_layer
from csp_bus.consumers import (
    Channel,
    Group,
    JsonWebsocketConsumer,
    Message,
    WebsocketConsumer,
    using,
)
from csp_bus.embedded import run_workers
from csp_bus.errors import UsageError
from csp_bus.layers.memory import MemoryLayer
from csp_bus.routing import route_class
from csp_bus.sync import bind, connect


class Echo(WebsocketConsumer):
    def connection_groups(self, room: str = "default", **kwargs: object) -> list[str]:
        return [f"room-{room}"]

    def receive(self, text=None, bytes=None, **kwargs):
        if text == "bye":
            self.close(4000)
        elif text is not None:
            self.group_send(f"room-{kwargs['room']}", text=text.upper())
        else:
            self.send(bytes=bytes[::-1])


class Api(JsonWebsocketConsumer):
    def receive_json(self, content, **kwargs):
        self.send_json({"got": content, "kwargs": kwargs})


async def collect(layer: MemoryLayer, channel: str) -> dict:
    with trio.fail_after(5):
        return (await layer.receive(channel))[1]


async def test_websocket_consumer_accepts_joins_groups_and_leaves(
    layer: MemoryLayer, until: Any
) -> None:
    routes = [route_class(Echo, path=r"^/ws/(?P<room>\w+)/$")]
    a, b = await layer.new_channel("a?"), await layer.new_channel("b?")
    base = {"path": "/ws/lobby/"}
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(run_workers, layer, routes)
        for reply in (a, b):
            await layer.send("websocket.connect", {**base, "reply_channel": reply, "order": 0})
            assert await collect(layer, reply) == {"accept": True}
        await layer.send("websocket.receive", {**base, "reply_channel": a, "text": "hi"})
        assert await collect(layer, a) == {"text": "HI"}
        assert await collect(layer, b) == {"text": "HI"}
        await layer.send("websocket.receive", {**base, "reply_channel": a, "bytes": b"abc"})
        assert await collect(layer, a) == {"bytes": b"cba"}
        await layer.send("websocket.receive", {**base, "reply_channel": a, "text": "bye"})
        assert await collect(layer, a) == {"close": 4000}
        await layer.send("websocket.disconnect", {**base, "reply_channel": a, "code": 1000})
        await until(lambda: worker.stats.handled >= 6)
        assert (await layer.stats())["groups"] == {"room-lobby": 1}
        worker.stop()


async def test_json_consumer_decodes_and_rejects_bad_json(
    layer: MemoryLayer, caplog: pytest.LogCaptureFixture
) -> None:
    reply = await layer.new_channel("c?")
    base = {"path": "/api/", "reply_channel": reply}
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(run_workers, layer, [route_class(Api)])
        await layer.send("websocket.receive", {**base, "text": json.dumps({"x": [1, 2]})})
        answer = await collect(layer, reply)
        assert json.loads(answer["text"]) == {"got": {"x": [1, 2]}, "kwargs": {}}
        with caplog.at_level(logging.INFO, logger="csp_bus.consumers"):
            await layer.send("websocket.receive", {**base, "text": "{not json"})
            assert await collect(layer, reply) == {"close": 1007}
            await layer.send("websocket.receive", {**base, "bytes": b"\x00"})
            assert await collect(layer, reply) == {"close": 1003}
        worker.stop()
    assert any("not JSON" in r.getMessage() for r in caplog.records)


def test_message_object() -> None:
    message = Message({"reply_channel": "r?x", "path": "/"}, "websocket.receive")
    assert message["path"] == "/" and message.get("nope", 1) == 1 and "path" in message
    assert message.channel == Channel("websocket.receive") == "websocket.receive"
    assert message.reply_channel == "r?x"
    assert Message({}, "x").reply_channel is None
    assert set(message.keys()) == {"reply_channel", "path"}


def test_send_frame_needs_text_or_bytes() -> None:
    consumer = Echo(Message({"reply_channel": "r?x"}, "websocket.receive"))
    with pytest.raises(UsageError, match="exactly one"):
        consumer.send()


def test_channel_and_group_in_plain_code_with_using() -> None:
    """A script: connect() then `using` makes Channel/Group go through that connection."""
    with connect("memory://") as bus, using(bus):
        Channel("plain").send({"n": 1})
        Group("g").add("member?1")
        Group("g").send({"to": "group"})
        Group("g").discard(Channel("member?1"))
        assert bus.receive("plain", timeout=1) == ("plain", {"n": 1})
        assert bus.receive("member?1", timeout=1) == ("member?1", {"to": "group"})
        assert bus.stats()["groups"] == {}


async def test_channel_without_context_reaches_the_open_layer_of_the_default_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Plain code in a thread of a Trio program: sync.connect() on the default URL finds
    the program's open layer (CSP_BUS_LAYER)."""
    monkeypatch.setenv("CSP_BUS_LAYER", "memory://?capacity=7")
    async with open_layer("memory://?capacity=7") as opened:
        await trio.to_thread.run_sync(lambda: Channel("script").send({"from": "thread"}))
        assert await opened.receive_nowait("script") == ("script", {"from": "thread"})


async def test_blocking_calls_refuse_the_trio_thread(layer: MemoryLayer) -> None:
    with pytest.raises(UsageError, match="asend"):
        Channel("x").send({})
    with using(bind(layer)):
        with pytest.raises(UsageError, match="asend"):
            Group("g").send({})
        await Channel("x").asend({"ok": 1})
    assert await layer.receive_nowait("x") == ("x", {"ok": 1})
    with pytest.raises(UsageError, match="no layer here"):
        await Channel("x").asend({})
