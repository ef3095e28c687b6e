"""ViewConsumer: an ``http.request`` message in, Django's full handler, response messages out.

The message format is DESIGN.md section 4 (ASGI 1.x ``http.request``). The consumer

1. reads the request body: a body wholly in the message (no ``body_channel``) as it is;
   else ``body``, then the chunks on ``body_channel`` into a spooled temporary file (in
   memory up to ``FILE_UPLOAD_MAX_MEMORY_SIZE``, on disk beyond), as Django's own ASGI
   handler does, so a slow client never holds a view and a large upload never sits in
   memory;
2. builds a real :class:`django.http.HttpRequest` (:class:`BusRequest`): method, path and
   root path (``SCRIPT_NAME``), query string, headers as ``META`` (``HTTP_*``,
   ``CONTENT_TYPE``, ``CONTENT_LENGTH``), cookies, client/server, scheme;
3. runs Django's handler exactly as the WSGI handler does: ``request_started``, the
   middleware chain, URL resolution, exception-to-response conversion, and
   ``response.close()`` which sends ``request_finished`` (Django closes stale database
   connections on both signals);
4. sends the response on ``reply_channel``: ``status``, ``headers`` (every cookie its own
   ``set-cookie``), ``content`` in chunks of at most ``RESPONSE_CHUNK_SIZE`` with
   ``more_content``. A streaming response goes out chunk by chunk as the view yields it; a
   ``FileResponse`` is read block by block; neither is ever held whole. Chunks use
   ``send_wait`` so a slow client slows the view down instead of filling memory; the
   last message is posted (``send_wait_posted``): the worker sends it while the view's
   thread finishes, and takes no new message on that thread until it is sent.
"""

from __future__ import annotations

import io
import logging
import tempfile
import threading
from collections.abc import Iterator, Mapping
from typing import IO, Any, Protocol

from django.conf import settings as django_settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers import base
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseBase,
    QueryDict,
)
from django.http.cookie import parse_cookie
from django.urls import set_script_prefix
from django.utils.functional import cached_property

from csp_bus.consumers import current_context

from .conf import BusSettings

__all__ = [
    "BusRequest",
    "StaticFilesConsumer",
    "SyncBus",
    "ViewConsumer",
    "encode_response",
    "read_body",
]

logger = logging.getLogger("csp_bus.django")


class SyncBus(Protocol):
    """The blocking layer operations the ViewConsumer uses (``csp_bus.sync.SyncLayer``)."""

    def send(self, channel: str, message: dict[str, Any]) -> None: ...

    def send_wait(
        self, channel: str, message: dict[str, Any], timeout: float | None = None
    ) -> None: ...

    def send_wait_posted(
        self, channel: str, message: dict[str, Any], timeout: float | None = None
    ) -> None: ...

    def receive(
        self, *channels: str, timeout: float | None = None
    ) -> tuple[str, dict[str, Any]] | None: ...


class RequestTimeout(Exception):
    """The next chunk of a streamed request body did not arrive in time."""


def read_body(
    content: Mapping[str, Any], bus: SyncBus, *, timeout: float, spool_size: int
) -> IO[bytes]:
    """The whole request body, from ``body`` and then ``body_channel``, rewound.

    A body wholly in the message (no ``body_channel``) is already in memory: it is
    read from there (``BytesIO``). A streamed one is spooled into a temporary file.
    Raises :class:`~django.core.exceptions.RequestAborted` when the server reports the
    client gone (``closed``) and :class:`RequestTimeout` when a chunk is late.
    """
    channel = content.get("body_channel")
    if not channel:
        return io.BytesIO(content.get("body") or b"")
    body: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
        max_size=spool_size, mode="w+b"
    )
    try:
        body.write(content.get("body") or b"")
        while channel:
            got = bus.receive(channel, timeout=timeout)
            if got is None:
                raise RequestTimeout(f"no body chunk on {channel} within {timeout} s")
            chunk = got[1]
            if chunk.get("closed"):
                raise RequestAborted()
            body.write(chunk.get("content") or b"")
            if not chunk.get("more_content"):
                break
        body.seek(0)
    except BaseException:
        body.close()
        raise
    return body


