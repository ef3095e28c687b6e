"""Runtime pieces on their own: config, proxies, access log, dispatcher, adapter lookup."""

from __future__ import annotations

import io

import pytest
import trio
import trio.testing

from csp_bus.errors import UsageError
from csp_bus.layers import open_layer
from csp_bus.server import (
    AccessLog,
    Adapter,
    AdapterNotFound,
    ReplyDispatcher,
    ReplyOverrun,
    ServerConfig,
    TrustedProxies,
    available_adapters,
    load_adapter,
    parse_bind,
    resolve_adapters,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("[::1]:9000", ("::1", 9000)),
        ("[::]", ("::", 8000)),
        (":80", ("", 80)),
        ("8080", ("", 8080)),
        ("localhost", ("localhost", 8000)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_bind(text: str, expected: tuple[str, int]) -> None:
    assert parse_bind(text) == expected


@pytest.mark.parametrize("text", ["::1:80", "[::1", "host:port", "h:70000", "[::1]x"])
def test_parse_bind_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_bind(text)


def test_server_config_checks() -> None:
    with pytest.raises(UsageError):
        ServerConfig(max_connections=0)
    with pytest.raises(UsageError):
        ServerConfig(root_path="api")
    with pytest.raises(UsageError):
        ServerConfig(keyfile="k.pem")
    assert ServerConfig(certfile="c.pem", keyfile="k.pem").tls


def test_trusted_proxies() -> None:
    proxies = TrustedProxies.parse(["127.0.0.1, 10.0.0.0/8", "unix"])
    assert proxies.trusts("127.0.0.1")
    assert proxies.trusts("10.1.2.3")
    assert not proxies.trusts("11.0.0.1")
    assert proxies.trusts(None)  # unix socket peer
    assert not proxies.trusts("not-an-ip")
    headers = [
        (b"x-forwarded-for", b"1.1.1.1, 2.2.2.2, 10.0.0.9"),
        (b"x-forwarded-proto", b"https"),
    ]
    # walking from the right past trusted proxies: 2.2.2.2 is the client
    assert proxies.resolve(("127.0.0.1", 5), "http", headers) == (("2.2.2.2", 0), "https")
    assert proxies.resolve(("8.8.8.8", 5), "http", headers) == (("8.8.8.8", 5), "http")
    assert proxies.resolve(("127.0.0.1", 5), "ws", headers)[1] == "wss"
    garbage = [(b"x-forwarded-for", b"nonsense"), (b"x-forwarded-proto", b"gopher")]
    assert proxies.resolve(("127.0.0.1", 5), "http", garbage) == (("127.0.0.1", 5), "http")
    assert TrustedProxies.parse(["*"]).trusts("203.0.113.1")
    with pytest.raises(UsageError):
        TrustedProxies.parse(["10.0.0.0/33"])


def test_access_log_common_log_format() -> None:
    out = io.StringIO()
    log = AccessLog(out)
    log.log(("10.0.0.1", 5), 'GET /a"b HTTP/1.1', 200, 13)
    log.log(None, "-", 400, None)
    first, second = out.getvalue().splitlines()
    assert first.startswith("10.0.0.1 - - [")
    assert first.endswith('] "GET /a\\"b HTTP/1.1" 200 13')
    assert second.startswith("- - - [") and second.endswith('] "-" 400 -')


async def test_dispatcher_routes_replies_to_their_connection() -> None:
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        dispatcher = ReplyDispatcher(layer, "test.reply")
        await nursery.start(dispatcher.run)
        with dispatcher.open_channel() as a, dispatcher.open_channel() as b:
            assert a.name.startswith(dispatcher.prefix) and a.name != b.name
            await layer.send(b.name, {"n": 1})
            await layer.send(a.name, {"n": 2})
            await layer.send(b.name, {"n": 3})
            assert await a.receive() == {"n": 2}
            assert await b.receive() == {"n": 1}
            assert await b.receive() == {"n": 3}
            gone = a.name
        await layer.send(gone, {"late": True})  # connection closed: dropped, counted
        await trio.testing.wait_all_tasks_blocked()
        assert dispatcher.dropped == 1
        assert len(dispatcher) == 0
        nursery.cancel_scope.cancel()


async def test_a_connection_that_cannot_keep_up_is_cut_off() -> None:
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        dispatcher = ReplyDispatcher(layer, "test.reply", buffer=2, overrun_timeout=0.1)
        await nursery.start(dispatcher.run)
        slow = dispatcher.open_channel()
        fast = dispatcher.open_channel()
        for n in range(4):
            await layer.send(slow.name, {"n": n})
        await layer.send(fast.name, {"ok": True})
        with trio.fail_after(2):
            assert await fast.receive() == {"ok": True}  # held back at most 0.1 s
        assert slow.overrun and dispatcher.overruns == 1
        assert await slow.receive() == {"n": 0}
        assert await slow.receive() == {"n": 1}
        with pytest.raises(ReplyOverrun):
            await slow.receive()
        nursery.cancel_scope.cancel()


async def test_wakeup_is_called_for_each_reply_and_on_overrun() -> None:
    # A connection that waits on its socket and its replies in one task is told by
    # this hook instead of parking in receive().
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        dispatcher = ReplyDispatcher(layer, "test.reply", buffer=2, overrun_timeout=0.1)
        await nursery.start(dispatcher.run)
        calls: list[int] = []
        cut_off = trio.Event()
        with dispatcher.open_channel() as reply:

            def wakeup() -> None:
                calls.append(len(calls))
                if reply.overrun:
                    cut_off.set()

            reply.wakeup = wakeup
            await layer.send(reply.name, {"n": 0})
            await trio.testing.wait_all_tasks_blocked()
            assert calls == [0] and reply.receive_nowait() == {"n": 0}
            for n in range(1, 4):  # two fit; the third waits 0.1 s, then the cut-off
                await layer.send(reply.name, {"n": n})
            with trio.fail_after(2):
                await cut_off.wait()
            assert calls == [0, 1, 2, 3]  # two delivered, then the cut-off
            assert reply.receive_nowait() == {"n": 1}
            assert reply.receive_nowait() == {"n": 2}
            with pytest.raises(ReplyOverrun):
                reply.receive_nowait()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("url", ["memory://", "redis"])
async def test_dispatcher_hands_a_send_group_to_every_connection(
    url: str, request: pytest.FixtureRequest
) -> None:
    # One send_group to a whole process arrives in batches (receive_many); a connection
    # that is full and cut off in the middle of one does not stop the others.
    if url == "redis":
        url = request.getfixturevalue("redis_url")
    async with open_layer(url) as layer, trio.open_nursery() as nursery:
        await layer.flush()
        dispatcher = ReplyDispatcher(layer, "test.reply", buffer=1, overrun_timeout=0)
        await nursery.start(dispatcher.run)
        replies = [dispatcher.open_channel() for _ in range(600)]
        full = replies[300]
        for reply in replies:
            await layer.group_add("room", reply.name)
        buffered = trio.Event()
        full.wakeup = buffered.set
        await layer.send(full.name, {"n": 0})  # fills its buffer (of one)
        with trio.fail_after(5):
            await buffered.wait()
        calls = 0
        done = trio.Event()

        def wakeup() -> None:
            nonlocal calls
            calls += 1
            if calls == len(replies):  # 599 replies and one cut-off
                done.set()

        for reply in replies:
            reply.wakeup = wakeup
        await layer.send_group("room", {"n": 1})
        with trio.fail_after(5):
            await done.wait()
        assert dispatcher.delivered == 600
        assert dispatcher.overruns == 1 and full.overrun
        for reply in replies:
            if reply is not full:
                assert reply.receive_nowait() == {"n": 1}
        assert full.receive_nowait() == {"n": 0}
        with pytest.raises(ReplyOverrun):
            full.receive_nowait()
        nursery.cancel_scope.cancel()


async def test_a_dispatcher_cancelled_mid_batch_hands_over_the_rest() -> None:
    async with open_layer("memory://") as layer:
        dispatcher = ReplyDispatcher(layer, "test.reply", buffer=1, overrun_timeout=60)
        slow, a, b = (dispatcher.open_channel() for _ in range(3))
        for reply in (slow, a, b):
            await layer.group_add("room", reply.name)
        await layer.send(slow.name, {"n": 0})
        await layer.send_group("room", {"n": 1})
        async with trio.open_nursery() as nursery:
            await nursery.start(dispatcher.run)
            await trio.testing.wait_all_tasks_blocked()  # waiting for room on slow
            assert a.receive_nowait() is None and b.receive_nowait() is None
            nursery.cancel_scope.cancel()
        assert a.receive_nowait() == {"n": 1} and b.receive_nowait() == {"n": 1}
        assert slow.receive_nowait() == {"n": 0} and slow.receive_nowait() is None
        assert dispatcher.delivered == 3


async def test_reply_channel_waiting_receives_cancel_close_and_cut_off() -> None:
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        dispatcher = ReplyDispatcher(layer, "test.reply", buffer=1, overrun_timeout=0)
        await nursery.start(dispatcher.run)
        reply = dispatcher.open_channel()
        with trio.move_on_after(0.05) as scope:  # a cancelled receive takes nothing
            await reply.receive()
        assert scope.cancelled_caught
        await layer.send(reply.name, {"n": 1})
        with trio.fail_after(2):
            assert await reply.receive() == {"n": 1}  # handed to the waiting task

        async def expect(error: type[BaseException], channel: object) -> None:
            with pytest.raises(error):
                await channel.receive()  # type: ignore[attr-defined]

        async with trio.open_nursery() as waiting:  # close wakes a waiting receive
            waiting.start_soon(expect, trio.ClosedResourceError, reply)
            await trio.testing.wait_all_tasks_blocked()
            reply.close()
        with pytest.raises(trio.ClosedResourceError):
            reply.receive_nowait()
        await layer.send(reply.name, {"n": 2})  # unregistered: dropped
        slow = dispatcher.open_channel()
        await layer.send(slow.name, {"n": 3})
        await layer.send(slow.name, {"n": 4})  # the buffer holds one: cut off
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(2):
            assert await slow.receive() == {"n": 3}
            await expect(ReplyOverrun, slow)
        assert dispatcher.dropped == 1 and dispatcher.overruns == 1
        nursery.cancel_scope.cancel()


async def test_a_full_buffer_takes_the_next_reply_once_read() -> None:
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        dispatcher = ReplyDispatcher(layer, "test.reply", buffer=1, overrun_timeout=5)
        await nursery.start(dispatcher.run)
        with dispatcher.open_channel() as reply, trio.fail_after(2):
            for n in range(3):
                await layer.send(reply.name, {"n": n})
            await trio.testing.wait_all_tasks_blocked()  # the loop waits for room
            assert [await reply.receive() for _ in range(3)] == [{"n": n} for n in range(3)]
        assert dispatcher.delivered == 3 and dispatcher.overruns == 0
        nursery.cancel_scope.cancel()


def test_adapters_are_found_by_entry_point() -> None:
    assert available_adapters()["http"] == "csp_bus.adapters.http"
    http = load_adapter("http")
    assert isinstance(http, Adapter) and http.listener_protocol == "http"
    assert resolve_adapters(["http", "http"]) == [http]
    with pytest.raises(AdapterNotFound, match=r"installed adapters: .*http"):
        load_adapter("gopher")
