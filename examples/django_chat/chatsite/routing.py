"""What the workers run besides Django views: the chat's WebSocket consumers."""

from chat import consumers

from csp_bus.routing import route

ROOM = r"^/ws/chat/(?P<room>[-\w]+)/$"

routes = [
    route("websocket.connect", consumers.chat_connect, path=ROOM),
    route("websocket.receive", consumers.chat_receive, path=ROOM),
    route("websocket.disconnect", consumers.chat_disconnect, path=ROOM),
]
