"""Channels 4 worker dispatch, measured like bench/worker.py measures csp-bus.

``channels.worker.Worker`` + ``ChannelNameRouter`` + a ``SyncConsumer`` (its handler runs
in a thread through ``sync_to_async``) that answers each message on its reply channel,
on the InMemoryChannelLayer. Runs in the peers' venv (asyncio); prints one JSON object.
"""

import asyncio
import contextlib
import json
import sys
import time
import warnings

import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["channels"],
    DATABASES={},
    CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
)
django.setup()
warnings.filterwarnings("ignore", message="async_to_sync was passed a non-async-marked")

from asgiref.sync import async_to_sync  # noqa: E402
from channels.consumer import SyncConsumer  # noqa: E402
from channels.layers import get_channel_layer  # noqa: E402
from channels.routing import ChannelNameRouter  # noqa: E402
from channels.worker import Worker  # noqa: E402


class Echo(SyncConsumer):
    def bench_request(self, message):
        async_to_sync(self.channel_layer.send)(message["reply"], {"type": "bench.reply"})


async def run(n, window):
    layer = get_channel_layer()
    layer.capacity = 100_000
    worker = Worker(ChannelNameRouter({"bench.in": Echo.as_asgi()}), ["bench.in"], layer)
    task = asyncio.ensure_future(worker.arun())
    reply = await layer.new_channel()
    message = {"type": "bench.request", "reply": reply}
    # warm-up
    for _ in range(200):
        await layer.send("bench.in", message)
        await layer.receive(reply)
    start = time.perf_counter()
    sent = received = 0
    while received < n:
        while sent < n and sent - received < window:
            await layer.send("bench.in", message)
            sent += 1
        await layer.receive(reply)
        received += 1
    elapsed = time.perf_counter() - start
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return n / elapsed


def main():
    n = int(sys.argv[1])
    print(
        json.dumps(
            {
                "sequential": asyncio.run(run(n, 1)),
                "pipelined": asyncio.run(run(n, 64)),
            }
        )
    )


main()
