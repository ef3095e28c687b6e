"""Django sessions for consumers: per connection (``channel_session``) and per user
(``http_session``), plus ``enforce_ordering`` keeping its sequence in the channel session.

::

    from csp_bus.adapters.django.sessions import channel_session, enforce_ordering

    @enforce_ordering
    def ws_connect(message):
        message.channel_session["room"] = message["path"].strip("/")
        message.reply_channel.send({"accept": True})

    @enforce_ordering
    def ws_receive(message):
        room = message.channel_session["room"]

* ``channel_session``: a Django session (your ``SESSION_ENGINE``) keyed by the SHA-1 of the
  reply channel, so every message of one connection sees the same one, whichever worker
  process handles it. It is saved after the consumer returns when modified, and deleted
  after the ``websocket.disconnect`` consumer.
* ``http_session``: the browser's Django session, found from the session cookie (or a
  ``session_key`` query parameter) of a message with ``headers``: ``http.request`` and
  ``websocket.connect``. Without a cookie it is an empty, unsaved session.
* ``enforce_ordering``: applies ``channel_session`` and handles one connection's
  messages strictly in their ``order`` (0 for connect, 1, 2, ... for receives), raising
  :class:`~csp_bus.consumers.ConsumeLater` for a message that arrived too early.

The decorators are for plain (sync) consumers: Django sessions use the ORM or cache,
which are blocking APIs.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
from collections.abc import Callable
from http.cookies import CookieError
from importlib import import_module
from typing import Any, TypeVar
from urllib.parse import parse_qs

from django.conf import settings
from django.contrib.sessions.backends.base import CreateError, SessionBase, UpdateError
from django.http.cookie import parse_cookie

from csp_bus.consumers import ConsumeLater, Message
from csp_bus.errors import UsageError

__all__ = [
    "channel_and_http_session",
    "channel_session",
    "enforce_ordering",
    "http_session",
    "session_for_reply_channel",
]

logger = logging.getLogger("csp_bus.django")

F = TypeVar("F", bound=Callable[..., Any])

#: The channel-session key holding the next expected ``order`` (enforce_ordering).
ORDER_KEY = "__csp_bus_next_order"


class DjangoMessage(Message):
    """A :class:`~csp_bus.consumers.Message` that decorators can add attributes to
    (``channel_session``, ``http_session``, ``user``)."""

    # No __slots__ here: instances get a __dict__ for the added attributes.

    channel_session: SessionBase
    http_session: SessionBase
    user: Any
    # enforce_ordering's bookkeeping between its inner and outer wrapper
    _csp_bus_parked: int | None
    _csp_bus_advanced: bool


def extensible(message: Message) -> DjangoMessage:
    """``message`` as a :class:`DjangoMessage` (the same one when it already is)."""
    if isinstance(message, DjangoMessage):
        return message
    if not isinstance(message, Message):
        raise UsageError(
            f"a consumer decorator got {type(message).__name__}, not a csp_bus Message"
        )
    new = DjangoMessage.__new__(DjangoMessage)
    new.content = message.content
    new.channel = message.channel
    new.reply_channel = message.reply_channel
    return new


def _engine() -> Any:
    return import_module(settings.SESSION_ENGINE)


def session_for_reply_channel(reply_channel: str) -> SessionBase:
    """The channel session of a connection (not loaded until first read)."""
    key = hashlib.sha1(reply_channel.encode("utf-8")).hexdigest()
    session: SessionBase = _engine().SessionStore(session_key=key)
    return session


def _reject_async(consumer: Callable[..., Any], name: str) -> None:
    if inspect.iscoroutinefunction(consumer):
        raise TypeError(
            f"{name} wraps sync consumers only (Django sessions block); "
            f"{consumer.__qualname__} is async"
        )


def channel_session(consumer: F) -> F:
    """Give the consumer ``message.channel_session``, saved after it when modified."""
    _reject_async(consumer, "channel_session")

    @functools.wraps(consumer)
    def inner(message: Message, **kwargs: Any) -> Any:
        message = extensible(message)
        if getattr(message, "channel_session", None) is not None:
            return consumer(message, **kwargs)  # already applied (stacked decorators)
        if message.reply_channel is None:
            raise UsageError(
                f"channel_session needs a reply_channel; {message.channel.name} messages have none"
            )
        session = session_for_reply_channel(message.reply_channel.name)
        if not session.exists(session.session_key):
            try:
                # Create it under our key now, so the key survives save() (Django would
                # otherwise pick a random key for a session it does not know).
                session.save(must_create=True)
            except CreateError:
                # Another worker created it between exists() and save(): try later.
                raise ConsumeLater("channel session being created elsewhere") from None
        message.channel_session = session
        try:
            result = consumer(message, **kwargs)
        except ConsumeLater:
            raise  # the message comes back later: keep the session as it was
        except BaseException:
            _finish(message, session)
            raise
        _finish(message, session)
        return result

    return inner  # type: ignore[return-value]


def _finish(message: Message, session: SessionBase) -> None:
    if message.channel.name == "websocket.disconnect":
        session.delete()  # the connection is gone; so is its session
    elif session.modified and not session.is_empty():
        try:
            session.save()
        except UpdateError:
            # Deleted while this consumer ran: the connection's websocket.disconnect
            # consumer got there first. The connection is gone, so is what we would save.
            logger.debug("channel session of %s ended meanwhile", message.reply_channel)


def _session_key_from(content: dict[str, Any]) -> str | None:
    query = content.get("query_string") or b""
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    values = parse_qs(query).get("session_key")
    if values:
        return str(values[0])
    for name, value in content.get("headers") or ():
        if bytes(name).lower() == b"cookie":
            try:
                cookies = parse_cookie(bytes(value).decode("latin-1"))
            except CookieError:
                return None
            found = cookies.get(settings.SESSION_COOKIE_NAME)
            if found:
                return str(found)
    return None


def http_session(consumer: F) -> F:
    """Give the consumer ``message.http_session``: the browser's Django session.

    Only for messages with ``headers`` (``http.request``, ``websocket.connect``); for
    later WebSocket messages copy what you need into the channel session at connect
    (``channel_session_user_from_http`` does that for the user).
    """
    _reject_async(consumer, "http_session")

    @functools.wraps(consumer)
    def inner(message: Message, **kwargs: Any) -> Any:
        message = extensible(message)
        if getattr(message, "http_session", None) is not None:
            return consumer(message, **kwargs)
        if "headers" not in message.content and "query_string" not in message.content:
            raise UsageError(
                f"http_session needs a message with headers ({message.channel.name} has "
                "none): use it on websocket.connect / http.request, and keep what later "
                "messages need in the channel session"
            )
        key = _session_key_from(message.content)
        session: SessionBase = _engine().SessionStore(session_key=key)
        message.http_session = session
        try:
            return consumer(message, **kwargs)
        finally:
            # Save changes only to a session the browser has; never mint an orphan.
            if key and session.modified and not session.is_empty():
                session.save()

    return inner  # type: ignore[return-value]


def channel_and_http_session(consumer: F) -> F:
    """Both sessions; at connect, the HTTP session key is remembered in the channel one."""
    return channel_session(http_session(consumer))


def enforce_ordering(consumer: F) -> F:
    """Handle one connection's messages strictly in ``order``; implies ``channel_session``.

    The next expected ``order`` is kept in the channel session, so it holds across worker
    threads and processes sharing the session backend. A message that comes early is
    *parked* on a per-connection wait channel; when the message it waits for has been
    handled (and the session saved), the parked messages are sent back to their channels
    for another try. (Requeueing with ``ConsumeLater`` instead would give up after the
    worker's retry limit when a slow predecessor holds a long burst back.) A message
    already past is logged and skipped. The sequence advances when the consumer returns
    or raises (anything but ``ConsumeLater``).
    """
    _reject_async(consumer, "enforce_ordering")

    @functools.wraps(consumer)
    def ordered(message: Message, **kwargs: Any) -> Any:
        msg = extensible(message)
        order = msg.content.get("order")
        if not isinstance(order, int) or isinstance(order, bool):
            raise UsageError(
                f"enforce_ordering needs an integer 'order'; this {msg.channel.name} "
                f"message has {order!r}"
            )
        session = msg.channel_session
        expected = int(session.get(ORDER_KEY, 0))
        if order > expected:
            _park(msg)  # the session is not modified, so not saved
            msg._csp_bus_parked = order
            return None
        if order < expected:
            logger.warning(
                "enforce_ordering: skipping %s order %d on %s (next is %d)",
                msg.channel.name,
                order,
                msg.reply_channel,
                expected,
            )
            return None
        msg._csp_bus_advanced = True
        try:
            result = consumer(msg, **kwargs)
        except ConsumeLater:
            msg._csp_bus_advanced = False
            raise
        except Exception:
            session[ORDER_KEY] = order + 1
            raise
        session[ORDER_KEY] = order + 1
        return result

    with_session = channel_session(ordered)

    @functools.wraps(consumer)
    def outer(message: Message, **kwargs: Any) -> Any:
        msg = extensible(message)
        try:
            return with_session(msg, **kwargs)
        finally:
            # channel_session has saved the new order by now: release what waits.
            parked = getattr(msg, "_csp_bus_parked", None)
            if getattr(msg, "_csp_bus_advanced", False):
                _release(msg)
            elif parked is not None and msg.reply_channel is not None:
                # The awaited message may have been handled between our check and the
                # park, and released before we parked: then nobody else releases us.
                fresh = session_for_reply_channel(msg.reply_channel.name)
                if int(fresh.get(ORDER_KEY, 0)) >= parked:
                    _release(msg)

    return outer  # type: ignore[return-value]


def _wait_channel(message: Message) -> str:
    assert message.reply_channel is not None
    digest = hashlib.sha1(message.reply_channel.name.encode("utf-8")).hexdigest()
    return f"csp-bus.ordering.{digest}"


def _bus() -> Any:
    from csp_bus.consumers import current_context

    context = current_context()
    if context is None:
        raise UsageError("enforce_ordering runs inside a worker (no bus context here)")
    return context.sync


def _park(message: Message) -> None:
    from csp_bus.errors import ChannelFull

    try:
        _bus().send(
            _wait_channel(message), {"channel": message.channel.name, "content": message.content}
        )
    except ChannelFull:
        # Too many early messages for one connection: fall back to the worker's requeue.
        raise ConsumeLater("enforce_ordering wait channel is full") from None


def _release(message: Message) -> None:
    bus = _bus()
    wait = _wait_channel(message)
    while (found := bus.receive_nowait(wait)) is not None:
        parked = found[1]
        bus.send_wait(parked["channel"], parked["content"], timeout=10.0)
