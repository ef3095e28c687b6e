"""Channels 4's InMemoryChannelLayer measured like bench/layers.py measures csp-bus.

Runs in the peers' venv (asyncio); prints one JSON object of figures.
"""

import asyncio
import json
import sys
import time

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer

MESSAGE = {"type": "bench.message", "text": "hello", "n": 1}


async def sequential(n):
    layer = InMemoryChannelLayer()
    start = time.perf_counter()
    for _ in range(n):
        await layer.send("bench", MESSAGE)
        await layer.receive("bench")
    return n / (time.perf_counter() - start)


async def producer_consumer(n):
    layer = InMemoryChannelLayer()

    async def produce():
        for _ in range(n):
            while True:
                try:
                    await layer.send("bench", MESSAGE)
                    break
                except ChannelFull:
                    await asyncio.sleep(0)

    async def consume():
        for _ in range(n):
            await layer.receive("bench")

    start = time.perf_counter()
    await asyncio.gather(produce(), consume())
    return n / (time.perf_counter() - start)


async def main(n):
    await sequential(2000)  # warm-up
    result = {
        "sequential": await sequential(n),
        "producer_consumer": await producer_consumer(n),
    }
    print(json.dumps(result))


asyncio.run(main(int(sys.argv[1])))
