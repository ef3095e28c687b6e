"""The Trio Redis client: pipelining, errors, timeouts, reconnects, AUTH, db, unix."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import hiredis
import pytest
import trio
import trio.testing

from csp_bus.errors import LayerTimeout, LayerUnavailable
from csp_bus.layers.redis.client import (
    Connection,
    ConnectOptions,
    Endpoint,
    Multiplexer,
    RedisNode,
    RedisReplyError,
    StaticResolver,
)

pytestmark = pytest.mark.redis


def endpoint_of(server: tuple[str, int]) -> Endpoint:
    return Endpoint(host=server[0], port=server[1])


def count_writes(connection: Connection) -> list[int]:
    """Count the connection's socket writes: the list's one item, updated in place."""
    writes = [0]
    real_write = connection.write

    async def counting_write(data: Any, commands: int = 1) -> None:
        writes[0] += 1
        await real_write(data, commands)

    connection.write = counting_write  # type: ignore[method-assign]
    return writes


async def test_concurrent_commands_are_pipelined_and_matched_in_order(
    redis_server: tuple[str, int],
) -> None:
    connection = await Connection.open(endpoint_of(redis_server), ConnectOptions())
    writes = count_writes(connection)
    mux = Multiplexer(connection)
    results: dict[int, Any] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(mux.run)

        async def one(n: int) -> None:
            results[n] = await mux.execute("ECHO", f"value-{n}")

        async with trio.open_nursery() as tasks:
            for n in range(500):
                tasks.start_soon(one, n)
        assert results == {n: f"value-{n}".encode() for n in range(500)}
        # 500 commands issued in the same moment left in a handful of writes.
        assert writes[0] < 50
        replies = await mux.execute_many([("ECHO", "a"), ("ECHO", "b")])
        assert replies == [b"a", b"b"]
        mux.close()


class _ScriptedStream(trio.abc.Stream):
    """A stream whose reads are fed by the test (the reader's wake-up is under its control)."""

    def __init__(self) -> None:
        self.feed, self._reads = trio.open_memory_channel[bytes](10)
        self.commands = hiredis.Reader()  # what the client wrote, parsed

    async def send_all(self, data: Any) -> None:
        self.commands.feed(bytes(data))
        await trio.lowlevel.checkpoint()

    def echo_all(self) -> None:
        """Answer every ECHO written so far, in one read."""
        replies = b""
        while (command := self.commands.gets()) is not False:
            replies += b"$%d\r\n%s\r\n" % (len(command[1]), command[1])
        self.feed.send_nowait(replies)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._reads.receive()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_callers_woken_by_one_read_send_their_next_commands_in_one_write() -> None:
    # 50 tasks, each 20 commands one after another, all of a round answered in one read:
    # the read wakes them together, and their next commands must leave in ONE write (the
    # writer's), not one written alone by the first caller plus one for the rest.
    stream = _ScriptedStream()
    connection = Connection(stream, Endpoint(port=1), ConnectOptions(timeout=30))
    writes = count_writes(connection)
    mux = Multiplexer(connection)
    async with trio.open_nursery() as nursery:
        await nursery.start(mux.run)

        async def one(n: int) -> None:
            for k in range(20):
                assert await mux.execute("ECHO", f"{n}-{k}") == f"{n}-{k}".encode()

        async with trio.open_nursery() as tasks:
            for n in range(50):
                tasks.start_soon(one, n)
            await trio.testing.wait_all_tasks_blocked()
            first_round = writes[0]  # the first caller alone, then the writer: 2
            for _ in range(20):
                stream.echo_all()
                await trio.testing.wait_all_tasks_blocked()
        assert first_round <= 2
        assert writes[0] == first_round + 19  # one write per later round (two before)
        mux.close()


async def test_error_replies_become_precise_exceptions(redis_server: tuple[str, int]) -> None:
    async with trio.open_nursery() as nursery:
        node = RedisNode(
            StaticResolver(endpoint_of(redis_server)), ConnectOptions(), nursery, name="t"
        )
        with pytest.raises(RedisReplyError) as info:
            await node.execute("NOSUCHCOMMAND")
        assert info.value.code == "ERR"
        key = f"csp-bus-test-client-{time.time_ns()}"
        await node.execute("SET", key, "text", "PX", 5000)
        with pytest.raises(RedisReplyError) as info:
            await node.execute("LPUSH", key, "x")
        assert info.value.code == "WRONGTYPE"
        # the connection is still good after error replies
        assert await node.execute("ECHO", "ok") == b"ok"
        # error replies inside a pipeline are returned, not raised
        replies = await node.execute_many([("LPUSH", key, "x"), ("ECHO", "y")])
        assert str(replies[0]).startswith("WRONGTYPE") and replies[1] == b"y"
        await node.execute("DEL", key)
        await node.aclose()
        nursery.cancel_scope.cancel()


async def test_connection_refused_is_layer_unavailable_then_backoff_fails_fast() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # nothing listens on ``port`` now
    async with trio.open_nursery() as nursery:
        node = RedisNode(
            StaticResolver(Endpoint(port=port)),
            ConnectOptions(connect_timeout=1),
            nursery,
            name=f"127.0.0.1:{port}",
        )
        with pytest.raises(LayerUnavailable, match="cannot connect"):
            await node.execute("PING")
        # several failures in a row: the node is in backoff and refuses at once
        failures = 0
        for _ in range(20):
            start = trio.current_time()
            with pytest.raises(LayerUnavailable):
                await node.execute("PING")
            assert trio.current_time() - start < 0.5
            failures += 1
        assert failures == 20
        nursery.cancel_scope.cancel()


async def silent_server(
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    *,
    close_after_read: bool = False,
) -> None:
    """Accepts connections and never answers (or closes once it got a command)."""

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            while await stream.receive_some(65536):
                if close_after_read:
                    return

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        task_status.started(port)


async def test_connect_timeout_is_layer_timeout() -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(silent_server)
        start = trio.current_time()
        with pytest.raises(LayerTimeout, match="connect_timeout"):
            await Connection.open(Endpoint(port=port), ConnectOptions(connect_timeout=0.3))
        assert trio.current_time() - start < 2
        nursery.cancel_scope.cancel()


async def test_read_timeout_fails_pending_commands(redis_servers: Any) -> None:
    # A private server: CLIENT PAUSE must not stall the machine's shared Redis.
    server = redis_servers.start()
    endpoint = Endpoint(port=server.port)
    async with trio.open_nursery() as nursery:
        connection = await Connection.open(endpoint, ConnectOptions(timeout=0.3))
        mux = Multiplexer(connection)
        await nursery.start(mux.run)
        other = await Connection.open(endpoint, ConnectOptions())
        await other.call("CLIENT", "PAUSE", 1000, "ALL")  # the server stops answering
        start = trio.current_time()
        with pytest.raises(LayerTimeout):
            await mux.execute("PING")
        assert trio.current_time() - start < 0.9
        assert mux.broken
        with pytest.raises(LayerTimeout):
            await mux.execute("PING")  # a broken multiplexer refuses at once
        await other.call("CLIENT", "UNPAUSE")
        await other.aclose()
        nursery.cancel_scope.cancel()


async def test_dropped_connection_fails_pending_commands_at_once() -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(silent_server, close_after_read=True))
        # This server never answers a handshake: build the connection by hand.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        connection = Connection(stream, Endpoint(port=port), ConnectOptions(timeout=30))
        mux = Multiplexer(connection)
        await nursery.start(mux.run)
        start = trio.current_time()
        results: list[BaseException] = []

        async def pending() -> None:
            try:
                await mux.execute("PING")
            except LayerUnavailable as exc:
                results.append(exc)

        async with trio.open_nursery() as tasks:
            for _ in range(10):
                tasks.start_soon(pending)
        assert len(results) == 10
        assert trio.current_time() - start < 1  # not the 30 s timeout
        nursery.cancel_scope.cancel()


