"""ViewConsumer through the memory layer: real Django, real messages, no sockets."""

from __future__ import annotations

import hashlib
import json
import os
import re

import busproj
import pytest
from csp_bus.adapters.django.conf import BusSettings
from csp_bus.adapters.django.handler import ViewConsumer
from csp_bus.adapters.django.testing import HttpClient
from django.contrib.auth.models import User
from django.core.signals import request_finished, request_started


@pytest.fixture
def client():
    with HttpClient() as client:
        yield client


def test_hello(client: HttpClient) -> None:
    response = client.get("/")
    assert response.status == 200
    assert response.content == b"Hello, world!"
    assert response.header("content-type") == "text/plain"
    assert len(response.messages) == 1
    assert response.messages[0]["more_content"] is False


def test_request_fields_reach_django(client: HttpClient) -> None:
    response = client.request(
        "GET",
        "/echo/?a=1&a=2&b=%C3%A9",
        headers=[("X-Custom", "yes"), ("X-Custom", "again"), ("Cookie", "k=v; other=2")],
        scheme="https",
    )
    data = json.loads(response.content)
    assert data["method"] == "GET"
    assert data["path"] == "/echo/"
    assert data["GET"] == {"a": ["1", "2"], "b": ["é"]}
    assert data["COOKIES"] == {"k": "v", "other": "2"}
    assert data["scheme"] == "https"
    assert data["secure"] is True
    assert data["host"] == "testserver"
    meta = data["meta"]
    assert meta["HTTP_X_CUSTOM"] == "yes,again"
    assert meta["REMOTE_ADDR"] == "127.0.0.1"
    assert meta["REMOTE_PORT"] == 50000
    assert meta["SERVER_NAME"] == "testserver"
    assert meta["SERVER_PORT"] == "80"
    assert meta["QUERY_STRING"] == "a=1&a=2&b=%C3%A9"


def test_underscore_headers_are_dropped(client: HttpClient) -> None:
    response = client.get("/echo/", headers=[("X_Forwarded_For", "6.6.6.6")])
    assert "HTTP_X_FORWARDED_FOR" not in json.loads(response.content)["meta"]


def test_root_path_is_script_name(client: HttpClient) -> None:
    response = client.get("/prefix/echo/", root_path="/prefix")
    data = json.loads(response.content)
    assert data["path"] == "/prefix/echo/"
    assert data["path_info"] == "/echo/"
    assert data["meta"]["SCRIPT_NAME"] == "/prefix"
    assert data["script_prefix"] == "/prefix/"


def test_body_and_streamed_body_channel() -> None:
    body = os.urandom(300_000)
    with HttpClient(body_chunk_size=64 * 1024) as client:
        response = client.post("/echo/", body=body, content_type="application/octet-stream")
    data = json.loads(response.content)
    assert data["body_len"] == len(body)
    assert data["body_sha"] == hashlib.sha256(body).hexdigest()


def test_csrf_form_post(client: HttpClient) -> None:
    page = client.get("/form/")
    token = re.search(rb'value="([^"]+)"', page.content).group(1).decode()
    assert "csrftoken" in client.cookies
    ok = client.post("/form/", {"csrfmiddlewaretoken": token, "name": "ann"})
    assert (ok.status, ok.content) == (200, b"thanks ann")
    client.cookies.clear()
    refused = client.post("/form/", {"csrfmiddlewaretoken": token, "name": "ann"})
    assert refused.status == 403


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "----cspbusboundary"
    parts = []
    for name, value in fields.items():
        disposition = f'Content-Disposition: form-data; name="{name}"'
        parts.append(f"--{boundary}\r\n{disposition}\r\n\r\n{value}\r\n".encode())
    for name, (filename, data) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def test_file_upload_chunked_without_content_length() -> None:
    small = b"small file"
    big = os.urandom(3 * 1024 * 1024)  # over FILE_UPLOAD_MAX_MEMORY_SIZE: goes to disk
    body, content_type = _multipart({"title": "t"}, {"a": ("a.txt", small), "b": ("b.bin", big)})
    with HttpClient(body_chunk_size=200_000) as client:
        content = client.message(
            "POST", "/upload/", body=body[:200_000], headers=[("content-type", content_type)]
        )
        content["headers"] = [h for h in content["headers"] if h[0] != b"content-length"]
        content["body_channel"] = client.bus.new_channel("http.request.body?")
        chunks = [body[i : i + 200_000] for i in range(200_000, len(body), 200_000)]
        response = client.send(content, chunks)
    data = json.loads(response.content)
    assert data["fields"] == {"title": "t"}
    assert data["files"]["a"] == {
        "name": "a.txt",
        "size": len(small),
        "sha": hashlib.sha256(small).hexdigest(),
        # Django keeps every file of a request this big on disk
        "on_disk": True,
    }
    assert data["files"]["b"]["sha"] == hashlib.sha256(big).hexdigest()
    assert data["files"]["b"]["on_disk"] is True


def test_streaming_response_goes_out_chunk_by_chunk(client: HttpClient) -> None:
    response = client.get("/stream/?n=3")
    assert response.content == b"line 0\nline 1\nline 2\n"
    # headers first, one message per yielded chunk, then the end marker
    assert [m.get("content") for m in response.messages] == [
        b"",
        b"line 0\n",
        b"line 1\n",
        b"line 2\n",
        b"",
    ]
    assert [m["more_content"] for m in response.messages] == [True, True, True, True, False]


