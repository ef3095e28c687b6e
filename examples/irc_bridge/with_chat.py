"""The IRC bridge with the browser chat example (``examples/chat``) as the room.

From the repository root::

    csp-bus serve --adapter http --adapter websocket --adapter irc \\
        --app examples.irc_bridge.with_chat:routes \\
        --irc-server 127.0.0.1:6667 --irc-nick bridge --irc-channels '#csp-bus'

then open http://127.0.0.1:8000/chat/lobby/. The chat example keeps each room in the
group ``chat-<room>`` and broadcasts ``{"text": json}`` frames with ``{"room", "user",
"text"}``; the bridge uses exactly that, so neither app knows about the other.
"""

from __future__ import annotations

from examples.chat.app import routes as chat_routes
from examples.irc_bridge.app import bridge_routes

routes = bridge_routes + chat_routes
