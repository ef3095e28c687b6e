"""The HTTP adapter over real sockets on 127.0.0.1, with httpx and raw sockets.

The "workers" here are small Trio tasks receiving ``http.request`` on the layer and
answering on ``reply_channel`` (see conftest.py)."""

from __future__ import annotations

import hashlib
import random
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from csp_bus.adapters.http import HTTPConfig

from csp_bus.server import ServerConfig

LOCAL = (("127.0.0.1", 0),)


async def echo_body(layer: Any, message: dict[str, Any]) -> None:
    """Answer with the body's length and sha256, reading body_channel when present."""
    body = bytearray(message["body"])
    chunks = 1
    if "body_channel" in message:
        while True:
            _, chunk = await layer.receive(message["body_channel"])
            assert not chunk.get("closed")
            body += chunk["content"]
            chunks += 1
            if not chunk["more_content"]:
                break
    text = f"{len(body)} {hashlib.sha256(body).hexdigest()} {chunks}".encode()
    await layer.send(message["reply_channel"], {"status": 200, "content": text})


async def test_keep_alive_head_and_reason_phrase(serve, nursery) -> None:
    served = await serve(nursery)
    async with httpx.AsyncClient() as client:
        for _ in range(3):
            response = await client.get(served.url + "/")
            assert (response.status_code, response.reason_phrase) == (200, "OK")
        head = await client.head(served.url + "/")
        assert head.headers["content-length"] == "13"
        assert head.content == b""
    # one connection served all four requests
    assert len({tuple(m["client"]) for m in served.requests}) == 1
    message = served.requests[0]
    assert message["http_version"] == "1.1"
    assert message["scheme"] == "http"
    assert message["server"] == ["127.0.0.1", served.port]
    assert message["root_path"] == ""
    assert message["reply_channel"].startswith("http.response.")
    assert "!" in message["reply_channel"]
    nursery.cancel_scope.cancel()


async def test_pipelined_requests_answer_in_order(serve, raw, nursery) -> None:
    async def path_app(layer: Any, message: dict[str, Any]) -> None:
        # answer the first one last: the server must still write them in order
        if message["path"] == "/1":
            await trio.sleep(0.1)
        await layer.send(
            message["reply_channel"], {"status": 200, "content": message["path"].encode()}
        )

    served = await serve(nursery, path_app)
    data = await raw(
        served.host,
        served.port,
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"GET /3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert data.index(b"\r\n\r\n/1") < data.index(b"\r\n\r\n/2") < data.index(b"\r\n\r\n/3")
    nursery.cancel_scope.cancel()


async def test_expect_100_continue(serve, nursery) -> None:
    served = await serve(nursery, echo_body, http=HTTPConfig(max_body_size=100))
    stream = await trio.open_tcp_stream(served.host, served.port)
    async with stream:
        await stream.send_all(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        assert await stream.receive_some(1000) == b"HTTP/1.1 100 Continue\r\n\r\n"
        await stream.send_all(b"hello")
        answer = await stream.receive_some(1000)
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert answer.endswith(b"5 " + hashlib.sha256(b"hello").hexdigest().encode() + b" 1")
        # too large: 413 at once, no 100 Continue, nothing sent to the bus
        await stream.send_all(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 500\r\nExpect: 100-continue\r\n\r\n"
        )
        answer = await stream.receive_some(1000)
        assert answer.startswith(b"HTTP/1.1 413 Content Too Large")
        assert await stream.receive_some(1000) == b""  # and closed
    assert len(served.requests) == 1
    nursery.cancel_scope.cancel()


async def test_chunked_request_body_is_streamed_over_body_channel(serve, nursery) -> None:
    served = await serve(nursery, echo_body, http=HTTPConfig(body_chunk_size=1024))
    body = bytes(range(256)) * 40  # 10240 bytes

    async def pieces():
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    async with httpx.AsyncClient() as client:
        response = await client.post(served.url + "/upload", content=pieces())
        length, digest, chunks = response.text.split()
        assert (int(length), digest) == (len(body), hashlib.sha256(body).hexdigest())
        assert int(chunks) > 5
        # small bodies travel inside http.request
        response = await client.post(served.url + "/small", content=b"abc")
        assert response.text.endswith(" 1")
    first, second = served.requests
    assert "body_channel" in first and first["body_channel"].startswith("http.request.body?")
    assert len(first["body"]) == 1024
    assert "body_channel" not in second and second["body"] == b"abc"
    nursery.cancel_scope.cancel()


async def test_chunked_streamed_response(serve, nursery) -> None:
    async def stream_app(layer: Any, message: dict[str, Any]) -> None:
        reply = message["reply_channel"]
        await layer.send(
            reply,
            {"status": 201, "headers": [[b"x-a", b"1"]], "content": b"a", "more_content": True},
        )
        for part in (b"b", b"c"):
            await trio.sleep(0.01)
            await layer.send(reply, {"content": part, "more_content": True})
        await layer.send(reply, {"content": b"d"})

    served = await serve(nursery, stream_app)
    async with httpx.AsyncClient() as client:
        response = await client.get(served.url + "/")
        assert response.status_code == 201 and response.reason_phrase == "Created"
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.content == b"abcd"
        response = await client.get(served.url + "/")  # the connection is reusable
        assert response.content == b"abcd"
    nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000, 413),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"400\r\n"
            + b"x" * 1024
            + b"\r\n"
            + b"400\r\n"
            + b"x" * 1024
            + b"\r\n0\r\n\r\n",
            413,
        ),
    ],
)
async def test_errors_get_their_status_and_close(
    serve, raw, nursery, request_bytes, status
) -> None:
    served = await serve(nursery, http=HTTPConfig(max_body_size=1500))
    data = await raw(served.host, served.port, request_bytes)
    assert data.startswith(b"HTTP/1.1 %d " % status)
    assert b"connection: close" in data.lower()
    assert served.requests == []
    nursery.cancel_scope.cancel()


