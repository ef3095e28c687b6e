"""Data binding: model saves and deletes reach a group's WebSocket reply channels."""

from __future__ import annotations

import json

from csp_bus.adapters.django.binding import bind_model
from csp_bus.adapters.django.testing import ConsumerClient
from django.contrib.auth.models import Group as AuthGroup

from csp_bus.consumers import Group


def join(message) -> None:
    Group("auth-groups").add(message.reply_channel)
    message.reply_channel.send({"accept": True})


def test_saves_and_deletes_reach_the_group() -> None:
    binding = bind_model(AuthGroup, group="auth-groups", fields=["name"])
    try:
        with ConsumerClient() as ws:
            ws.send("websocket.connect", join)
            assert ws.receive() == {"accept": True}

            def change(message) -> None:
                group = AuthGroup.objects.create(name="editors")
                group.name = "writers"
                group.save()
                group.delete()

            ws.send("websocket.receive", change, text="go")
            events = [json.loads(m["text"]) for m in ws.receive_all()]
    finally:
        binding.disconnect()
    assert [(e["action"], e["data"]) for e in events] == [
        ("create", {"name": "editors"}),
        ("update", {"name": "writers"}),
        ("delete", {"name": "writers"}),
    ]
    assert {e["model"] for e in events} == {"auth.group"}
    assert len({e["pk"] for e in events}) == 1


def test_group_function_and_action_filter() -> None:
    binding = bind_model(
        AuthGroup, group=lambda g: [f"g-{g.name}", "all-groups"], actions=["create"]
    )

    def listen(message) -> None:
        Group("g-readers").add(message.reply_channel)

    try:
        with ConsumerClient() as ws:
            ws.send("websocket.connect", listen)

            def change(message) -> None:
                AuthGroup.objects.create(name="readers").delete()
                AuthGroup.objects.create(name="others").delete()

            ws.send("websocket.receive", change, text="go")
            events = [json.loads(m["text"]) for m in ws.receive_all()]
    finally:
        binding.disconnect()
    assert [(e["action"], e["data"]["name"]) for e in events] == [("create", "readers")]
