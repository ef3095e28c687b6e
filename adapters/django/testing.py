"""Test helpers: drive consumers with messages over the memory layer, no sockets.

:class:`HttpClient` sends ``http.request`` messages to a :class:`ViewConsumer` (or any
``handle(content, bus)`` object) and collects the reply messages into a
:class:`BusResponse`; it keeps cookies between requests like a browser, so sessions and
logins work::

    from csp_bus.adapters.django.testing import HttpClient

    def test_home():
        with HttpClient() as client:
            response = client.get("/")
            assert response.status == 200
            assert b"Welcome" in response.content

:class:`ConsumerClient` calls any consumer function with messages built like the
WebSocket adapter's (``websocket.connect``/``receive``/``disconnect``) and returns what
the consumer sent back on the reply channel. Both are synchronous, so they work in
``django.test.TestCase`` and in plain pytest functions alike.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urlsplit

from csp_bus import sync
from csp_bus.consumers import Message, using
from csp_bus.messages import new_channel_name

from .conf import BusSettings
from .handler import ViewConsumer

__all__ = ["BusResponse", "BusTestCase", "ConsumerClient", "HttpClient"]


@dataclass
class BusResponse:
    """Every reply message of one request, and their sum."""

    status: int
    headers: list[tuple[bytes, bytes]]
    content: bytes
    messages: list[dict[str, Any]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        values = self.header_list(name)
        return values[0] if values else None

    def header_list(self, name: str) -> list[str]:
        wanted = name.lower().encode("latin-1")
        return [v.decode("latin-1") for k, v in self.headers if k.lower() == wanted]

    @property
    def cookies(self) -> SimpleCookie:
        jar: SimpleCookie = SimpleCookie()
        for value in self.header_list("set-cookie"):
            jar.load(value)
        return jar


class _Bus:
    """One memory layer on a private Trio loop, shared by a client's requests."""

    def __init__(self, url: str) -> None:
        self._stack = ExitStack()
        self.url = url
        self.bus: sync.SyncLayer | None = None

    def __enter__(self) -> sync.SyncLayer:
        self.bus = self._stack.enter_context(sync.connect(self.url))
        return self.bus

    def close(self) -> None:
        self._stack.close()
        self.bus = None


