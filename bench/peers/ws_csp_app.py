"""The csp-bus side of bench/websocket.py: the consumers ``csp-bus serve --app`` runs.

Equivalent to the Channels 4 consumers of ws_channels_app.py:

    echo_sync    plain functions run in worker threads (like WebsocketConsumer)
    echo_async   ``async def`` consumers on the worker's Trio loop (like AsyncWebsocketConsumer)
    group_sync   join the group "bench" on connect, send_group on receive (worker threads)
    group_async  the same with async consumers
"""

from __future__ import annotations

from csp_bus.consumers import Group, Message
from csp_bus.routing import route

GROUP = "bench"
ACCEPT = {"accept": True}


def _frame(message: Message) -> dict[str, object]:
    text = message["text"]
    return {"text": text} if text is not None else {"bytes": message["bytes"]}


def accept(message: Message) -> None:
    message.reply_channel.send(ACCEPT)


def echo(message: Message) -> None:
    message.reply_channel.send(_frame(message))


async def accept_async(message: Message) -> None:
    await message.reply_channel.asend(ACCEPT)


async def echo_async_consumer(message: Message) -> None:
    await message.reply_channel.asend(_frame(message))


def join(message: Message) -> None:
    Group(GROUP).add(message.reply_channel)
    message.reply_channel.send(ACCEPT)


def broadcast(message: Message) -> None:
    Group(GROUP).send(_frame(message))


def leave(message: Message) -> None:
    Group(GROUP).discard(message.reply_channel)


async def join_async(message: Message) -> None:
    await Group(GROUP).aadd(message.reply_channel)
    await message.reply_channel.asend(ACCEPT)


async def broadcast_async(message: Message) -> None:
    await Group(GROUP).asend(_frame(message))


async def leave_async(message: Message) -> None:
    await Group(GROUP).adiscard(message.reply_channel)


def _gone(message: Message) -> None:
    """websocket.disconnect of an echo connection: nothing to undo."""


async def _gone_async(message: Message) -> None:
    """The async twin of ``_gone``."""


echo_sync = [
    route("websocket.connect", accept),
    route("websocket.receive", echo),
    route("websocket.disconnect", _gone),
]
echo_async = [
    route("websocket.connect", accept_async),
    route("websocket.receive", echo_async_consumer),
    route("websocket.disconnect", _gone_async),
]
group_sync = [
    route("websocket.connect", join),
    route("websocket.receive", broadcast),
    route("websocket.disconnect", leave),
]
group_async = [
    route("websocket.connect", join_async),
    route("websocket.receive", broadcast_async),
    route("websocket.disconnect", leave_async),
]
