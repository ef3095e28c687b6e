"""The chat over WebSocket: every message carries the sender's Django username.

At connect, ``channel_session_user_from_http`` reads the browser's session cookie and
copies the login into the connection's channel session; later messages find the user
there (``channel_session_user``). ``enforce_ordering`` makes one connection's messages
run in the order they were sent, whichever worker thread or process picks them up.
"""

import json

from csp_bus.adapters.django.auth import channel_session_user, channel_session_user_from_http
from csp_bus.adapters.django.sessions import enforce_ordering

from csp_bus.consumers import Group


@enforce_ordering
@channel_session_user_from_http
def chat_connect(message, room):
    if not message.user.is_authenticated:
        message.reply_channel.send({"close": True})  # before accept: HTTP 403
        return
    Group(f"chat-{room}").add(message.reply_channel)
    message.reply_channel.send({"accept": True})
    Group(f"chat-{room}").send(
        {"text": json.dumps({"user": message.user.username, "event": "joined"})}
    )


@enforce_ordering
@channel_session_user
def chat_receive(message, room):
    text = (message.get("text") or "").strip()[:1000]
    if text:
        Group(f"chat-{room}").send(
            {"text": json.dumps({"user": message.user.username, "text": text})}
        )


@enforce_ordering
@channel_session_user
def chat_disconnect(message, room):
    Group(f"chat-{room}").discard(message.reply_channel)
    if message.user.is_authenticated:
        Group(f"chat-{room}").send(
            {"text": json.dumps({"user": message.user.username, "event": "left"})}
        )
