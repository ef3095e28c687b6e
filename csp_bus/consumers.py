"""Consumers: the ``Message`` they get, ``Channel``/``Group`` helpers, class-based consumers.

A consumer is a plain function ``consumer(message, **kwargs)``. A worker runs sync ones in
a thread and ``async def`` ones on its Trio loop (DESIGN.md section 6)::

    from csp_bus.consumers import Group

    def chat_connect(message, room):
        Group(f"chat-{room}").add(message.reply_channel)
        message.reply_channel.send({"accept": True})

    def chat_receive(message, room):
        Group(f"chat-{room}").send({"text": message["text"]})

``Channel(name).send(...)`` and ``Group(name).add/discard/send`` work from any consumer
(they use the worker's own layer instance) and from plain Python code: inside
``with csp_bus.consumers.using(bus):`` they use that :class:`~csp_bus.sync.SyncLayer`;
otherwise each call opens ``csp_bus.sync.connect()`` on the default URL
(``$CSP_BUS_LAYER``, else ``memory://``).

Async consumers use the awaitable twins: ``await message.reply_channel.asend(...)``,
``await Group(name).aadd(channel)`` ... (a blocking call on the Trio thread would freeze
the loop, so the sync methods refuse to run there).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import trio

from .errors import BusError, UsageError
from .messages import Message as MessageDict

if TYPE_CHECKING:
    from .layers.base import ChannelLayer
    from .sessions import SessionStore
    from .sync import SyncLayer

__all__ = [
    "BaseConsumer",
    "BusContext",
    "Channel",
    "ConsumeLater",
    "Group",
    "JsonWebsocketConsumer",
    "Message",
    "WebsocketConsumer",
    "current_context",
    "using",
]

logger = logging.getLogger("csp_bus.consumers")

T = TypeVar("T")


class ConsumeLater(BusError):
    """Raise from a consumer to put its message back on its channel for a later try.

    The worker requeues it with a short backoff and gives up after its retry limit
    (``--message-retries``), logging the drop.
    """


# -- where consumers find the bus ----------------------------------------------------------


@dataclass(frozen=True)
class BusContext:
    """The layer a consumer runs against: set by the worker, or by :func:`using`.

    ``sync`` is the blocking facade (worker threads, scripts); ``layer`` the async layer
    (the Trio thread); ``sessions`` the per-connection session store; ``token`` the Trio
    run that owns the layer.
    """

    sync: SyncLayer
    sessions: SessionStore | None = None

    @property
    def layer(self) -> ChannelLayer:
        return self.sync.layer

    def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run an async function of the layer's Trio run from a thread; block for it."""
        return self.sync._call(function, *args)


_context: ContextVar[BusContext | None] = ContextVar("csp_bus_context", default=None)


def current_context() -> BusContext | None:
    """The :class:`BusContext` of the running consumer (or :func:`using` block), if any."""
    return _context.get()


@contextlib.contextmanager
def using(bus: SyncLayer | BusContext) -> Iterator[BusContext]:
    """``with using(bus):`` -- ``Channel``/``Group`` calls in this block go through ``bus``.

    ``bus`` is a :class:`~csp_bus.sync.SyncLayer` (from ``csp_bus.sync.connect()`` or
    ``bind()``) or a :class:`BusContext`. The worker does this for every consumer.
    """
    context = bus if isinstance(bus, BusContext) else BusContext(bus)
    reset = _context.set(context)
    try:
        yield context
    finally:
        _context.reset(reset)


def _on_trio_thread() -> bool:
    return trio.lowlevel.in_trio_run()


def _blocking(operation: Callable[[SyncLayer], T]) -> T:
    """Run ``operation`` on the current context's SyncLayer, or on a fresh ``connect()``."""
    if _on_trio_thread():
        raise UsageError(
            "Channel/Group blocking calls cannot run on a Trio thread: in an async "
            "consumer use the awaitable methods (asend, aadd, adiscard)"
        )
    context = _context.get()
    if context is not None:
        return operation(context.sync)
    from .sync import connect

    with connect() as bus:
        return operation(bus)


def _async_layer() -> ChannelLayer:
    context = _context.get()
    if context is None:
        raise UsageError(
            "no layer here: the awaitable Channel/Group methods work inside a worker "
            "(or a `with csp_bus.consumers.using(csp_bus.sync.bind(layer))` block)"
        )
    return context.layer


# -- Channel and Group -----------------------------------------------------------------------


