"""The logged-in Django user in consumers: ``message.user``, ``AnonymousUser`` if none.

::

    from csp_bus.adapters.django.auth import (
        channel_session_user, channel_session_user_from_http,
    )

    @channel_session_user_from_http          # on websocket.connect
    def ws_connect(message):
        message.reply_channel.send({"accept": True})

    @channel_session_user                    # on websocket.receive / disconnect
    def ws_receive(message):
        Group("chat").send({"text": f"{message.user.username}: {message['text']}"})

* ``http_session_user``: the user of the browser's session (``http_session``) -- on
  ``http.request`` and ``websocket.connect`` messages.
* ``channel_session_user``: the user stored in the connection's channel session.
* ``channel_session_user_from_http``: at connect, copies the browser's login into the
  channel session, so that ``channel_session_user`` finds it on every later message.

A missing, expired or invalid login gives ``django.contrib.auth.models.AnonymousUser``,
never an exception (``django.contrib.auth.get_user`` rules: the session's auth hash is
checked, so a password change logs sockets out too).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from django.contrib import auth
from django.contrib.sessions.backends.base import SessionBase

from csp_bus.consumers import Message

from .sessions import _reject_async, channel_session, extensible, http_session

__all__ = [
    "channel_session_user",
    "channel_session_user_from_http",
    "get_user",
    "http_session_user",
    "transfer_user",
]

F = TypeVar("F", bound=Callable[..., Any])

_AUTH_KEYS = (auth.SESSION_KEY, auth.BACKEND_SESSION_KEY, auth.HASH_SESSION_KEY)


class _SessionHolder:
    """What ``django.contrib.auth.get_user`` reads: an object with ``.session``."""

    def __init__(self, session: SessionBase) -> None:
        self.session = session


def get_user(session: SessionBase | None) -> Any:
    """The user logged in to ``session``, or ``AnonymousUser``."""
    from django.contrib.auth.models import AnonymousUser

    if session is None:
        return AnonymousUser()
    try:
        return auth.get_user(_SessionHolder(session))  # type: ignore[arg-type]
    except Exception:
        # A broken session backend or a stale user row: the socket is anonymous, not dead.
        return AnonymousUser()


def transfer_user(from_session: SessionBase, to_session: SessionBase) -> None:
    """Copy the login (user id, backend, auth hash) from one session to another."""
    for key in _AUTH_KEYS:
        if key in from_session:
            to_session[key] = from_session[key]
        elif key in to_session:
            del to_session[key]


def http_session_user(consumer: F) -> F:
    """``http_session`` plus ``message.user`` from it."""
    _reject_async(consumer, "http_session_user")

    @functools.wraps(consumer)
    def inner(message: Message, **kwargs: Any) -> Any:
        msg = extensible(message)
        if getattr(msg, "user", None) is None:
            msg.user = get_user(msg.http_session)
        return consumer(msg, **kwargs)

    return http_session(inner)  # type: ignore[return-value]


def channel_session_user(consumer: F) -> F:
    """``channel_session`` plus ``message.user`` from it."""
    _reject_async(consumer, "channel_session_user")

    @functools.wraps(consumer)
    def inner(message: Message, **kwargs: Any) -> Any:
        msg = extensible(message)
        if getattr(msg, "user", None) is None:
            msg.user = get_user(msg.channel_session)
        return consumer(msg, **kwargs)

    return channel_session(inner)  # type: ignore[return-value]


def channel_session_user_from_http(consumer: F) -> F:
    """At connect: copy the browser's login into the channel session; set ``message.user``."""
    _reject_async(consumer, "channel_session_user_from_http")

    @functools.wraps(consumer)
    def inner(message: Message, **kwargs: Any) -> Any:
        msg = extensible(message)
        transfer_user(msg.http_session, msg.channel_session)
        if msg.channel_session.modified:
            # Save now, not after the consumer: once it accepts, the client may send at
            # once, and another worker thread must find the user for that message.
            msg.channel_session.save()
        msg.user = get_user(msg.channel_session)
        return consumer(msg, **kwargs)

    return channel_session(http_session(inner))  # type: ignore[return-value]
