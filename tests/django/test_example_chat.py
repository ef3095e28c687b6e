"""examples/django_chat end to end: two logged-in browsers chat over WebSocket through
``manage.py runserver``; an anonymous socket is refused."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django_chat"


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["CHAT_DB"] = str(tmp_path_factory.mktemp("chat") / "db.sqlite3")
    env["DJANGO_RUNSERVER_HIDE_WARNING"] = "true"
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], cwd=EXAMPLE, env=env, check=True)
    create = (
        "from django.contrib.auth.models import User\n"
        "for name in ('ann', 'bob'):\n"
        "    User.objects.create_user(name, password='pw-' + name + '-123')\n"
    )
    subprocess.run([*manage, "shell", "-c", create], cwd=EXAMPLE, env=env, check=True)
    process = subprocess.Popen(
        [*manage, "runserver", "127.0.0.1:0", "--noreload"],
        cwd=EXAMPLE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        url = None
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            found = re.search(r"server at (http://[\d.]+:\d+)/", line)
            url = found.group(1) if found else None
        assert url, process.stderr.read()
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@contextlib.contextmanager
def log_in(url: str, name: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=20) as client:
        page = client.get("/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        done = client.post(
            "/login/",
            data={"csrfmiddlewaretoken": token, "username": name, "password": f"pw-{name}-123"},
        )
        assert done.status_code == 302, done.text[:500]
        yield client


def test_room_list_needs_login(chat: str) -> None:
    with httpx.Client(base_url=chat) as anonymous:
        assert anonymous.get("/").headers["location"] == "/login/?next=/"
    with log_in(chat, "ann") as ann:
        page = ann.get("/")
        assert 'Logged in as <strong id="me">ann</strong>' in page.text
        assert "/room/lobby/" in page.text


def test_chat_messages_carry_the_username(chat: str) -> None:
    ws = chat.replace("http://", "ws://") + "/ws/chat/lobby/"
    with log_in(chat, "ann") as ann, log_in(chat, "bob") as bob:
        ann_cookie = {"Cookie": f"sessionid={ann.cookies['sessionid']}"}
        bob_cookie = {"Cookie": f"sessionid={bob.cookies['sessionid']}"}
        with ws_connect(ws, additional_headers=ann_cookie) as a:
            assert json.loads(a.recv(timeout=10)) == {"user": "ann", "event": "joined"}
            with ws_connect(ws, additional_headers=bob_cookie) as b:
                assert json.loads(a.recv(timeout=10)) == {"user": "bob", "event": "joined"}
                assert json.loads(b.recv(timeout=10)) == {"user": "bob", "event": "joined"}
                a.send("hello bob")
                for sock in (a, b):
                    assert json.loads(sock.recv(timeout=10)) == {"user": "ann", "text": "hello bob"}
            assert json.loads(a.recv(timeout=10)) == {"user": "bob", "event": "left"}


def test_anonymous_socket_is_refused(chat: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(chat.replace("http://", "ws://") + "/ws/chat/lobby/")
    assert refused.value.response.status_code == 403
