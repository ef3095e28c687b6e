"""Soak (opt-in, ``pytest -m soak``): many messages, mixed outcomes, nothing unaccounted."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest
import trio

from csp_bus.consumers import ConsumeLater, Message
from csp_bus.embedded import run_workers
from csp_bus.layers.memory import MemoryLayer
from csp_bus.routing import route


@pytest.mark.soak
async def test_twenty_thousand_mixed_messages(until: Any) -> None:
    rng = random.Random(11)
    lock = threading.Lock()
    outcomes = {"ok": 0, "later": 0, "boom": 0}

    def consumer(message: Message) -> None:
        kind = message["kind"]
        if kind == "later" and message.get("__retries__", 0) < 2:
            raise ConsumeLater
        if kind == "boom":
            with lock:
                outcomes["boom"] += 1
            raise RuntimeError("expected")
        with lock:
            outcomes["ok" if kind == "ok" else "later"] += 1
        message.reply_channel.send({"n": message["n"]})

    total = 20_000
    kinds = [rng.choice(["ok"] * 8 + ["later", "boom"]) for _ in range(total)]
    async with MemoryLayer() as layer, trio.open_nursery() as nursery:
        worker = await nursery.start(
            lambda task_status: run_workers(
                layer, [route("soak", consumer)], threads=8, task_status=task_status
            )
        )
        reply = await layer.new_channel("soak?")
        replies = 0

        async def drain() -> None:
            nonlocal replies
            while True:
                await layer.receive(reply)
                replies += 1

        nursery.start_soon(drain)
        for n, kind in enumerate(kinds):
            await layer.send_wait("soak", {"n": n, "kind": kind, "reply_channel": reply})
        expected_replies = sum(kind != "boom" for kind in kinds)
        await until(lambda: replies >= expected_replies, 120)
        await until(lambda: worker.stats.failed == kinds.count("boom"), 10)
        worker.stop()
        nursery.cancel_scope.cancel()
    assert outcomes == {
        "ok": kinds.count("ok"),
        "later": kinds.count("later"),
        "boom": kinds.count("boom"),
    }
    assert worker.stats.dropped == 0
    assert worker.stats.requeued == 2 * kinds.count("later")
