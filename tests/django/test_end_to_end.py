"""Real Django behind ``manage.py runserver`` (csp-bus server + worker threads), driven
by a real HTTP client (httpx) over 127.0.0.1 sockets; and the same project as separate
server and worker processes over Redis."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import busproj
import httpx
import pytest
from django.contrib.auth.models import User

HERE = Path(__file__).parent


def manage(*args: str) -> list[str]:
    return [sys.executable, "-m", "django", *args, "--settings=busproj_settings"]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env["DJANGO_RUNSERVER_HIDE_WARNING"] = "true"
    return env


def stop(process: subprocess.Popen[str]) -> str:
    """SIGINT (Ctrl-C), then collect the output; kill if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return (out or "") + (err or "")


def start_runserver(*extra: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        manage("runserver", "127.0.0.1:0", "--noreload", *extra),
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"Starting csp-bus development server at (http://[\d.]+:\d+)/", line)
        if found:
            return process, found.group(1)
    raise AssertionError("runserver did not start:\n" + "".join(lines) + stop(process))


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    process, url = start_runserver("--insecure")  # static files although DEBUG is False
    try:
        yield url
    finally:
        output = stop(process)
    # Ctrl-C stops it gracefully: exit status 0, nothing raised.
    assert process.returncode == 0, output
    assert "Traceback" not in output, output


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=20) as client:
        yield client


def test_hello_and_headers(client: httpx.Client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.text == "Hello, world!"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_form_post_with_csrf(client: httpx.Client) -> None:
    page = client.get("/form/")
    token = re.search(r'value="([^"]+)"', page.text).group(1)
    ok = client.post("/form/", data={"csrfmiddlewaretoken": token, "name": "ann"})
    assert (ok.status_code, ok.text) == (200, "thanks ann")
    client.cookies.clear()
    refused = client.post("/form/", data={"csrfmiddlewaretoken": token, "name": "ann"})
    assert refused.status_code == 403


def test_file_upload(client: httpx.Client) -> None:
    big = os.urandom(3 * 1024 * 1024 + 5)  # several body_channel chunks
    response = client.post(
        "/upload/", data={"title": "t"}, files={"doc": ("doc.bin", big, "application/x-test")}
    )
    data = response.json()
    assert data["fields"] == {"title": "t"}
    assert data["files"]["doc"]["size"] == len(big)
    assert data["files"]["doc"]["sha"] == hashlib.sha256(big).hexdigest()


def test_chunked_request_body(client: httpx.Client) -> None:
    body = os.urandom(700_000)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 100_000):
            yield body[start : start + 100_000]

    response = client.post("/echo/", content=chunks())
    data = response.json()
    assert data["body_len"] == len(body)
    assert data["body_sha"] == hashlib.sha256(body).hexdigest()


def test_streaming_response(client: httpx.Client) -> None:
    with client.stream("GET", "/stream/?n=200") as response:
        assert response.status_code == 200
        assert "content-length" not in response.headers
        text = b"".join(response.iter_bytes()).decode()
    assert text == "".join(f"line {i}\n" for i in range(200))


def test_endless_stream_stops_when_the_client_leaves(client: httpx.Client) -> None:
    marker = busproj.STATE / "events-e2e.closed"
    marker.unlink(missing_ok=True)
    with client.stream("GET", "/events/?id=e2e") as response:
        assert response.headers["content-type"] == "text/event-stream"
        received = b""
        for chunk in response.iter_bytes():
            received += chunk
            if received.count(b"\n\n") >= 3:
                break
    assert received.startswith(b"data: 0\n\ndata: 1\n\n")
    # The server reports the disconnect; the worker stops the generator.
    deadline = time.monotonic() + 10
    while not marker.exists():
        assert time.monotonic() < deadline, "the streaming view was never closed"
        time.sleep(0.05)
    assert client.get("/").status_code == 200  # and the worker thread is free again


def test_file_response(client: httpx.Client) -> None:
    data = os.urandom(4 * 1024 * 1024 + 3)
    busproj.BIG_FILE.write_bytes(data)
    response = client.get("/file/")
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(data))
    assert response.content == data


def test_cookies_and_session(client: httpx.Client) -> None:
    response = client.get("/cookies/")
    assert response.headers.get_list("set-cookie")[0].startswith("first=1")
    assert len(response.headers.get_list("set-cookie")) == 2
    assert [client.get("/counter/").text for _ in range(3)] == ["1", "2", "3"]