async def test_node_reconnects_after_a_restart(redis_servers: Any) -> None:
    server = redis_servers.start()
    async with trio.open_nursery() as nursery:
        node = RedisNode(
            StaticResolver(Endpoint(port=server.port)),
            ConnectOptions(connect_timeout=0.5, timeout=1),
            nursery,
            name="restarting",
        )
        assert await node.execute("PING") == b"PONG"
        server.stop()
        with pytest.raises(LayerUnavailable):
            await node.execute("PING")
        with pytest.raises(LayerUnavailable):
            await node.execute("PING")
        server.start()
        with trio.fail_after(10):
            while True:
                try:
                    assert await node.execute("PING") == b"PONG"
                    break
                except LayerUnavailable:
                    await trio.sleep(0.05)
        await node.aclose()
        nursery.cancel_scope.cancel()


async def test_auth_with_user_and_password_and_database(redis_servers: Any) -> None:
    server = redis_servers.start(
        "--user", "default", "off", "--user", "alice", "on", ">s3cret", "~*", "&*", "+@all"
    )
    good = ConnectOptions(username="alice", password="s3cret", db=3)
    connection = await Connection.open(Endpoint(port=server.port), good)
    await connection.call("SET", "where", "db3")
    await connection.aclose()
    assert (
        server.cli("--user", "alice", "--pass", "s3cret", "-n", "3", "GET", "where").strip()
        == b"db3"
    )
    with pytest.raises(RedisReplyError) as info:
        await Connection.open(
            Endpoint(port=server.port), ConnectOptions(username="alice", password="wrong")
        )
    assert info.value.code == "WRONGPASS"
    assert "wrong" not in str(info.value)


async def test_unix_socket(redis_servers: Any, tmp_path: Path) -> None:
    path = tmp_path / "redis.sock"
    redis_servers.start("--unixsocket", str(path), "--unixsocketperm", "700")
    connection = await Connection.open(Endpoint(path=str(path)), ConnectOptions())
    assert await connection.call("PING") == b"PONG"
    await connection.aclose()


async def test_close_while_the_reader_is_handed_its_bytes_fails_each_waiter_once() -> None:
    # close() runs after the reader's read got the replies but before the reader task
    # resumed: the waiters close() already failed must not be handed the replies too.
    stream = _ScriptedStream()
    mux = Multiplexer(Connection(stream, Endpoint(port=1), ConnectOptions(timeout=30)))
    errors: list[BaseException] = []

    async def ping() -> None:
        try:
            await mux.execute("PING")
        except LayerUnavailable as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        await nursery.start(mux.run)
        nursery.start_soon(ping)
        nursery.start_soon(ping)
        await trio.testing.wait_all_tasks_blocked()
        stream.feed.send_nowait(b"+PONG\r\n+PONG\r\n")  # the reader is now runnable ...
        mux.close()  # ... and the connection closes before it runs
    assert len(errors) == 2