class BusRequest(HttpRequest):  # type: ignore[misc]  # Django ships no types
    """A Django request built from an ``http.request`` message and its body file."""

    def __init__(self, message: Mapping[str, Any], body: Any, body_size: int) -> None:
        # Like WSGIRequest, this does not call HttpRequest.__init__: every attribute it
        # would set is set here (or is a lazy property below).
        self.message = message
        self.resolver_match = None
        self._read_started = False
        self._stream = body

        root_path = message.get("root_path") or ""
        path = message.get("path") or "/"
        # ASGI 1.x: ``path`` is the full path, ``root_path`` is where the app is mounted
        # (WSGI's SCRIPT_NAME); PATH_INFO is what follows it.
        if root_path and (path == root_path or path.startswith(root_path.rstrip("/") + "/")):
            path_info = path[len(root_path.rstrip("/")) :]
        else:
            path_info = path
        self.path_info = path_info or "/"
        self.path = "{}/{}".format(root_path.rstrip("/"), self.path_info.replace("/", "", 1))
        self.method = str(message.get("method", "GET")).upper()

        query = message.get("query_string") or b""
        if isinstance(query, bytes):
            query = query.decode("latin-1")
        meta: dict[str, Any] = {
            "REQUEST_METHOD": self.method,
            "QUERY_STRING": query,
            "SCRIPT_NAME": root_path.rstrip("/"),
            "PATH_INFO": self.path_info,
            "SERVER_PROTOCOL": "HTTP/" + str(message.get("http_version") or "1.1"),
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
        }
        client = message.get("client")
        if client:
            meta["REMOTE_ADDR"] = str(client[0])
            meta["REMOTE_HOST"] = meta["REMOTE_ADDR"]
            meta["REMOTE_PORT"] = client[1]
        server = message.get("server")
        if server:
            meta["SERVER_NAME"] = str(server[0])
            meta["SERVER_PORT"] = str(server[1])
        else:
            meta["SERVER_NAME"] = "unknown"
            meta["SERVER_PORT"] = "0"
        for raw_name, raw_value in message.get("headers") or ():
            name = (
                raw_name.decode("latin-1") if isinstance(raw_name, bytes) else str(raw_name)
            ).lower()
            value = raw_value.decode("latin-1") if isinstance(raw_value, bytes) else str(raw_value)
            # A header spelled with '_' would collide with its '-' twin in META (and so
            # spoof e.g. X-Forwarded-For); runserver and nginx drop them, so do we.
            if "_" in name:
                continue
            if name == "content-length":
                key = "CONTENT_LENGTH"
            elif name == "content-type":
                key = "CONTENT_TYPE"
            else:
                key = "HTTP_" + name.upper().replace("-", "_")
            if key in meta:
                # RFC 9110 5.3: repeated fields join with ','; cookies with '; ' (RFC 6265 5.4).
                value = meta[key] + ("; " if key == "HTTP_COOKIE" else ",") + value
            meta[key] = value
        if body_size and "CONTENT_LENGTH" not in meta:
            # A chunked body: Django's multipart parser needs the length, and it is known
            # now that the body is spooled.
            meta["CONTENT_LENGTH"] = str(body_size)
        self.META = meta
        self._set_content_type_params(meta)

    def _get_scheme(self) -> str:
        return str(self.message.get("scheme") or "http")

    @cached_property  # type: ignore[untyped-decorator]
    def GET(self) -> QueryDict:
        return QueryDict(self.META["QUERY_STRING"], encoding=self._encoding)

    @cached_property  # type: ignore[untyped-decorator]
    def COOKIES(self) -> dict[str, str]:
        return dict(parse_cookie(self.META.get("HTTP_COOKIE", "")))

    def _get_post(self) -> QueryDict:
        if not hasattr(self, "_post"):
            self._load_post_and_files()
        return self._post  # type: ignore[no-any-return]

    def _set_post(self, post: QueryDict) -> None:
        self._post = post

    def _get_files(self) -> Any:
        if not hasattr(self, "_files"):
            self._load_post_and_files()
        return self._files

    POST = property(_get_post, _set_post)  # type: ignore[assignment]
    FILES = property(_get_files)  # type: ignore[assignment]

    def close(self) -> None:
        super().close()
        self._stream.close()