class HttpClient:
    """Sends ``http.request`` messages to a view consumer and reads the replies.

    ``consumer`` defaults to a :class:`ViewConsumer` for the current Django project.
    ``body_chunk_size``, when set, sends bodies larger than it through a ``body_channel``
    in chunks of that size, as the HTTP adapter does for large uploads.
    """

    def __init__(
        self,
        consumer: Any = None,
        *,
        layer: str = "memory://",
        body_chunk_size: int | None = None,
        timeout: float = 10.0,
        client: tuple[str, int] = ("127.0.0.1", 50000),
        server: tuple[str, int] = ("testserver", 80),
    ) -> None:
        self.consumer = consumer if consumer is not None else ViewConsumer(BusSettings())
        self.body_chunk_size = body_chunk_size
        self.timeout = timeout
        self.client = client
        self.server = server
        self.cookies: SimpleCookie = SimpleCookie()
        self._bus = _Bus(layer)
        self._layer: sync.SyncLayer | None = None

    def __enter__(self) -> HttpClient:
        self._layer = self._bus.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bus.close()
        self._layer = None

    @property
    def bus(self) -> sync.SyncLayer:
        if self._layer is None:
            raise RuntimeError("use the client in a with block: with HttpClient() as client")
        return self._layer

    def message(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        scheme: str = "http",
        root_path: str = "",
    ) -> dict[str, Any]:
        """The ``http.request`` message the HTTP adapter would send for this request."""
        parts = urlsplit(path)
        header_list = [[b"host", self.server[0].encode()]]
        header_list += [[k.lower().encode("latin-1"), v.encode("latin-1")] for k, v in headers]
        if self.cookies and not any(k == b"cookie" for k, _ in header_list):
            value = "; ".join(f"{m.key}={m.coded_value}" for m in self.cookies.values())
            header_list.append([b"cookie", value.encode("latin-1")])
        if body and not any(k == b"content-length" for k, _ in header_list):
            header_list.append([b"content-length", str(len(body)).encode()])
        return {
            "reply_channel": new_channel_name("http.response.test!"),
            "http_version": "1.1",
            "method": method.upper(),
            "scheme": scheme,
            "path": parts.path or "/",
            "query_string": parts.query.encode("latin-1"),
            "root_path": root_path,
            "headers": header_list,
            "body": body,
            "client": list(self.client),
            "server": list(self.server),
        }

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        scheme: str = "http",
        root_path: str = "",
    ) -> BusResponse:
        """Send one request through the consumer; return the collected response."""
        content = self.message(
            method, path, body=body, headers=headers, scheme=scheme, root_path=root_path
        )
        chunks: list[bytes] = []
        size = self.body_chunk_size
        if size is not None and len(body) > size:
            content["body"] = body[:size]
            content["body_channel"] = self.bus.new_channel("http.request.body?")
            chunks = [body[i : i + size] for i in range(size, len(body), size)]
        response = self.send(content, chunks)
        for morsel in response.cookies.values():
            if morsel["max-age"] == "0" or (morsel["expires"] and morsel.value == ""):
                self.cookies.pop(morsel.key, None)
            else:
                self.cookies[morsel.key] = morsel.value
        return response

    def send(self, content: dict[str, Any], chunks: Iterable[bytes] = ()) -> BusResponse:
        """Run the consumer on ``content`` (body chunks follow on its ``body_channel``)."""
        bus = self.bus
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self.consumer.handle(content, bus)
            except BaseException as exc:  # re-raised in the test's thread below
                errors.append(exc)

        # The consumer runs in its own thread, as under a worker, while this thread feeds
        # the body and drains the replies (a big response would otherwise fill the reply
        # channel and block the consumer for good).
        thread = threading.Thread(target=run, name="csp-bus-test-consumer", daemon=True)
        thread.start()
        try:
            pieces = list(chunks)
            for index, piece in enumerate(pieces):
                message = {"content": piece, "more_content": index < len(pieces) - 1}
                bus.send_wait(content["body_channel"], message, timeout=self.timeout)
            return self._collect(content["reply_channel"], thread, errors)
        finally:
            thread.join(self.timeout)

    def _collect(
        self, reply: str, thread: threading.Thread, errors: list[BaseException]
    ) -> BusResponse:
        messages: list[dict[str, Any]] = []
        prefix = reply[: reply.index("!") + 1]
        while True:
            got = self.bus.receive(prefix, timeout=0.05)
            if got is None:
                if errors:
                    raise errors[0]
                if thread.is_alive():
                    continue
                # The consumer is done: whatever it sent is on the layer by now.
                got = self.bus.receive_nowait(prefix)
                if got is None:
                    raise AssertionError(
                        f"the consumer finished without completing a response: {messages}"
                    )
            messages.append(got[1])
            if not got[1].get("more_content"):
                break
        first = messages[0]
        return BusResponse(
            status=first["status"],
            headers=[(bytes(k), bytes(v)) for k, v in first.get("headers", [])],
            content=b"".join(m.get("content", b"") for m in messages),
            messages=messages,
        )

    def get(self, path: str, **kwargs: Any) -> BusResponse:
        return self.request("GET", path, **kwargs)

    def head(self, path: str, **kwargs: Any) -> BusResponse:
        return self.request("HEAD", path, **kwargs)

    def post(
        self,
        path: str,
        data: Mapping[str, str] | None = None,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        **kwargs: Any,
    ) -> BusResponse:
        """POST a form (``data``) or a raw ``body`` with ``content_type``."""
        extra = list(headers)
        if data is not None:
            body = urlencode(data).encode()
            content_type = content_type or "application/x-www-form-urlencoded"
        if content_type:
            extra.append(("content-type", content_type))
        return self.request("POST", path, body=body, headers=extra, **kwargs)


