"""Another language's view: nothing but ``redis-cli`` and hand-written msgpack bytes
(``docs/redis-protocol.md``), and the ``csp-bus`` CLI from a plain shell."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from csp_bus import open_layer
from csp_bus.layers.redis import RedisLayer

pytestmark = pytest.mark.redis

REDIS_CLI = shutil.which("redis-cli")
CSP_BUS = Path(sys.executable).with_name("csp-bus")

# {"type": "greeting", "text": "hi", "blob": b"\x00\xff", "n": 5}, packed by hand:
# fixmap(4), fixstr keys, fixstr / bin8 / positive fixint values.
MSGPACK = b"\x84\xa4type\xa8greeting\xa4text\xa2hi\xa4blob\xc4\x02\x00\xff\xa1n\x05"
EXPECTED = {"type": "greeting", "text": "hi", "blob": b"\x00\xff", "n": 5}


def cli(server: tuple[str, int], *args: str, stdin: bytes | None = None) -> bytes:
    assert REDIS_CLI is not None
    return subprocess.run(
        [REDIS_CLI, "-h", server[0], "-p", str(server[1]), *args],
        input=stdin,
        capture_output=True,
        check=True,
        timeout=10,
    ).stdout


@pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed")
@pytest.mark.parametrize("channel", ["svc.greetings", "srv.k2j3!conn17"])
async def test_redis_cli_sends_and_the_layer_receives(
    redis_url: str, redis_server: tuple[str, int], channel: str
) -> None:
    async with open_layer(redis_url) as layer:
        await layer.flush()
        assert isinstance(layer, RedisLayer)
        queue = channel.split("!")[0] + "!" if "!" in channel else channel
        deadline = int(time.time() * 1000) + 60_000
        envelope = b"%013d" % deadline + channel.encode() + b"\n" + MSGPACK
        # redis-cli -x: the last argument is read from stdin, bytes as they are
        await trio.to_thread.run_sync(
            lambda: cli(redis_server, "-x", "LPUSH", f"{layer.prefix}:q:{queue}", stdin=envelope)
        )
        with trio.fail_after(5):
            assert await layer.receive(queue) == (channel, EXPECTED)


@pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed")
async def test_the_layer_sends_and_redis_cli_reads(
    redis_url: str, redis_server: tuple[str, int]
) -> None:
    async with open_layer(redis_url) as layer:
        await layer.flush()
        assert isinstance(layer, RedisLayer)
        before = int(time.time() * 1000)
        await layer.send("svc.out", EXPECTED)
        raw = await trio.to_thread.run_sync(
            lambda: cli(redis_server, "--no-raw", "RPOP", f"{layer.prefix}:q:svc.out")
        )
        # --no-raw prints a quoted string with \xNN escapes: undo them
        text = raw.decode().strip()
        assert text.startswith('"') and text.endswith('"')
        envelope = text[1:-1].encode().decode("unicode_escape").encode("latin-1")
        deadline = int(envelope[:13])
        assert before + 59_000 <= deadline <= int(time.time() * 1000) + 60_000
        assert envelope[13:] == b"svc.out\n" + MSGPACK


@pytest.mark.skipif(not CSP_BUS.exists(), reason="the csp-bus console script is not installed")
async def test_csp_bus_cli_send_receive_stats(redis_url: str) -> None:
    env = {**os.environ, "CSP_BUS_LAYER": redis_url}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CSP_BUS), *args], capture_output=True, text=True, timeout=30, env=env
        )

    async with open_layer(redis_url) as layer:
        await layer.flush()
        await layer.group_add("cron.watchers", "cron.inbox")

    sent = await trio.to_thread.run_sync(
        lambda: run("send", "cron.inbox", '{"job": "nightly", "n": 1}', "--layer", redis_url)
    )
    assert sent.returncode == 0, sent.stderr
    grouped = await trio.to_thread.run_sync(
        lambda: run("send", "--group", "cron.watchers", '{"job": "all"}')
    )
    assert grouped.returncode == 0, grouped.stderr
    stats = await trio.to_thread.run_sync(lambda: run("stats"))
    assert stats.returncode == 0, stats.stderr
    figures: dict[str, Any] = json.loads(stats.stdout)
    assert figures["channels"]["cron.inbox"]["messages_pending"] == 2
    assert figures["groups"] == {"cron.watchers": 1}
    received = await trio.to_thread.run_sync(
        lambda: run("receive", "cron.inbox", "--count", "2", "--timeout", "5")
    )
    assert received.returncode == 0, received.stderr
    lines = [json.loads(line) for line in received.stdout.splitlines()]
    assert lines == [
        {"channel": "cron.inbox", "message": {"job": "nightly", "n": 1}},
        {"channel": "cron.inbox", "message": {"job": "all"}},
    ]
    down = await trio.to_thread.run_sync(
        lambda: run("send", "x", "{}", "--layer", "redis://127.0.0.1:1/0?connect_timeout=0.5")
    )
    assert down.returncode == 1
    assert "Traceback" not in down.stderr and "127.0.0.1:1" in down.stderr
    async with open_layer(redis_url) as layer:
        await layer.flush()


@pytest.mark.parametrize(
    "element",
    [
        b"",
        b"garbage",
        b"12345",
        b"99999999999999svc.bad",  # no newline
        b"%013dsvc.bad\n\xc1" % (int(time.time() * 1000) + 60_000),  # 0xc1: never used
        b"%013dsvc.bad\n\x92\x01\x02" % (int(time.time() * 1000) + 60_000),  # a list
        b"%013dsvc.bad\n\x81\x01\x02" % (int(time.time() * 1000) + 60_000),  # int key
        b"%013dsvc.bad\n\x81\xa1x\xd4\x01\x00" % (int(time.time() * 1000) + 60_000),  # ext
        b"%013dsvc.b\xffd\n\x80" % (int(time.time() * 1000) + 60_000),  # not ASCII
    ],
)
async def test_foreign_garbage_is_dropped_not_delivered_or_fatal(
    redis_url: str, redis_server: tuple[str, int], element: bytes
) -> None:
    """Whatever another writer pushes, a receive drops it (logged, counted) and goes on."""
    async with open_layer(redis_url) as layer:
        await layer.flush()
        assert isinstance(layer, RedisLayer)
        await trio.to_thread.run_sync(
            lambda: cli(redis_server, "-x", "LPUSH", f"{layer.prefix}:q:svc.bad", stdin=element)
        )
        await layer.send("svc.bad", {"ok": True})
        with trio.fail_after(5):
            assert await layer.receive("svc.bad") == ("svc.bad", {"ok": True})
        assert await layer.receive_nowait("svc.bad") is None