def _header_bytes(value: str) -> bytes:
    # Django already refuses header values that are not latin-1 (or MIME-encodes them).
    return value.encode("latin-1")


def response_headers(response: HttpResponseBase) -> list[list[bytes]]:
    """Response headers as ``[name, value]`` byte pairs, one ``set-cookie`` per cookie."""
    headers = [[_header_bytes(k.lower()), _header_bytes(v)] for k, v in response.items()]
    for cookie in response.cookies.values():
        headers.append([b"set-cookie", _header_bytes(cookie.output(header="").strip())])
    return headers


def _split(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def encode_response(
    response: HttpResponseBase, *, chunk_size: int, head: bool = False
) -> Iterator[dict[str, Any]]:
    """The reply messages for ``response``, produced lazily (one chunk in memory at a time).

    The first message carries ``status`` and ``headers``; every message but the last has
    ``more_content: True``. Chunks of a streaming response are yielded as soon as the view
    yields them (server-sent events rely on it), so its last message is an empty one.
    """
    first: dict[str, Any] = {
        "status": response.status_code,
        "headers": response_headers(response),
    }
    if head:
        # No body on a HEAD response (RFC 9110 9.3.2); the headers describe the GET one.
        first["content"] = b""
        first["more_content"] = False
        yield first
        return
    file = getattr(response, "file_to_stream", None)
    if file is not None:
        # FileResponse: read the file directly in big blocks rather than through
        # streaming_content's 4 KiB ones; one block of look-ahead marks the last message.
        block = file.read(chunk_size)
        first["content"] = block
        while True:
            following = file.read(chunk_size) if block else b""
            first["more_content"] = bool(following)
            yield first
            if not following:
                return
            first = {"content": following}
            block = following
    if not response.streaming:
        body = response.content  # type: ignore[attr-defined]
        if len(body) <= chunk_size:  # the usual case: one message
            first["content"] = body
            first["more_content"] = False
            yield first
            return
        pieces = list(_split(body, chunk_size))
        for index, piece in enumerate(pieces):
            message = first if index == 0 else {}
            message["content"] = piece
            message["more_content"] = index < len(pieces) - 1
            yield message
        return
    first["content"] = b""
    first["more_content"] = True
    yield first
    for chunk in response.streaming_content:  # type: ignore[attr-defined]
        if isinstance(chunk, str):
            chunk = chunk.encode(response.charset)
        for piece in _split(bytes(chunk), chunk_size):
            yield {"content": piece, "more_content": True}
    yield {"content": b"", "more_content": False}


def _send_one(bus: SyncBus, reply: str, message: dict[str, Any], timeout: float) -> None:
    """Send one response message, waiting for room on the reply channel.

    The last message is posted (``send_wait_posted``): in a worker the view's thread
    goes on to ``response.close()`` and returns while the worker sends it, which saves
    the view's thread a wait for the worker's loop. The worker takes no new message
    on that thread until the send is done, so a full reply channel still holds it
    back; every earlier message waits for its own send, so at most one is queued.
    """
    if message.get("more_content"):
        bus.send_wait(reply, message, timeout=timeout)
    else:
        bus.send_wait_posted(reply, message, timeout=timeout)


class ViewConsumer(base.BaseHandler):  # type: ignore[misc]  # Django ships no types
    """The default consumer for ``http.request``: serves the Django project's views.

    Build one per worker process (loading the middleware is the costly part) and route
    ``http.request`` to it; the instance is thread-safe as Django's WSGI handler is.
    Called as a consumer it uses the worker's layer (``csp_bus.consumers.current_context``);
    :meth:`handle` takes the content and a blocking layer explicitly.
    """

    def __init__(self, settings: BusSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or BusSettings()
        self._lock = threading.Lock()
        self._streaming: dict[str, threading.Event] = {}
        self.load_middleware()

    def __call__(self, message: Any, **kwargs: Any) -> None:
        self.handle(message.content, _bus_of(message))

    def handle(self, content: Mapping[str, Any], bus: SyncBus) -> None:
        """Serve one ``http.request`` message, sending the response on its reply channel."""
        reply = content["reply_channel"]
        timeout = self.settings.body_timeout
        try:
            body = read_body(
                content,
                bus,
                timeout=timeout,
                spool_size=django_settings.FILE_UPLOAD_MAX_MEMORY_SIZE,
            )
        except RequestAborted:
            return  # the client went away while sending its body: nobody to answer
        except RequestTimeout as exc:
            logger.warning("%s", exc)
            self._send(bus, reply, HttpResponse(status=408), head=False)
            return
        size = body.seek(0, 2)
        body.seek(0)

        set_script_prefix((content.get("root_path") or "").rstrip("/") + "/")
        signals.request_started.send(sender=self.__class__, message=content)
        try:
            request: BusRequest | None = BusRequest(content, body, size)
        except UnicodeDecodeError:
            logger.warning("bad request (UnicodeDecodeError) on %s", content.get("path"))
            request = None
            response: HttpResponseBase = HttpResponseBadRequest()
            body.close()
        else:
            response = self.get_response(request)
        response._handler_class = self.__class__  # type: ignore[attr-defined]
        try:
            self._send(bus, reply, response, head=request is not None and request.method == "HEAD")
        finally:
            # As a WSGI server does after iterating: closes files and the request, and
            # sends request_finished (which closes database connections past their age).
            response.close()

    def _send(self, bus: SyncBus, reply: str, response: HttpResponseBase, *, head: bool) -> None:
        timeout = self.settings.body_timeout
        chunk_size = self.settings.response_chunk_size
        if not response.streaming:
            for message in encode_response(response, chunk_size=chunk_size, head=head):
                _send_one(bus, reply, message, timeout)
            return
        # A streaming response may never end (server-sent events): stop it when the
        # server reports the client gone (http.disconnect, see on_disconnect).
        gone = threading.Event()
        with self._lock:
            self._streaming[reply] = gone
        try:
            for message in encode_response(response, chunk_size=chunk_size, head=head):
                if gone.is_set():
                    logger.debug("client of %s left: streaming response stopped", reply)
                    return
                _send_one(bus, reply, message, timeout)
        finally:
            with self._lock:
                self._streaming.pop(reply, None)

    def on_disconnect(self, message: Any, **kwargs: Any) -> None:
        """Consumer for ``http.disconnect``: stops this process's streaming response to
        that client (the generator is closed at its next chunk)."""
        reply = message.content.get("reply_channel")
        with self._lock:
            gone = self._streaming.get(reply)
        if gone is not None:
            gone.set()


class StaticFilesConsumer(ViewConsumer):
    """A ViewConsumer that also serves ``STATIC_URL`` from the staticfiles finders.

    What ``runserver`` routes ``http.request`` to in ``DEBUG`` (or with ``--insecure``),
    like Django's own ``StaticFilesHandler``: static requests skip the middleware, and the
    file goes out block by block as any ``FileResponse``.
    """

    def __init__(self, settings: BusSettings | None = None) -> None:
        from urllib.parse import urlparse

        from django.contrib.staticfiles import utils

        super().__init__(settings)
        utils.check_settings()
        self.static_base = urlparse(django_settings.STATIC_URL)

    def _is_static(self, path: str) -> bool:
        return path.startswith(self.static_base.path) and not self.static_base.netloc

    def get_response(self, request: HttpRequest) -> HttpResponseBase:
        if not self._is_static(request.path):
            return super().get_response(request)
        from urllib.request import url2pathname

        from django.contrib.staticfiles.views import serve
        from django.core.handlers.exception import response_for_exception
        from django.http import Http404

        try:
            relative = url2pathname(request.path.removeprefix(self.static_base.path))
            response: HttpResponseBase = serve(request, relative, insecure=True)
        except Http404 as exc:
            response = response_for_exception(request, exc)
        response._resource_closers.append(request.close)  # type: ignore[attr-defined]
        return response


def _bus_of(message: Any) -> SyncBus:
    context = current_context()
    if context is None:
        raise RuntimeError(
            "ViewConsumer runs inside a worker (no bus context here); outside one call "
            "ViewConsumer.handle(content, bus) with a csp_bus.sync.SyncLayer"
        )
    return context.sync