def test_admin_login(client: httpx.Client) -> None:
    User.objects.filter(username="e2e-admin").delete()
    User.objects.create_superuser("e2e-admin", "a@example.com", "pw-e2e-admin-1")
    page = client.get("/admin/login/?next=/admin/")
    assert page.status_code == 200
    assert "Django administration" in page.text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    done = client.post(
        "/admin/login/?next=/admin/",
        data={"csrfmiddlewaretoken": token, "username": "e2e-admin", "password": "pw-e2e-admin-1"},
    )
    assert done.status_code == 302
    assert client.get("/whoami/").text == "e2e-admin"
    assert client.get("/admin/").status_code == 200


def test_static_files(client: httpx.Client) -> None:
    response = client.get("/static/admin/css/base.css")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/css"
    assert b"body" in response.content
    assert client.get("/static/admin/css/nope.css").status_code == 404


def test_errors(client: httpx.Client) -> None:
    assert client.get("/nope/").status_code == 404
    assert client.get("/boom/").status_code == 500


def test_server_and_worker_processes_over_redis(redis_url: str) -> None:
    """``runserver --noworker`` and two ``runworker`` processes sharing Redis: views,
    sessions, uploads, and one WebSocket's messages kept in order across processes."""
    from websockets.sync.client import connect as ws_connect

    server, url = start_runserver("--noworker", "--layer", redis_url)
    workers = [
        subprocess.Popen(
            manage("runworker", "--layer", redis_url),
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for worker in workers:
            assert "runworker:" in worker.stdout.readline()
        with httpx.Client(base_url=url, timeout=20) as client:
            assert client.get("/").text == "Hello, world!"
            assert [client.get("/counter/").text for _ in range(4)] == ["1", "2", "3", "4"]
            big = os.urandom(1024 * 1024)
            echoed = client.post("/echo/", content=big).json()
            assert echoed["body_sha"] == hashlib.sha256(big).hexdigest()
            cookie = login_cookie(client, "redis-ann")
        with ws_connect(ws_url(url, "/ws/user/"), additional_headers={"Cookie": cookie}) as ws:
            assert ws.recv(timeout=10) == "hello redis-ann"
            ws.send("hi")
            assert ws.recv(timeout=10) == "redis-ann: hi"
        with ws_connect(ws_url(url, "/ws/order/")) as ws:
            sent = [str(i) for i in range(30)]
            for text in sent:
                ws.send(text)
            ws.send("done")
            assert json.loads(ws.recv(timeout=30)) == sent
    finally:
        outputs = [stop(worker) for worker in workers]
        server_output = stop(server)
    for output in [*outputs, server_output]:
        assert "Traceback" not in output, output


# -- WebSocket ------------------------------------------------------------------------------


def login_cookie(client: httpx.Client, username: str) -> str:
    User.objects.filter(username=username).delete()
    User.objects.create_user(username, password="pw-ws-user-1", is_staff=True)
    page = client.get("/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    done = client.post(
        "/admin/login/",
        data={"csrfmiddlewaretoken": token, "username": username, "password": "pw-ws-user-1"},
    )
    assert done.status_code == 302
    return f"sessionid={client.cookies['sessionid']}"


def ws_url(server: str, path: str) -> str:
    return server.replace("http://", "ws://") + path


def test_websocket_consumer_sees_logged_in_user(server: str, client: httpx.Client) -> None:
    from websockets.sync.client import connect as ws_connect

    cookie = login_cookie(client, "ws-ann")
    with ws_connect(ws_url(server, "/ws/user/"), additional_headers={"Cookie": cookie}) as ws:
        assert ws.recv(timeout=10) == "hello ws-ann"
        ws.send("hi")
        assert ws.recv(timeout=10) == "ws-ann: hi"
    with ws_connect(ws_url(server, "/ws/user/")) as anonymous:
        assert anonymous.recv(timeout=10) == "hello anonymous"
        anonymous.send("hi")
        assert anonymous.recv(timeout=10) == "anonymous: hi"


def test_websocket_ordering_enforced(server: str) -> None:
    from websockets.sync.client import connect as ws_connect

    with ws_connect(ws_url(server, "/ws/order/")) as ws:
        sent = [str(i) for i in range(30)]
        for text in sent:
            ws.send(text)
        ws.send("done")
        assert json.loads(ws.recv(timeout=20)) == sent


def test_runserver_autoreloader_restarts_on_code_change() -> None:
    process = subprocess.Popen(
        manage("runserver", "127.0.0.1:0"),
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the reloader's parent and child: one process group
    )

    def next_url() -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            found = re.search(r"Starting csp-bus development server at (http://[\d.]+:\d+)/", line)
            if found:
                return found.group(1)
        raise AssertionError("no (re)start announced")

    try:
        first = next_url()
        assert httpx.get(first + "/", timeout=10).text == "Hello, world!"
        time.sleep(1.1)  # the StatReloader compares modification times once a second
        os.utime(HERE / "busproj.py")
        second = next_url()
        assert httpx.get(second + "/", timeout=10).text == "Hello, world!"
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
