"""Session and auth decorators on real Django sessions (database backend)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from http.cookies import SimpleCookie

import pytest
from csp_bus.adapters.django.auth import (
    channel_session_user,
    channel_session_user_from_http,
    http_session_user,
)
from csp_bus.adapters.django.sessions import (
    channel_session,
    enforce_ordering,
    http_session,
    session_for_reply_channel,
)
from csp_bus.adapters.django.testing import ConsumerClient, HttpClient
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session

from csp_bus.consumers import Message, using


def login(username: str, password: str = "pw-secret-123") -> SimpleCookie:
    """Log in through the admin login page; return the browser's cookies."""
    User.objects.filter(username=username).delete()
    User.objects.create_user(username, password=password, is_staff=True)
    with HttpClient() as client:
        page = client.get("/admin/login/")
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.content)
        done = client.post(
            "/admin/login/",
            {
                "csrfmiddlewaretoken": token.group(1).decode(),
                "username": username,
                "password": password,
            },
        )
        assert done.status == 302
        return client.cookies


@pytest.fixture
def seen() -> Iterator[list[object]]:
    yield []


def test_channel_session_keeps_values_per_connection(seen: list[object]) -> None:
    @channel_session
    def consumer(message):
        message.channel_session["n"] = message.channel_session.get("n", 0) + 1
        seen.append(message.channel_session["n"])

    with ConsumerClient(path="/a/") as one, ConsumerClient(path="/b/") as two:
        one.send("websocket.connect", consumer)
        one.send("websocket.receive", consumer, text="x")
        two.send("websocket.connect", consumer)
        one.send("websocket.receive", consumer, text="y")
        key = session_for_reply_channel(one.reply_channel).session_key
        assert Session.objects.filter(session_key=key).exists()
        one.send("websocket.disconnect", consumer, code=1000)
        assert not Session.objects.filter(session_key=key).exists()
    assert seen == [1, 2, 1, 3, 4]


def test_http_session_user_sees_logged_in_user(seen: list[object]) -> None:
    cookies = login("ann")

    @http_session_user
    def consumer(message):
        seen.append((message.user.username, message.user.is_authenticated))

    with ConsumerClient(cookies=cookies) as ws:
        ws.send("websocket.connect", consumer)
    with ConsumerClient() as ws:
        ws.send("websocket.connect", consumer)
    bad = SimpleCookie()
    bad["sessionid"] = "not-a-real-session-key"
    with ConsumerClient(cookies=bad) as ws:
        ws.send("websocket.connect", consumer)
    key = cookies["sessionid"].value
    with ConsumerClient(query_string=f"session_key={key}".encode()) as ws:
        ws.send("websocket.connect", consumer)
    assert seen == [("ann", True), ("", False), ("", False), ("ann", True)]


def test_user_copied_from_http_into_channel_session(seen: list[object]) -> None:
    cookies = login("bob")

    @channel_session_user_from_http
    def connect(message):
        seen.append(("connect", message.user.username))
        message.reply_channel.send({"accept": True})

    @channel_session_user
    def receive(message):
        seen.append((message["text"], message.user.username))

    with ConsumerClient(cookies=cookies) as ws:
        ws.send("websocket.connect", connect)
        assert ws.receive() == {"accept": True}
        ws.send("websocket.receive", receive, text="hi")
    with ConsumerClient() as anonymous:
        anonymous.send("websocket.connect", connect)
        anonymous.send("websocket.receive", receive, text="anon")
    assert seen == [("connect", "bob"), ("hi", "bob"), ("connect", ""), ("anon", "")]


def test_http_session_changes_are_saved(seen: list[object]) -> None:
    cookies = login("cid")

    @http_session
    def consumer(message):
        message.http_session["from_socket"] = "yes"

    with ConsumerClient(cookies=cookies) as ws:
        ws.send("websocket.connect", consumer)
    session = Session.objects.get(session_key=cookies["sessionid"].value)
    assert session.get_decoded()["from_socket"] == "yes"


def test_http_session_needs_headers() -> None:
    @http_session
    def consumer(message):
        pass

    with ConsumerClient() as ws, pytest.raises(Exception, match="needs a message with headers"):
        ws.send("websocket.receive", consumer, text="x")


def test_enforce_ordering_parks_early_messages(seen: list[object]) -> None:
    @enforce_ordering
    def consumer(message):
        seen.append(message.get("text", message.channel.name))

    with ConsumerClient() as ws:
        ws.send("websocket.connect", consumer)
        first = ws.content("websocket.receive", text="one")
        second = ws.content("websocket.receive", text="two")
        third = ws.content("websocket.receive", text="three")
        with using(ws.bus):
            consumer(Message(third, "websocket.receive"))  # early: parked
            consumer(Message(second, "websocket.receive"))  # early: parked
            assert seen == ["websocket.connect"]
            assert ws.bus.receive_nowait("websocket.receive") is None
            consumer(Message(first, "websocket.receive"))
            # handling 'one' released the parked messages back to their channel
            released = [ws.bus.receive_nowait("websocket.receive") for _ in range(2)]
            assert [m["text"] for _, m in released] == ["three", "two"]
            consumer(Message(released[0][1], "websocket.receive"))  # still early: parked
            consumer(Message(released[1][1], "websocket.receive"))  # 'two', then release
            again = ws.bus.receive_nowait("websocket.receive")
            consumer(Message(again[1], "websocket.receive"))
            consumer(Message(first, "websocket.receive"))  # a duplicate: skipped
    assert seen == ["websocket.connect", "one", "two", "three"]


def test_sync_only() -> None:
    async def consumer(message):
        pass

    for decorator in (channel_session, http_session, enforce_ordering, channel_session_user):
        with pytest.raises(TypeError, match="sync consumers only"):
            decorator(consumer)


def test_consumer_client_uses_the_project_routes() -> None:
    with ConsumerClient(path="/ws/user/") as ws:
        ws.send("websocket.connect")
        assert ws.receive() == {"accept": True}
        assert ws.receive() == {"text": "hello anonymous"}
        ws.send("websocket.receive", text="hey")
        assert ws.receive() == {"text": "anonymous: hey"}
    with ConsumerClient(path="/nowhere/") as ws, pytest.raises(LookupError, match="no route"):
        ws.send("websocket.connect")


def test_routed_consumers_close_old_database_connections() -> None:
    from django.db import connection

    with ConsumerClient(path="/ws/db/") as ws:
        ws.send("websocket.connect")
        # the consumer used the database; Django's hygiene closed it afterwards
        assert ws.receive() == {"text": "users counted"}
        assert connection.connection is None


def test_a_session_deleted_while_a_consumer_runs_is_not_an_error(seen: list[object]) -> None:
    """Regression: the connection's disconnect consumer may delete the channel session
    while a receive consumer of the same connection is still running (seen in the full
    suite: Django raised UpdateError from the receive consumer's save). The connection is
    gone then; there is nothing to save into, and no error to report."""

    @channel_session
    def consumer(message):
        message.channel_session["n"] = 1
        # What a concurrent websocket.disconnect consumer does:
        session_for_reply_channel(message.reply_channel.name).delete()
        seen.append("ran")

    with ConsumerClient(path="/gone/") as client:
        client.send("websocket.connect", consumer)
        client.send("websocket.receive", consumer, text="x")
    assert seen == ["ran", "ran"]
