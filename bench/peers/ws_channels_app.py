"""Channels 4 consumers equivalent to bench/peers/ws_csp_app.py, for Daphne.

Runs in the peers' virtualenv: ``daphne ws_channels_app:application``. Django settings as
in shared/research/anchors.md (DEBUG off, no apps, no middleware, no database, no auth or
origin middleware around the WebSocket routes). ``CHANNEL_LAYER=redis`` with
``REDIS_HOST``/``REDIS_PORT`` selects channels_redis (with the redis-py 8 workaround of
anchors.md, "Odd things found" 1); otherwise no layer (echo needs none).

    /echo-sync/   WebsocketConsumer (sync: runs in asgiref's thread executor)
    /echo-async/  AsyncWebsocketConsumer
    /group/       AsyncWebsocketConsumer: group_add on connect, group_send on receive
"""

import os

import django
from django.conf import settings

layers = {}
if os.environ.get("CHANNEL_LAYER") == "redis":
    layers = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "host": os.environ.get("REDIS_HOST", "127.0.0.1"),
                        "port": int(os.environ.get("REDIS_PORT", "6379")),
                        "socket_timeout": None,
                        "max_connections": 2**31,
                    }
                ],
            },
        }
    }

settings.configure(
    DEBUG=False,
    SECRET_KEY="bench-" + "x" * 50,
    ALLOWED_HOSTS=["*"],
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    DATABASES={},
    USE_TZ=True,
    CHANNEL_LAYERS=layers,
)
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer, WebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

GROUP = "bench"


class SyncEcho(WebsocketConsumer):
    def receive(self, text_data=None, bytes_data=None):
        self.send(text_data=text_data, bytes_data=bytes_data)


class AsyncEcho(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data, bytes_data=bytes_data)


class GroupBroadcast(AsyncWebsocketConsumer):
    async def connect(self):
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        await self.channel_layer.group_send(GROUP, {"type": "bench.message", "text": text_data})

    async def bench_message(self, event):
        await self.send(text_data=event["text"])


application = ProtocolTypeRouter(
    {
        "websocket": URLRouter(
            [
                path("echo-sync/", SyncEcho.as_asgi()),
                path("echo-async/", AsyncEcho.as_asgi()),
                path("group/", GroupBroadcast.as_asgi()),
            ]
        )
    }
)
