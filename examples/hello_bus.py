"""The bus in one process: Trio tasks, a worker thread, a group, a full channel.

    python examples/hello_bus.py

A "sensor" task sends readings; a plain synchronous function running in a worker thread
receives them through csp_bus.sync and answers on a reply channel; a group broadcasts an
alert to two listeners; a producer that outruns its consumer meets ChannelFull.
"""

from __future__ import annotations

import trio

from csp_bus import ChannelFull, open_layer, sync


def average_readings(count: int) -> None:
    """Ordinary blocking code: no async, no Trio. It reaches the running layer."""
    with sync.connect("memory://") as bus:
        total = 0.0
        for _ in range(count):
            found = bus.receive("readings", timeout=5)
            assert found is not None, "no reading within 5 s"
            _, reading = found
            total += reading["celsius"]
        bus.send(reading["reply_channel"], {"average": total / count})


async def main() -> None:
    async with open_layer("memory://?capacity=5") as layer:
        reply = await layer.new_channel("hello!")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, average_readings, 3)
            for celsius in (19.5, 20.0, 21.5):
                await layer.send("readings", {"celsius": celsius, "reply_channel": reply})
            channel, answer = await layer.receive("hello!")
        print(f"average from the worker thread: {answer['average']:.2f} C (on {channel})")

        # Groups: one send reaches every member.
        await layer.group_add("alerts", "screen")
        await layer.group_add("alerts", "pager")
        await layer.send_group("alerts", {"text": "door open"})
        for _ in range(2):
            channel, alert = await layer.receive("screen", "pager")
            print(f"{channel} got {alert['text']!r}")

        # Backpressure: send never waits; a full channel raises ChannelFull...
        sent = 0
        try:
            while True:
                await layer.send("slow-consumer", {"n": sent})
                sent += 1
        except ChannelFull as exc:
            print(f"after {sent} messages: {exc}")
        # ...unless the producer asks to wait for room, Go-style.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(layer.receive, "slow-consumer")
            await layer.send_wait("slow-consumer", {"n": sent}, timeout=1)
        print("send_wait got room once the consumer took a message")
        print("stats:", {k: v for k, v in (await layer.stats()).items() if k != "channels"})


if __name__ == "__main__":
    trio.run(main)
