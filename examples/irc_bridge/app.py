"""IRC <-> browser chat bridge: the whole bus in one picture.

    cd examples/irc_bridge
    ngircd -n &          # or: miniircd --listen 127.0.0.1 --ports 6667 &
    csp-bus serve --adapter http --adapter websocket --adapter irc --app app:routes \\
        --bind 127.0.0.1:8000 \\
        --irc-server 127.0.0.1:6667 --irc-nick bridge --irc-channels '#csp-bus'

Open http://127.0.0.1:8000/ and join ``#csp-bus`` with any IRC client: what is said on
one side appears on the other. See README.md.

How it works, with groups only (no state in the workers, so any number of worker
processes may run these consumers):

* IRC -> room: ``irc-client.receive`` for the bridged IRC channel is posted to the
  room's group ``chat-<room>`` in the browser chat example's format (``examples/chat``):
  ``{"text": json}`` with ``{"room", "user", "text"}``, plus ``"bridge": "irc"`` (and
  ``"event": true`` for joins, parts, topics...).
* room -> IRC: the plain channel ``irc-bridge.from-room`` is a member of the room's
  group, so it gets every room message; its consumer sends each one to the IRC
  connection's ``reply_channel``, which the bridge keeps as the only member of the group
  ``irc-bridge`` (added on ``irc-client.join``, dropped on ``irc-client.disconnect``).
* No echo: room messages marked ``"bridge": "irc"`` came from IRC and are not sent back.

The room is the browser chat example's convention (``examples/chat``, also used by
``examples/django_chat`` and ``examples/support_inbox``): group ``chat-<room>``, WebSocket
path ``/chat/<room>/``. ``with_chat.py`` bridges the chat example itself; ``routes`` below
adds a minimal room of its own so that this folder runs alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from csp_bus.consumers import Group, Message
from csp_bus.routing import route

IRC_CHANNEL = os.environ.get("IRC_BRIDGE_CHANNEL", "#csp-bus")
ROOM = os.environ.get("IRC_BRIDGE_ROOM", "lobby")
ROOM_GROUP = f"chat-{ROOM}"  # the chat examples' group for a room
IRC_GROUP = "irc-bridge"  # members: reply_channel of the IRC connection in IRC_CHANNEL
FROM_ROOM = "irc-bridge.from-room"  # member of ROOM_GROUP: what the room says
PAGE = Path(__file__).with_name("room.html").read_bytes()


def _ours(channel: str | None) -> bool:
    # IRC channel names compare case-insensitively (RFC 2812 section 1.3)
    return channel is not None and channel.lower() == IRC_CHANNEL.lower()


def post_to_room(user: str, text: str, *, event: bool = False) -> None:
    data: dict[str, Any] = {"room": ROOM, "user": user, "text": text, "bridge": "irc"}
    if event:
        data["event"] = True
    Group(ROOM_GROUP).send({"text": json.dumps(data)})


# ------------------------------------------------------------------------ IRC -> room


def irc_joined(message: Message) -> None:
    """``irc-client.join``: the bridge is in the IRC channel: wire the groups."""
    if not _ours(message["channel"]):
        return
    Group(IRC_GROUP).add(message.reply_channel)
    Group(ROOM_GROUP).add(FROM_ROOM)  # also refreshes the membership's expiry
    post_to_room("bridge", f"(connected to IRC {message['channel']})", event=True)


def irc_disconnected(message: Message) -> None:
    """``irc-client.disconnect``: nobody to send to until the next join."""
    Group(IRC_GROUP).discard(message.reply_channel)
    post_to_room("bridge", f"(IRC connection lost: {message['reason']}; reconnecting)", event=True)


def irc_receive(message: Message) -> None:
    """``irc-client.receive``: what happens in the IRC channel, shown in the room."""
    kind = message["type"]
    user = message["user"] or {}
    nick = f"{user.get('nick', '?')}@irc"
    body = message["body"]
    if kind in ("quit", "nick"):  # no channel: the bridge only shares IRC_CHANNEL
        text = f"(quit: {body})" if kind == "quit" else f"(is now known as {body}@irc)"
        post_to_room(nick, text, event=True)
        return
    if not _ours(message["channel"]):
        return  # another channel, or a private message to the bridge
    if kind in ("message", "notice"):
        post_to_room(nick, body)
    elif kind == "action":
        post_to_room(nick, f"* {user.get('nick')} {body}")
    elif kind == "join":
        post_to_room(nick, "(joined IRC)", event=True)
    elif kind == "part":
        post_to_room(nick, f"(left IRC: {body})" if body else "(left IRC)", event=True)
    elif kind == "kick":
        post_to_room(nick, f"(kicked {message['target']}: {body})", event=True)
    elif kind == "topic":
        post_to_room(nick, f"(set the topic: {body})", event=True)


# ------------------------------------------------------------------------ room -> IRC


def from_room(message: Message) -> None:
    """``irc-bridge.from-room``: a room message, sent to IRC unless it came from there."""
    try:
        data = json.loads(message["text"])
    except (KeyError, TypeError, ValueError):
        return
    if not isinstance(data, dict) or data.get("bridge") or not data.get("text"):
        return  # our own echo, or an empty message
    # Several lines become several IRC messages; the adapter splits long ones and
    # never lets a line break through.
    Group(IRC_GROUP).send(
        {
            "type": "message",
            "channel": IRC_CHANNEL,
            "body": f"<{data.get('user', '?')}> {data['text']}",
        }
    )


# -------------------------------------------------------------------- a minimal room


def page(message: Message) -> None:
    message.reply_channel.send(
        {
            "status": 200,
            "headers": [[b"content-type", b"text/html; charset=utf-8"]],
            "content": PAGE,
        }
    )


def room_connect(message: Message, room: str) -> None:
    Group(f"chat-{room}").add(message.reply_channel)
    message.reply_channel.send({"accept": True})


def room_receive(message: Message, room: str) -> None:
    raw = (message.get("text") or "").strip()
    try:
        data = json.loads(raw)
        user, text = str(data.get("user") or "guest")[:30], str(data.get("text") or "")
    except (ValueError, AttributeError):
        user, text = "guest", raw
    text = text.strip()[:1000]
    if text:
        Group(f"chat-{room}").send({"text": json.dumps({"room": room, "user": user, "text": text})})


def room_disconnect(message: Message, room: str) -> None:
    Group(f"chat-{room}").discard(message.reply_channel)


ROOM_PATH = r"^/chat/(?P<room>[\w-]+)/$"

bridge_routes = [
    route("irc-client.join", irc_joined),
    route("irc-client.disconnect", irc_disconnected),
    route("irc-client.receive", irc_receive),
    route(FROM_ROOM, from_room),
]

room_routes = [
    route("http.request", page, path=r"^/$"),
    route("websocket.connect", room_connect, path=ROOM_PATH),
    route("websocket.receive", room_receive, path=ROOM_PATH),
    route("websocket.disconnect", room_disconnect, path=ROOM_PATH),
]

routes = bridge_routes + room_routes