async def test_content_length_and_transfer_encoding_close_after_response(
    serve, raw, nursery
) -> None:
    served = await serve(nursery, echo_body)
    data = await raw(
        served.host,
        served.port,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nab\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    assert data.count(b"HTTP/1.1") == 1  # the pipelined GET is not served
    assert b"connection: close" in data.lower()
    assert data.endswith(b"2 " + hashlib.sha256(b"ab").hexdigest().encode() + b" 1")
    nursery.cancel_scope.cancel()


async def test_503_when_http_request_is_full(serve, raw, nursery) -> None:
    # No consumer: capacity 1 fills with the first request.
    served = await serve(
        nursery, None, layer_url="memory://?capacity=1", http=HTTPConfig(response_timeout=5)
    )
    first = await trio.open_tcp_stream(served.host, served.port)
    async with first:
        await first.send_all(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(2):
            data = await raw(served.host, served.port, b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 503 Service Unavailable")
    nursery.cancel_scope.cancel()


async def test_504_when_no_response_comes(serve, raw, nursery) -> None:
    async def never(layer: Any, message: dict[str, Any]) -> None:
        pass

    served = await serve(nursery, never, http=HTTPConfig(response_timeout=0.2))
    data = await raw(served.host, served.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 504 Gateway Timeout")
    assert b"connection: close" in data.lower()
    nursery.cancel_scope.cancel()


async def test_slow_headers_get_408_and_idle_keep_alive_closes(serve, nursery) -> None:
    served = await serve(nursery, http=HTTPConfig(header_timeout=0.2, keep_alive_timeout=0.2))
    stream = await trio.open_tcp_stream(served.host, served.port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHo")
        with trio.fail_after(2):
            data = await stream.receive_some(1000)
        assert data.startswith(b"HTTP/1.1 408 Request Timeout")
    stream = await trio.open_tcp_stream(served.host, served.port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await stream.receive_some(1000)).startswith(b"HTTP/1.1 200")
        with trio.fail_after(2):
            assert await stream.receive_some(1000) == b""  # idle: closed, no 408
    nursery.cancel_scope.cancel()


async def test_long_poll_answered_two_seconds_later_by_another_consumer(serve, nursery) -> None:
    async def join(layer: Any, message: dict[str, Any]) -> None:
        await layer.group_add("waiters", message["reply_channel"])

    served = await serve(
        nursery, join, http=HTTPConfig(response_timeout=0.5, long_poll_paths=("^/poll",))
    )

    async def announcer() -> None:  # "another consumer", later
        await trio.sleep(2)
        await served.layer.send_group("waiters", {"status": 200, "content": b"news"})

    nursery.start_soon(announcer)
    start = trio.current_time()
    async with httpx.AsyncClient(timeout=10) as client:
        responses = []

        async def poll() -> None:
            responses.append(await client.get(served.url + "/poll/1"))

        async with trio.open_nursery() as pollers:
            for _ in range(3):
                pollers.start_soon(poll)
    assert [r.content for r in responses] == [b"news"] * 3
    assert trio.current_time() - start >= 1.9
    nursery.cancel_scope.cancel()


async def test_client_leaving_a_long_poll_sends_http_disconnect(serve, nursery) -> None:
    async def hold(layer: Any, message: dict[str, Any]) -> None:
        pass

    served = await serve(nursery, hold, http=HTTPConfig(long_poll_paths=("^/poll",)))
    stream = await trio.open_tcp_stream(served.host, served.port)
    await stream.send_all(b"GET /poll/x HTTP/1.1\r\nHost: h\r\n\r\n")
    with trio.fail_after(2):
        await served.got_request.wait()
    await stream.aclose()
    with trio.fail_after(2):
        _, message = await served.layer.receive("http.disconnect")
    assert message == {"reply_channel": served.requests[0]["reply_channel"], "path": "/poll/x"}
    nursery.cancel_scope.cancel()


async def test_graceful_shutdown_finishes_the_response(serve, nursery) -> None:
    async def slow(layer: Any, message: dict[str, Any]) -> None:
        await trio.sleep(0.5)
        await layer.send(message["reply_channel"], {"status": 200, "content": b"late"})

    served = await serve(nursery, slow, server=ServerConfig(binds=LOCAL, graceful_timeout=5))
    idle = await trio.open_tcp_stream(served.host, served.port)  # an idle keep-alive client
    busy = await trio.open_tcp_stream(served.host, served.port)
    await busy.send_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    with trio.fail_after(2):
        await served.got_request.wait()
    served.runtime.shutdown()
    with trio.fail_after(3):
        assert await idle.receive_some(100) == b""  # closed at once
        data = b""
        while chunk := await busy.receive_some(1000):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert b"connection: close" in data.lower()
    assert data.endswith(b"late")
    await idle.aclose()
    await busy.aclose()
    with pytest.raises(OSError):
        await trio.open_tcp_stream(served.host, served.port)  # no longer accepting
    nursery.cancel_scope.cancel()


async def test_graceful_shutdown_gives_up_after_the_timeout(serve, nursery) -> None:
    async def never(layer: Any, message: dict[str, Any]) -> None:
        pass

    done = trio.Event()
    served = await serve(nursery, never, server=ServerConfig(binds=LOCAL, graceful_timeout=0.2))
    busy = await trio.open_tcp_stream(served.host, served.port)
    await busy.send_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    await trio.testing.wait_all_tasks_blocked()
    served.runtime.shutdown()
    with trio.fail_after(2):
        assert await busy.receive_some(100) == b""
    await busy.aclose()
    done.set()
    nursery.cancel_scope.cancel()


async def test_max_connections_makes_clients_wait(serve, nursery) -> None:
    served = await serve(nursery, server=ServerConfig(binds=LOCAL, max_connections=1))
    first = await trio.open_tcp_stream(served.host, served.port)
    await first.send_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await first.receive_some(1000)).startswith(b"HTTP/1.1 200")
    second = await trio.open_tcp_stream(served.host, served.port)  # in the backlog
    await second.send_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    with trio.move_on_after(0.3) as waited:
        await second.receive_some(1000)
    assert waited.cancelled_caught
    await first.aclose()
    with trio.fail_after(2):
        assert (await second.receive_some(1000)).startswith(b"HTTP/1.1 200")
    await second.aclose()
    nursery.cancel_scope.cancel()


async def test_proxy_headers_only_from_trusted_peers(serve, nursery) -> None:
    headers = {"x-forwarded-for": "9.9.9.9, 10.0.0.1", "x-forwarded-proto": "https"}
    trusted = ServerConfig(
        binds=LOCAL, proxy_headers=True, forwarded_allow_ips=("127.0.0.1", "10.0.0.0/8")
    )
    served = await serve(nursery, server=trusted)
    async with httpx.AsyncClient() as client:
        await client.get(served.url + "/", headers=headers)
    assert served.requests[0]["client"] == ["9.9.9.9", 0]
    assert served.requests[0]["scheme"] == "https"
    await trio.testing.wait_all_tasks_blocked()
    assert served.log.getvalue().startswith("9.9.9.9 - - [")
    untrusted = ServerConfig(binds=LOCAL, proxy_headers=True, forwarded_allow_ips=("10.0.0.1",))
    served = await serve(nursery, server=untrusted)
    async with httpx.AsyncClient() as client:
        await client.get(served.url + "/", headers=headers)
    assert served.requests[0]["client"][0] == "127.0.0.1"
    assert served.requests[0]["scheme"] == "http"
    nursery.cancel_scope.cancel()


async def test_root_path_and_access_log(serve, nursery) -> None:
    served = await serve(nursery, server=ServerConfig(binds=LOCAL, root_path="/api"))
    async with httpx.AsyncClient() as client:
        await client.get(served.url + '/api/x?q="1"')
    await trio.testing.wait_all_tasks_blocked()
    assert served.requests[0]["root_path"] == "/api"
    assert served.requests[0]["path"] == "/api/x"
    line = served.log.getvalue()
    assert line.startswith("127.0.0.1 - - [")
    assert line.endswith('] "GET /api/x?q=%221%22 HTTP/1.1" 200 13\n')
    nursery.cancel_scope.cancel()


async def test_unix_socket_and_ipv6(serve, nursery, tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    served = await serve(nursery, server=ServerConfig(binds=(("::1", 0),), unix=(path,)))
    assert served.runtime.addresses[0].startswith("http://[::1]:")
    assert served.runtime.addresses[1] == f"http+unix://{path}"
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://[::1]:{served.port}/")
        assert response.text == "Hello, world!"
    stream = await trio.open_unix_socket(path)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(1000):
            data += chunk
    assert data.endswith(b"Hello, world!")
    assert served.requests[0]["client"][0] == "::1"
    assert served.requests[1]["client"] is None
    nursery.cancel_scope.cancel()


async def test_tls(serve, nursery, self_signed_cert: tuple[str, str]) -> None:
    cert, key = self_signed_cert
    served = await serve(
        nursery, server=ServerConfig(binds=LOCAL, certfile=str(cert), keyfile=str(key))
    )
    assert served.runtime.addresses[0].startswith("https://")
    context = ssl.create_default_context(cafile=str(cert))
    async with httpx.AsyncClient(verify=context) as client:
        response = await client.get(f"https://127.0.0.1:{served.port}/")
        assert response.text == "Hello, world!"
    assert served.requests[0]["scheme"] == "https"
    nursery.cancel_scope.cancel()


async def test_invalid_response_from_the_app_is_500(serve, raw, nursery) -> None:
    async def bad(layer: Any, message: dict[str, Any]) -> None:
        await layer.send(message["reply_channel"], {"status": "200", "content": b"x"})

    served = await serve(nursery, bad)
    data = await raw(served.host, served.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 500 Internal Server Error")
    nursery.cancel_scope.cancel()


async def test_welcome_page_without_an_app(serve, nursery) -> None:
    served = await serve(nursery, None, http=HTTPConfig(welcome_page=True))
    async with httpx.AsyncClient() as client:
        response = await client.get(served.url + "/anything")
    assert response.status_code == 200
    assert "csp-bus serve --adapter http --app" in response.text
    nursery.cancel_scope.cancel()


async def test_a_client_that_stops_reading_is_cut_off(serve, nursery) -> None:
    async def firehose(layer: Any, message: dict[str, Any]) -> None:
        reply = message["reply_channel"]
        chunk = b"x" * 512 * 1024
        await layer.send(reply, {"status": 200, "content": chunk, "more_content": True})
        for _ in range(30):
            await layer.send_wait(reply, {"content": chunk, "more_content": True}, timeout=5)

    served = await serve(nursery, firehose, http=HTTPConfig(body_timeout=0.3))
    stream = await trio.open_tcp_stream(served.host, served.port)
    async with stream:
        await stream.send_all(b"GET /firehose HTTP/1.1\r\nHost: h\r\n\r\n")
        with trio.fail_after(5):  # never reading: the server gives up and says so
            _, message = await served.layer.receive("http.disconnect")
        assert message["path"] == "/firehose"
    nursery.cancel_scope.cancel()


async def test_client_leaving_mid_body_closes_the_body_channel(serve, nursery) -> None:
    chunks: list[dict[str, Any]] = []
    closed = trio.Event()

    async def reader(layer: Any, message: dict[str, Any]) -> None:
        while True:
            _, chunk = await layer.receive(message["body_channel"])
            chunks.append(chunk)
            if chunk.get("closed") or not chunk.get("more_content"):
                closed.set()
                return

    served = await serve(nursery, reader, http=HTTPConfig(body_chunk_size=1024))
    stream = await trio.open_tcp_stream(served.host, served.port)
    await stream.send_all(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n")
    await stream.send_all(b"x" * 5000)
    await served.got_request.wait()
    await stream.aclose()
    with trio.fail_after(3):
        await closed.wait()
    assert chunks[-1] == {"closed": True}
    assert sum(len(c.get("content", b"")) for c in chunks) <= 5000 - 1024
    nursery.cancel_scope.cancel()


async def test_a_streamed_body_over_the_limit_gets_413(serve, raw, nursery) -> None:
    async def wait_for_body(layer: Any, message: dict[str, Any]) -> None:
        while True:
            _, chunk = await layer.receive(message["body_channel"])
            if chunk.get("closed") or not chunk.get("more_content"):
                return

    served = await serve(
        nursery, wait_for_body, http=HTTPConfig(body_chunk_size=1024, max_body_size=4000)
    )
    chunk = b"800\r\n" + b"y" * 2048 + b"\r\n"
    data = await raw(
        served.host,
        served.port,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunk * 3
        + b"0\r\n\r\n",
    )
    assert data.startswith(b"HTTP/1.1 413 Content Too Large")
    assert len(served.requests) == 1 and "body_channel" in served.requests[0]
    nursery.cancel_scope.cancel()


async def test_messages_between_requests_are_not_taken_for_the_next_response(
    serve, nursery
) -> None:
    async def app(layer: Any, message: dict[str, Any]) -> None:
        if message["path"] == "/wait":
            await layer.group_add("waiters", message["reply_channel"])
        else:
            await layer.send(message["reply_channel"], {"status": 200, "content": b"hello"})

    served = await serve(nursery, app, http=HTTPConfig(long_poll_paths=("^/wait$",)))
    async with httpx.AsyncClient() as client:

        async def fire() -> None:
            await served.got_request.wait()
            await trio.testing.wait_all_tasks_blocked()
            await served.layer.send_group("waiters", {"status": 200, "content": b"news"})

        nursery.start_soon(fire)
        assert (await client.get(served.url + "/wait")).text == "news"
        # a late fan-out reaches the idle keep-alive connection...
        await served.layer.send_group("waiters", {"status": 200, "content": b"stale"})
        await trio.testing.wait_all_tasks_blocked()
        # ...and is not the answer to its next request
        assert (await client.get(served.url + "/hello")).text == "hello"
    assert len({tuple(m["client"]) for m in served.requests}) == 1  # one connection
    nursery.cancel_scope.cancel()


async def test_slow_answers_keep_the_connection_alive(serve, nursery) -> None:
    async def slow_then_fast(layer: Any, message: dict[str, Any]) -> None:
        if message["path"] == "/slow":
            await trio.sleep(0.7)  # past the fast wait: a watcher task takes over
        await layer.send(message["reply_channel"], {"status": 200, "content": b"ok"})

    served = await serve(nursery, slow_then_fast)
    async with httpx.AsyncClient() as client:
        for path in ("/slow", "/fast", "/slow", "/fast"):
            response = await client.get(served.url + path)
            assert response.text == "ok"
    assert len({tuple(m["client"]) for m in served.requests}) == 1
    nursery.cancel_scope.cancel()


async def test_answers_arriving_at_the_fast_wait_deadline_are_not_lost(serve, nursery) -> None:
    # Answers land around the 0.5 s mark where the rolling timer switches from the fast
    # wait to a watcher task: whichever side of the deadline they fall on, each request
    # gets its own 200 and the connection stays usable.
    async def around_the_deadline(layer: Any, message: dict[str, Any]) -> None:
        await trio.sleep(random.uniform(0.495, 0.505))
        await layer.send_wait(message["reply_channel"], {"status": 200, "content": b"ok"})

    served = await serve(nursery, around_the_deadline)
    answered = 0

    async def client() -> None:
        nonlocal answered
        stream = await trio.open_tcp_stream(served.host, served.port)
        async with stream:
            for _ in range(4):
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                data = b""
                while not data.endswith(b"\r\n\r\nok"):
                    chunk = await stream.receive_some(1000)
                    assert chunk, "the server closed the connection"
                    data += chunk
                assert data.startswith(b"HTTP/1.1 200 OK")
                answered += 1

    with trio.fail_after(10):
        async with trio.open_nursery() as clients:
            for _ in range(60):
                clients.start_soon(client)
    assert answered == 240
    nursery.cancel_scope.cancel()