def test_file_response_is_sent_in_chunks() -> None:
    data = os.urandom(5 * 256 * 1024 + 17)
    busproj.BIG_FILE.write_bytes(data)
    with HttpClient() as client:
        response = client.get("/file/")
    assert response.status == 200
    assert response.content == data
    assert [len(m["content"]) for m in response.messages] == [256 * 1024] * 5 + [17]
    assert response.header("content-length") == str(len(data))


def test_large_plain_response_is_split() -> None:
    consumer = ViewConsumer(BusSettings(response_chunk_size=1024))
    with HttpClient(consumer) as client:
        response = client.get("/stream/?n=1")
        assert response.status == 200
        big = client.get("/echo/?pad=" + "x" * 5000)
    assert len(big.messages) > 1
    assert all(len(m["content"]) <= 1024 for m in big.messages)
    assert json.loads(big.content)["method"] == "GET"


def test_head_has_no_body(client: HttpClient) -> None:
    response = client.head("/")
    assert response.status == 200
    assert response.content == b""


def test_multiple_set_cookie_headers(client: HttpClient) -> None:
    response = client.get("/cookies/")
    values = response.header_list("set-cookie")
    assert len(values) == 2
    assert response.cookies["first"].value == "1"
    assert response.cookies["second"].value == "two words"
    assert response.cookies["second"]["httponly"]


def test_session_persists_through_cookie(client: HttpClient) -> None:
    assert [client.get("/counter/").content for _ in range(3)] == [b"1", b"2", b"3"]


def test_admin_login_page_and_login(client: HttpClient) -> None:
    User.objects.filter(username="admin").delete()
    User.objects.create_superuser("admin", "a@example.com", "pw-admin-123")
    redirect = client.get("/admin/")
    assert redirect.status == 302
    assert redirect.header("location").startswith("/admin/login/")
    page = client.get("/admin/login/?next=/admin/")
    assert page.status == 200
    assert b"csrfmiddlewaretoken" in page.content
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.content).group(1)
    done = client.post(
        "/admin/login/?next=/admin/",
        {"csrfmiddlewaretoken": token.decode(), "username": "admin", "password": "pw-admin-123"},
    )
    assert done.status == 302, done.content[:500]
    assert client.get("/whoami/").content == b"admin"
    assert client.get("/admin/").status == 200


def test_exception_becomes_500(client: HttpClient) -> None:
    response = client.get("/boom/")
    assert response.status == 500


def test_not_found(client: HttpClient) -> None:
    assert client.get("/nope/").status == 404


def test_signals_sent_once_per_request(client: HttpClient) -> None:
    seen: list[str] = []

    def started(sender, **kwargs):
        seen.append("started")

    def finished(sender, **kwargs):
        # Runs after Django's close_old_connections (connected first): with
        # CONN_MAX_AGE = 0 the view's database connection is closed by now.
        from django.db import connection

        seen.append("finished")
        seen.append("db closed" if connection.connection is None else "db open")

    request_started.connect(started)
    request_finished.connect(finished)
    try:
        client.get("/users/")
    finally:
        request_started.disconnect(started)
        request_finished.disconnect(finished)
    assert seen == ["started", "finished", "db closed"]


def test_aborted_body_sends_nothing() -> None:
    with HttpClient() as client:
        content = client.message("POST", "/echo/", body=b"part")
        content["body_channel"] = client.bus.new_channel("http.request.body?")
        client.bus.send(content["body_channel"], {"closed": True})
        client.consumer.handle(content, client.bus)
        assert client.bus.receive_nowait("http.response.test!") is None


def test_late_body_gets_408() -> None:
    consumer = ViewConsumer(BusSettings(body_timeout=0.2))
    with HttpClient(consumer) as client:
        content = client.message("POST", "/echo/", body=b"part")
        content["body_channel"] = client.bus.new_channel("http.request.body?")
        response = client.send(content)
    assert response.status == 408


async def test_in_a_worker_a_full_reply_channel_holds_the_response_not_loses_it() -> None:
    """In a worker the last response message is posted (send_wait_posted): with the
    reply channel full it still arrives, in order, once there is room, and the worker
    takes no other request on that thread meanwhile."""
    import trio

    from csp_bus.embedded import run_workers
    from csp_bus.layers.memory import MemoryLayer
    from csp_bus.layers.options import LayerOptions
    from csp_bus.routing import route

    consumer = ViewConsumer(BusSettings(response_chunk_size=1024))
    request = {
        "reply_channel": "http.response.t!c1",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/echo/",
        "query_string": b"pad=" + b"x" * 3000,
        "root_path": "",
        "headers": [[b"host", b"testserver"]],
        "body": b"",
        "client": ["127.0.0.1", 50000],
        "server": ["testserver", 80],
    }
    options = LayerOptions(channel_capacity={"http.response.t!": 1})
    async with MemoryLayer(options) as layer, trio.open_nursery() as nursery:
        worker = await nursery.start(
            lambda task_status: run_workers(
                layer, [route("http.request", consumer)], threads=1, task_status=task_status
            )
        )
        await layer.send("http.request", request)
        await layer.send("http.request", {**request, "reply_channel": "http.response.t!c2"})
        messages = []
        with trio.fail_after(10):
            while True:
                await trio.sleep(0.05)  # a slow reader: the channel stays full meanwhile
                channel, message = await layer.receive("http.response.t!")
                assert channel == "http.response.t!c1"
                messages.append(message)
                if not message["more_content"]:
                    break
        assert len(messages) > 2
        assert json.loads(b"".join(m["content"] for m in messages))["method"] == "GET"
        with trio.fail_after(10):
            channel, _ = await layer.receive("http.response.t!")
        assert channel == "http.response.t!c2"
        worker.stop()
