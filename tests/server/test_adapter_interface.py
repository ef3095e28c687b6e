"""A non-HTTP adapter written against the documented interface (docs/server.md)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from csp_bus.errors import UsageError
from csp_bus.layers import open_layer
from csp_bus.server import Adapter, Connection, ServerConfig, ServerRuntime, run_server


@dataclass(frozen=True)
class EchoConfig:
    greeting: bytes


class EchoAdapter(Adapter):
    name = "echo"
    summary = "line echo over the bus"
    listener_protocol = "echo"

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--echo-greeting", default="hello")

    def configure(self, args: argparse.Namespace, server: ServerConfig) -> EchoConfig:
        return EchoConfig(args.echo_greeting.encode())

    async def run(
        self,
        runtime: ServerRuntime,
        config: Any,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        replies = await runtime.open_dispatcher("echo.reply")

        async def handle(stream: trio.abc.Stream, conn: Connection) -> None:
            with replies.open_channel() as reply:
                await stream.send_all(config.greeting + b"\n")
                conn.set_idle(True, runtime)
                line = await stream.receive_some(1024)
                conn.set_idle(False, runtime)
                await runtime.layer.send("echo.line", {"reply_channel": reply.name, "text": line})
                answer = await reply.receive()
                await stream.send_all(answer["text"])

        runtime.set_connection_handler(handle)
        task_status.started()
        await trio.sleep_forever()


async def test_a_custom_adapter_gets_listeners_dispatcher_and_shutdown() -> None:
    adapter = EchoAdapter()
    parser = argparse.ArgumentParser()
    adapter.add_arguments(parser.add_argument_group("echo"))
    server = ServerConfig(binds=(("127.0.0.1", 0),), access_log=False)
    config = adapter.configure(parser.parse_args(["--echo-greeting", "hi"]), server)
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        runtime: ServerRuntime = await nursery.start(
            lambda task_status: run_server(
                layer, server, [(adapter, config)], task_status=task_status
            )
        )

        async def upper() -> None:
            while True:
                _, message = await layer.receive("echo.line")
                await layer.send(message["reply_channel"], {"text": message["text"].upper()})

        nursery.start_soon(upper)
        port = int(runtime.addresses[0].rsplit(":", 1)[1])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            assert await stream.receive_some(100) == b"hi\n"
            await stream.send_all(b"shout")
            assert await stream.receive_some(100) == b"SHOUT"
        # an idle connection is closed at once by a graceful shutdown
        idle = await trio.open_tcp_stream("127.0.0.1", port)
        async with idle:
            assert await idle.receive_some(100) == b"hi\n"
            runtime.shutdown()
            with trio.fail_after(2):
                assert await idle.receive_some(100) == b""
        with trio.fail_after(2):
            await runtime.stopping.wait()
        nursery.cancel_scope.cancel()


async def test_listeners_without_a_connection_handler_are_refused() -> None:
    class Silent(EchoAdapter):
        async def run(
            self, runtime: Any, config: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED
        ) -> None:
            task_status.started()
            await trio.sleep_forever()

    async with open_layer("memory://") as layer:
        with pytest.raises(UsageError, match="no adapter set a connection handler"):
            await run_server(layer, ServerConfig(binds=(("127.0.0.1", 0),)), [(Silent(), None)])
