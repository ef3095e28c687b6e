"""The upgrade hook other adapters (WebSocket) use to take over HTTP connections."""

from __future__ import annotations

import gc
from typing import Any

import h11
import trio
from csp_bus.adapters.http import HTTPConfig, UpgradeRequest, front, linger_close
from csp_bus.adapters.http.protocol import HTTPServerProtocol, RequestHead


async def test_an_upgrade_handler_takes_over_the_connection(serve, nursery) -> None:
    seen: list[UpgradeRequest] = []

    async def echo(upgrade: UpgradeRequest) -> None:
        seen.append(upgrade)
        await upgrade.stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
            + upgrade.trailing_data
        )
        while data := await upgrade.stream.receive_some(100):
            await upgrade.stream.send_all(data.upper())

    served = await serve(nursery)
    front(served.runtime).add_upgrade_handler("Echo", echo)
    stream = await trio.open_tcp_stream(served.host, served.port)
    async with stream:
        await stream.send_all(
            b"GET /e?x=1 HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nfirst"
        )
        received = b""
        with trio.fail_after(2):
            while not received.endswith(b"first"):
                received += await stream.receive_some(1000)
            await stream.send_all(b"more")
            assert await stream.receive_some(100) == b"MORE"
    assert received.startswith(b"HTTP/1.1 101 ")
    (upgrade,) = seen
    assert upgrade.request.method == b"GET"
    assert upgrade.message["path"] == "/e"
    assert upgrade.message["query_string"] == b"x=1"
    assert upgrade.message["scheme"] == "http"
    assert upgrade.message["client"][0] == "127.0.0.1"
    assert "reply_channel" not in upgrade.message and "body" not in upgrade.message
    assert upgrade.connection.client == tuple(upgrade.message["client"])
    assert served.requests == []  # nothing went to http.request
    nursery.cancel_scope.cancel()


async def test_reject_answers_plain_http(serve, raw, nursery) -> None:
    """The handler runs without the connection's HTTP state: an upgraded connection
    lives long (idle WebSockets), so the parser is dropped before the handler takes
    over and the request head is kept once (issue 6); reject() still answers."""
    live: list[dict[str, int]] = []

    async def refuse(upgrade: UpgradeRequest) -> None:
        kinds = (HTTPServerProtocol, h11.Connection, h11.Request, RequestHead)
        gc.collect()
        found = [type(o) for o in gc.get_objects() if type(o) in kinds]
        live.append({kind.__name__: found.count(kind) for kind in kinds})
        assert upgrade.request.target == b"/?x=1"  # made on access
        assert upgrade.message["query_string"] == b"x=1"
        await upgrade.reject(403, [(b"content-type", b"text/plain")], b"no")

    served = await serve(nursery)
    front(served.runtime).add_upgrade_handler("echo", refuse)
    data = await raw(
        served.host,
        served.port,
        b"GET /?x=1 HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    assert data.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert data.endswith(b"\r\n\r\nno")
    assert live == [{"HTTPServerProtocol": 0, "Connection": 0, "Request": 0, "RequestHead": 1}]
    nursery.cancel_scope.cancel()


async def test_unknown_upgrades_are_plain_requests(serve, nursery, raw) -> None:
    served = await serve(nursery)
    data = await raw(
        served.host,
        served.port,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade, close\r\nUpgrade: h2c\r\n\r\n",
    )
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert len(served.requests) == 1
    nursery.cancel_scope.cancel()


async def test_upgrade_only_servers_answer_plain_requests_404(serve, raw, nursery) -> None:
    async def never(upgrade: Any) -> None:
        pass

    served = await serve(nursery, None, http=HTTPConfig(serve_requests=False))
    front(served.runtime).add_upgrade_handler("websocket", never)
    request = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    data = await raw(served.host, served.port, request, limit=2)
    assert data.startswith(b"HTTP/1.1 404 Not Found")
    assert b"websocket" in data
    nursery.cancel_scope.cancel()


async def test_linger_close_lets_the_last_bytes_arrive(serve, nursery) -> None:
    """An upgrade handler ends with the public ``linger_close``: the client's unread
    bytes do not turn the close into a reset that destroys what we sent last."""
    last = b"x" * 200_000
    finished = trio.Event()

    async def goodbye(upgrade: UpgradeRequest) -> None:
        await upgrade.stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: bye\r\nConnection: Upgrade\r\n\r\n"
        )
        await upgrade.stream.send_all(last)  # never reads what the client sends
        await linger_close(upgrade.stream)
        finished.set()

    served = await serve(nursery)
    front(served.runtime).add_upgrade_handler("bye", goodbye)
    stream = await trio.open_tcp_stream(served.host, served.port)
    async with stream:
        await stream.send_all(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: bye\r\n\r\n"
            + b"unread" * 10_000
        )
        received = b""
        with trio.fail_after(5):
            while data := await stream.receive_some(65536):  # EOF, not a reset
                received += data
    assert received.endswith(last)
    with trio.fail_after(2):
        await finished.wait()  # the handler returned: the drain ends once the client closes