class Channel:
    """A named channel you can send to: ``Channel("thumbnails").send({"id": 3})``.

    Compares equal to another ``Channel`` of the same name and to that name as ``str``.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        if isinstance(name, Channel):
            name = name.name
        if not isinstance(name, str):
            raise UsageError(f"a channel name is a str, not {type(name).__name__}")
        self.name = name

    def send(self, content: MessageDict, *, timeout: float | None = None) -> None:
        """Send ``content``. At capacity raise ``ChannelFull`` at once, or with
        ``timeout`` (seconds) first wait that long for room."""
        if timeout is None:
            _blocking(lambda bus: bus.send(self.name, content))
        else:
            _blocking(lambda bus: bus.send_wait(self.name, content, timeout))

    async def asend(
        self,
        content: MessageDict,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - ChannelFull on expiry, as send_wait
    ) -> None:
        """``send`` for async consumers (awaits the layer on the worker's loop)."""
        layer = _async_layer()
        if timeout is None:
            await layer.send(self.name, content)
        else:
            await layer.send_wait(self.name, content, timeout=timeout)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Channel({self.name!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Channel):
            return self.name == other.name
        if isinstance(other, str):
            return self.name == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.name)


def _channel_name(channel: Channel | str) -> str:
    return channel.name if isinstance(channel, Channel) else channel


class Group:
    """A named group: ``Group("chat").add(message.reply_channel)``, ``.send({...})``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        if not isinstance(name, str):
            raise UsageError(f"a group name is a str, not {type(name).__name__}")
        self.name = name

    def add(self, channel: Channel | str) -> None:
        """Add ``channel`` (or refresh its membership)."""
        name = _channel_name(channel)
        _blocking(lambda bus: bus.group_add(self.name, name))

    def discard(self, channel: Channel | str) -> None:
        """Remove ``channel``; not being a member is no error."""
        name = _channel_name(channel)
        _blocking(lambda bus: bus.group_discard(self.name, name))

    def send(self, content: MessageDict) -> None:
        """Send ``content`` to every member (full members are skipped)."""
        _blocking(lambda bus: bus.send_group(self.name, content))

    async def aadd(self, channel: Channel | str) -> None:
        await _async_layer().group_add(self.name, _channel_name(channel))

    async def adiscard(self, channel: Channel | str) -> None:
        await _async_layer().group_discard(self.name, _channel_name(channel))

    async def asend(self, content: MessageDict) -> None:
        await _async_layer().send_group(self.name, content)

    def __repr__(self) -> str:
        return f"Group({self.name!r})"


# -- Message -----------------------------------------------------------------------------------


class Message:
    """What a consumer receives.

    ``content`` is the message dict, ``channel`` the :class:`Channel` it arrived on,
    ``reply_channel`` a :class:`Channel` for ``content["reply_channel"]`` (or ``None``).
    ``message["path"]`` and ``message.get("path")`` read ``content``. Decorators add
    attributes: :func:`csp_bus.sessions.channel_session` adds ``channel_session``.
    """

    def __init__(self, content: MessageDict, channel: str | Channel) -> None:
        self.content = content
        self.channel = channel if isinstance(channel, Channel) else Channel(channel)
        reply = content.get("reply_channel")
        self.reply_channel = Channel(reply) if isinstance(reply, str) else None

    def __getitem__(self, key: str) -> Any:
        return self.content[key]

    def __contains__(self, key: object) -> bool:
        return key in self.content

    def get(self, key: str, default: Any = None) -> Any:
        return self.content.get(key, default)

    def keys(self) -> Any:
        return self.content.keys()

    def __repr__(self) -> str:
        return f"<Message on {self.channel.name!r}: {sorted(self.content)}>"


# -- class-based consumers -------------------------------------------------------------------


class BaseConsumer:
    """A class whose methods handle channels: ``method_mapping = {channel: method name}``.

    Route it with ``route_class(MyConsumer, path=r"^/x/$")``: one instance per message,
    then ``dispatch()`` calls the mapped method as ``method(message, **kwargs)``. The
    mapping is checked when the class is defined (an unknown method name is a
    ``TypeError`` there, not at the first message).
    """

    method_mapping: ClassVar[Mapping[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for channel, name in cls.method_mapping.items():
            if not callable(getattr(cls, name, None)):
                raise TypeError(
                    f"{cls.__qualname__}.method_mapping maps {channel!r} to {name!r}, "
                    "which is not a method of the class"
                )

    def __init__(self, message: Message, **kwargs: Any) -> None:
        self.message = message
        self.kwargs = kwargs

    @classmethod
    def channel_names(cls) -> set[str]:
        """The channels this class handles (what ``route_class`` listens to)."""
        return set(cls.method_mapping)

    @classmethod
    def as_consumer(cls) -> Callable[..., Any]:
        """A plain consumer function that instantiates the class and dispatches."""

        def consumer(message: Message, **kwargs: Any) -> Any:
            return cls(message, **kwargs).dispatch()

        consumer.__name__ = cls.__name__
        consumer.__qualname__ = cls.__qualname__
        consumer.__module__ = cls.__module__
        return consumer

    def dispatch(self) -> Any:
        """Call the method ``method_mapping`` names for this message's channel."""
        name = self.method_mapping.get(self.message.channel.name)
        if name is None:
            raise UsageError(
                f"{type(self).__qualname__} has no method for channel "
                f"{self.message.channel.name!r} (method_mapping: {dict(self.method_mapping)})"
            )
        return getattr(self, name)(self.message, **self.kwargs)


class WebsocketConsumer(BaseConsumer):
    """A generic WebSocket consumer (DESIGN.md section 4 message format).

    Override :meth:`connect`, :meth:`receive`, :meth:`disconnect`; answer with
    :meth:`send` and :meth:`close`. The connection joins every group of
    :meth:`connection_groups` (default: the ``groups`` class attribute) on connect and
    leaves them on disconnect. ``strict_ordering = True`` wraps the class with
    :func:`csp_bus.ordering.enforce_ordering`. Sync methods: they run in worker threads.
    """

    method_mapping: ClassVar[Mapping[str, str]] = {
        "websocket.connect": "raw_connect",
        "websocket.receive": "raw_receive",
        "websocket.disconnect": "raw_disconnect",
    }
    groups: ClassVar[Sequence[str]] = ()
    strict_ordering: ClassVar[bool] = False

    @classmethod
    def as_consumer(cls) -> Callable[..., Any]:
        consumer = super().as_consumer()
        if cls.strict_ordering:
            from .ordering import enforce_ordering

            consumer = enforce_ordering(consumer)
        return consumer

    def connection_groups(self, **kwargs: Any) -> Sequence[str]:
        """Groups this connection belongs to; receives the route's kwargs."""
        return self.groups

    @property
    def reply_channel(self) -> Channel:
        if self.message.reply_channel is None:
            raise UsageError(f"a {self.message.channel.name} message without reply_channel")
        return self.message.reply_channel

    def raw_connect(self, message: Message, **kwargs: Any) -> None:
        for group in self.connection_groups(**kwargs):
            Group(group).add(self.reply_channel)
        self.connect(message, **kwargs)

    def raw_receive(self, message: Message, **kwargs: Any) -> None:
        text = message.get("text")
        if text is not None:
            self.receive(text=text, **kwargs)
        else:
            self.receive(bytes=message.get("bytes"), **kwargs)

    def raw_disconnect(self, message: Message, **kwargs: Any) -> None:
        for group in self.connection_groups(**kwargs):
            Group(group).discard(self.reply_channel)
        self.disconnect(message, **kwargs)

    def connect(self, message: Message, **kwargs: Any) -> None:
        """Accept the connection (override to reject with ``self.close()``)."""
        self.reply_channel.send({"accept": True})

    def receive(self, text: str | None = None, bytes: bytes | None = None, **kwargs: Any) -> None:
        """Handle one frame: ``text`` or ``bytes``."""

    def disconnect(self, message: Message, **kwargs: Any) -> None:
        """The socket is gone (``message["code"]`` is the close code)."""

    def send(
        self,
        text: str | None = None,
        bytes: bytes | None = None,
        close: bool | int = False,
    ) -> None:
        """Send a frame to this client; ``close=True`` or a code closes after it."""
        self.reply_channel.send(_frame(text, bytes, close))

    def close(self, code: int | None = None) -> None:
        """Close the socket (before accepting: reject the handshake with HTTP 403)."""
        self.reply_channel.send({"close": True if code is None else code})

    @classmethod
    def group_send(
        cls,
        name: str,
        text: str | None = None,
        bytes: bytes | None = None,
        close: bool | int = False,
    ) -> None:
        """Send a frame to every socket in group ``name``."""
        Group(name).send(_frame(text, bytes, close))


def _frame(text: str | None, data: bytes | None, close: bool | int) -> MessageDict:
    if (text is None) == (data is None) and not close:
        raise UsageError("send exactly one of text= or bytes= (or close=)")
    content: MessageDict = {}
    if text is not None:
        content["text"] = text
    if data is not None:
        content["bytes"] = data
    if close:
        content["close"] = close
    return content


#: WebSocket close codes (RFC 6455 section 7.4.1) a JSON consumer answers bad frames with.
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007


class JsonWebsocketConsumer(WebsocketConsumer):
    """A WebSocket consumer speaking JSON text frames.

    Override :meth:`receive_json`; answer with :meth:`send_json`. A text frame that is not
    JSON closes the socket with code 1007 (invalid payload data, RFC 6455 7.4.1), a
    binary frame with 1003 (unsupported data); both are logged with the reply channel.
    """

    def raw_receive(self, message: Message, **kwargs: Any) -> None:
        text = message.get("text")
        if text is None:
            logger.info("closing %s: a JSON WebSocket got a binary frame", self.reply_channel.name)
            self.close(CLOSE_UNSUPPORTED_DATA)
            return
        try:
            content = json.loads(text)
        except ValueError as exc:
            logger.info("closing %s: frame is not JSON (%s)", self.reply_channel.name, exc)
            self.close(CLOSE_INVALID_PAYLOAD)
            return
        self.receive_json(content, **kwargs)

    def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Handle one decoded JSON value."""

    def send_json(self, content: Any, close: bool | int = False) -> None:
        """Encode ``content`` as a JSON text frame to this client."""
        self.send(text=json.dumps(content), close=close)

    @classmethod
    def group_send_json(cls, name: str, content: Any, close: bool | int = False) -> None:
        cls.group_send(name, text=json.dumps(content), close=close)
