"""channels_redis measured the way bench/layers_redis.py measures csp-bus's redis://.

Runs in the peers' venv (asyncio): ``python channels_redis_peer.py PORT CLASS``, CLASS
``core`` (RedisChannelLayer) or ``pubsub`` (RedisPubSubChannelLayer); a third argument
``group`` measures only the group figures. Prints one JSON object of figures. Each
pair's consumer reads its own ``new_channel()`` reply channel, which is how Channels uses
reply channels (and the only kind the PubSub layer can wait on before the message is sent).
"""

import asyncio
import json
import sys
import time

from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

MESSAGE = {"type": "bench.message", "text": "hello", "n": 1}


def make(kind, port):
    host = f"redis://127.0.0.1:{port}/0"
    if kind == "core":
        return RedisChannelLayer(hosts=[host], prefix="peerbench", capacity=100_000)
    return RedisPubSubChannelLayer(hosts=[host], prefix="peerbench")


async def sequential(layer, n):
    channel = await layer.new_channel()
    await layer.send(channel, MESSAGE)
    await layer.receive(channel)  # warm-up: connections open
    start = time.perf_counter()
    for _ in range(n):
        await layer.send(channel, MESSAGE)
        await layer.receive(channel)
    return n / (time.perf_counter() - start)


async def pairs(layer, count, per_pair):
    channels = [await layer.new_channel() for _ in range(count)]

    async def produce(channel):
        for _ in range(per_pair):
            await layer.send(channel, MESSAGE)

    async def consume(channel):
        for _ in range(per_pair):
            await layer.receive(channel)

    start = time.perf_counter()
    await asyncio.gather(
        *(produce(channel) for channel in channels), *(consume(channel) for channel in channels)
    )
    return count * per_pair / (time.perf_counter() - start)


async def group(layer, members):
    channels = [await layer.new_channel() for _ in range(members)]
    start = time.perf_counter()
    for channel in channels:
        await layer.group_add("bench-group", channel)
    add_seconds = time.perf_counter() - start

    waiting = [asyncio.ensure_future(layer.receive(channel)) for channel in channels]
    await asyncio.sleep(0.5)  # every receive is waiting (subscribed, or blocked)
    start = time.perf_counter()
    await layer.group_send("bench-group", MESSAGE)
    await asyncio.gather(*waiting)
    group_ms = (time.perf_counter() - start) * 1000

    # the same broadcast read by one task, channel after channel
    start = time.perf_counter()
    await layer.group_send("bench-group", MESSAGE)
    for channel in channels:
        await layer.receive(channel)
    one_task_ms = (time.perf_counter() - start) * 1000
    return {"group_ms": group_ms, "group_one_task_ms": one_task_ms, "group_add_s": add_seconds}


async def main(port, kind, group_only):
    result = {}
    layer = make(kind, port)
    if not group_only:
        result["sequential"] = await sequential(layer, 500)
        result["pairs10"] = await pairs(layer, 10, 100)
        result["pairs50"] = await pairs(layer, 50, 20)
    result.update(await group(layer, 1000))
    await layer.flush()
    if hasattr(layer, "close_pools"):
        await layer.close_pools()
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3:] == ["group"]))
