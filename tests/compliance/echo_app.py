"""The WebSocket echo application the Autobahn harness runs against.

    csp-bus serve --adapter websocket --app echo_app:routes   (with this folder on PYTHONPATH)

Async consumers (they run on the worker's Trio loop): the compliance run measures the
protocol, not thread hand-offs. Every frame comes back as it came, text or bytes.
"""

from __future__ import annotations

from csp_bus.consumers import Message
from csp_bus.routing import route


async def connect(message: Message) -> None:
    await message.reply_channel.asend({"accept": True})


async def echo(message: Message) -> None:
    text = message.get("text")
    if text is not None:
        await message.reply_channel.asend({"text": text})
    else:
        await message.reply_channel.asend({"bytes": message.get("bytes")})


routes = [
    route("websocket.connect", connect),
    route("websocket.receive", echo),
]