class ConsumerClient:
    """Calls consumers the way a worker does, and reads what they send back.

    The consumer runs in the calling thread with a :class:`csp_bus.consumers.Message`,
    inside ``csp_bus.consumers.using(bus)`` (so ``Channel``/``Group`` and
    ``enforce_ordering`` use this client's layer). A consumer raising ``ConsumeLater``
    raises it to the caller: the test decides what "later" means.

    One client is one WebSocket connection (one reply channel, ``order`` counting up)::

        with ConsumerClient(path="/chat/lobby/", cookies=client.cookies) as ws:
            ws.send("websocket.connect", chat_connect)     # this consumer
            assert ws.receive() == {"accept": True}
            ws.send("websocket.receive", text="hi")        # the one the routes pick
    """

    def __init__(
        self,
        *,
        path: str = "/",
        headers: Iterable[tuple[str, str]] = (),
        cookies: SimpleCookie | None = None,
        query_string: bytes = b"",
        layer: str = "memory://",
    ) -> None:
        self.path = path
        self.query_string = query_string
        self.headers = [[k.lower().encode("latin-1"), v.encode("latin-1")] for k, v in headers]
        if cookies:
            value = "; ".join(f"{m.key}={m.coded_value}" for m in cookies.values())
            self.headers.append([b"cookie", value.encode("latin-1")])
        self.reply_channel = new_channel_name("websocket.send.test!")
        self._router: Any = None
        self.order = 0
        self._bus = _Bus(layer)
        self._layer: sync.SyncLayer | None = None

    def __enter__(self) -> ConsumerClient:
        self._layer = self._bus.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bus.close()
        self._layer = None

    @property
    def bus(self) -> sync.SyncLayer:
        if self._layer is None:
            raise RuntimeError("use the client in a with block")
        return self._layer

    def content(self, channel: str, **fields: Any) -> dict[str, Any]:
        """The message the WebSocket adapter would send on ``channel``."""
        base: dict[str, Any] = {"reply_channel": self.reply_channel, "path": self.path}
        if channel == "websocket.connect":
            self.order = 0
            base.update(
                scheme="ws",
                query_string=self.query_string,
                root_path="",
                headers=self.headers,
                client=["127.0.0.1", 50000],
                server=["testserver", 80],
            )
        else:
            self.order += 1
        base["order"] = self.order
        base.update(fields)
        return base

    def send(
        self, channel: str, consumer: Callable[..., Any] | None = None, /, **fields: Any
    ) -> None:
        """Build the ``channel`` message and run a consumer on it in this thread.

        Without ``consumer`` the project's routes pick it (``CSP_BUS["ROUTING"]``, as a
        worker would), and the route's named groups are passed as keyword arguments.
        """
        content = self.content(channel, **fields)
        message = Message(content, channel)
        with using(self.bus):
            if consumer is not None:
                consumer(message)
                return
            match = self._routes().match(channel, content)
            if match is None:
                raise LookupError(
                    f"no route for {channel} with path {content.get('path')!r} in "
                    'CSP_BUS["ROUTING"]'
                )
            match.consumer(message, **match.kwargs)

    def _routes(self) -> Any:
        if self._router is None:
            from .conf import get_settings
            from .routing import project_router

            self._router = project_router(get_settings(), views=False)
        return self._router

    def receive(self, timeout: float = 1.0) -> dict[str, Any] | None:
        """The next message the consumer sent to this connection, or ``None``."""
        got = self.bus.receive(
            self.reply_channel[: self.reply_channel.index("!") + 1], timeout=timeout
        )
        return None if got is None else got[1]

    def receive_all(self) -> Iterator[dict[str, Any]]:
        """Every message waiting for this connection now."""
        prefix = self.reply_channel[: self.reply_channel.index("!") + 1]
        while (got := self.bus.receive_nowait(prefix)) is not None:
            yield got[1]


def _test_case_base() -> type:
    from django.test import TransactionTestCase

    return TransactionTestCase  # type: ignore[no-any-return]


class BusTestCase(_test_case_base()):  # type: ignore[misc]
    """A Django test case with a bus: ``self.http`` is an :class:`HttpClient` (cookies
    kept across the test), ``self.socket(path)`` opens a :class:`ConsumerClient` that
    carries the same cookies, so a socket sees whoever logged in through ``self.http``::

        class ChatTests(BusTestCase):
            def test_user(self):
                User.objects.create_user("ann", password="pw-ann-12345")
                self.login("ann", "pw-ann-12345")     # through the real login view
                ws = self.socket("/ws/chat/lobby/")
                ws.send("websocket.connect", chat_connect)
                assert ws.receive() == {"accept": True}

    It is a ``TransactionTestCase``: consumers run in other threads than the test and
    see committed rows only.
    """

    def setUp(self) -> None:
        super().setUp()
        self.http = HttpClient()
        self.http.__enter__()
        self.addCleanup(self.http.__exit__, None, None, None)

    def socket(self, path: str = "/", **kwargs: Any) -> ConsumerClient:
        """A fake WebSocket connection to ``path`` with this test's cookies."""
        kwargs.setdefault("cookies", self.http.cookies)
        client = ConsumerClient(path=path, **kwargs)
        client.__enter__()
        self.addCleanup(client.__exit__, None, None, None)
        return client

    def login(self, username: str, password: str, *, url: str | None = None) -> BusResponse:
        """Log in through the project's login page (``settings.LOGIN_URL``, or ``url``):
        GET it for the CSRF cookie, POST the form; the session cookie is kept."""
        from django.conf import settings
        from django.shortcuts import resolve_url

        path = url or str(resolve_url(settings.LOGIN_URL))
        self.http.get(path)
        token = self.http.cookies["csrftoken"].value
        response = self.http.post(
            path, {"csrfmiddlewaretoken": token, "username": username, "password": password}
        )
        if settings.SESSION_COOKIE_NAME not in self.http.cookies:
            raise AssertionError(f"login as {username!r} at {path} failed: {response.status}")
        return response
