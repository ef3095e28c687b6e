"""A multi-room browser chat: one page, one WebSocket per browser tab, one group per room.

Run it from the repository root (one process, the embedded memory:// layer)::

    csp-bus serve --adapter http --adapter websocket --app examples.chat.app:routes

then open http://127.0.0.1:8000/chat/lobby/ in two browser tabs (any name made of letters,
digits, ``-`` and ``_`` instead of ``lobby`` is another room). See README.md.

Everything below is plain synchronous code that worker threads run. The state of a room
lives on the bus, not in Python objects: the group ``chat-<room>`` holds the
``reply_channel`` of every socket open on ``/chat/<room>/``; a message one socket sends
is broadcast with ``send_group``, so the same code serves one process on ``memory://``
or many server processes sharing a ``redis://`` layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from csp_bus.consumers import JsonWebsocketConsumer, Message
from csp_bus.routing import route, route_class

#: ``/chat/<room>/``: ASCII only, since group names allow letters, digits, ``-`` and ``_``
#: (DESIGN.md section 3); 64 characters keep ``chat-<room>`` under the 100-character limit.
ROOM_PATH = r"^/chat/(?P<room>[A-Za-z0-9_-]{1,64})/$"
MAX_TEXT = 2000  # characters of one chat message
MAX_USER = 40  # characters of a name

PAGE = Path(__file__).with_name("room.html").read_bytes()
HTML = [[b"content-type", b"text/html; charset=utf-8"], [b"cache-control", b"no-store"]]


def group_name(room: str) -> str:
    """The group of the sockets open on room ``room``."""
    return f"chat-{room}"


class ChatConsumer(JsonWebsocketConsumer):
    """``/chat/<room>/`` over WebSocket: JSON text frames ``{"user": ..., "text": ...}``.

    ``connection_groups`` makes the base class add the socket to the room's group on
    ``websocket.connect`` and discard it on ``websocket.disconnect``; ``connect`` (the
    default) accepts. A frame that is not JSON closes the socket with 1007.
    """

    def connection_groups(self, **kwargs: Any) -> list[str]:
        return [group_name(kwargs["room"])]

    def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict):
            return
        text = str(content.get("text", "")).strip()[:MAX_TEXT]
        if not text:
            return
        user = str(content.get("user", "")).strip()[:MAX_USER] or "anonymous"
        self.group_send_json(
            group_name(kwargs["room"]), {"room": kwargs["room"], "user": user, "text": text}
        )


def room_page(message: Message, room: str) -> None:
    """``GET /chat/<room>/``: the page (its script opens a WebSocket on the same path)."""
    message.reply_channel.send({"status": 200, "headers": HTML, "content": PAGE})


def index(message: Message) -> None:
    """``GET /``: to the default room."""
    message.reply_channel.send(
        {"status": 302, "headers": [[b"location", b"/chat/lobby/"]], "content": b""}
    )


def not_found(message: Message) -> None:
    message.reply_channel.send(
        {
            "status": 404,
            "headers": [[b"content-type", b"text/plain; charset=utf-8"]],
            "content": b"Not found. Rooms live at /chat/<name>/ (letters, digits, - and _).\n",
        }
    )


def reject(message: Message) -> None:
    """A WebSocket on any other path: refuse the handshake (HTTP 403)."""
    message.reply_channel.send({"accept": False})


def rejected_gone(message: Message) -> None:
    """The ``websocket.disconnect`` that follows a rejected handshake: nothing to undo."""


routes = [
    route("http.request", index, path=r"^/$"),
    route("http.request", room_page, path=ROOM_PATH),
    route("http.request", not_found),
    route_class(ChatConsumer, path=ROOM_PATH),
    route("websocket.connect", reject),
    route("websocket.disconnect", rejected_gone),
]
