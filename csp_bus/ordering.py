"""``enforce_ordering``: handle one connection's messages in their ``order`` sequence.

WebSocket messages carry ``order`` (``websocket.connect`` 0, then each
``websocket.receive`` 1, 2, ..., then ``websocket.disconnect``: DESIGN.md section 4).
Several worker threads, or worker processes, may pick up one connection's messages at
once; decorate *every* consumer of that connection's channels to have them run strictly
one after the other, in order::

    @enforce_ordering
    def ws_connect(message): ...

    @enforce_ordering
    def ws_receive(message): ...

    @enforce_ordering
    def ws_disconnect(message): ...

Per reply channel the next expected ``order`` lives in the layer's session store
(:func:`csp_bus.sessions.session_store_for`: this process for ``memory://``, the shared
backend otherwise). A message that comes too early is held back by raising
:class:`~csp_bus.consumers.ConsumeLater`: the worker requeues it with a growing backoff
(1 ms doubling to 100 ms), so a message waiting for a predecessor that another thread is
still handling does not spin. A message whose predecessor never comes is dropped after
the worker's retry limit, and logged. A message whose ``order`` is already past (a
duplicate) is logged and skipped. The sequence advances when the consumer returns or
raises (a failing message must not block the connection for ever), but not when the
consumer itself raises ``ConsumeLater``.

The decorator works on plain functions and on ``async def`` consumers.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from .consumers import ConsumeLater, Message, current_context
from .errors import UsageError
from .sessions import SessionStore, session_key, session_store_for

__all__ = ["enforce_ordering"]

logger = logging.getLogger("csp_bus.ordering")

F = TypeVar("F", bound=Callable[..., Any])

_NEXT = "next_order"
_FINAL_CHANNELS = frozenset({"websocket.disconnect"})


def _check(message: Message) -> tuple[str, int]:
    reply = message.reply_channel
    order = message.content.get("order")
    if reply is None or not isinstance(order, int) or isinstance(order, bool):
        raise UsageError(
            f"enforce_ordering needs 'reply_channel' and an integer 'order' in every "
            f"message; a {message.channel.name} message has reply_channel={reply!r}, "
            f"order={order!r}"
        )
    return "order." + session_key(reply.name), order


def _verdict(message: Message, order: int, state: dict[str, Any] | None) -> bool:
    """True: handle now. False: a stale duplicate, skip. Raises ConsumeLater: too early."""
    expected = 0 if state is None else int(state.get(_NEXT, 0))
    if order == expected:
        return True
    if order < expected:
        logger.warning(
            "enforce_ordering: skipping %s order %d on %s, already past it (next is %d)",
            message.channel.name,
            order,
            message.reply_channel,
            expected,
        )
        return False
    raise ConsumeLater(
        f"{message.channel.name} order {order} on {message.reply_channel} waits for order "
        f"{expected} (is the consumer of every channel of this connection decorated with "
        "enforce_ordering?)"
    )


def _store() -> tuple[Any, SessionStore]:
    context = current_context()
    if context is None:
        raise UsageError("enforce_ordering runs inside a worker (no bus context here)")
    store = context.sessions or session_store_for(context.layer)
    return context, store


def enforce_ordering(consumer: F) -> F:
    """Run ``consumer`` for one reply channel's messages strictly in ``order``."""
    if inspect.iscoroutinefunction(consumer):

        @functools.wraps(consumer)
        async def async_wrapper(message: Message, **kwargs: Any) -> Any:
            key, order = _check(message)
            _, store = _store()
            if not _verdict(message, order, await store.load(key)):
                return None
            try:
                result = await consumer(message, **kwargs)
            except ConsumeLater:
                raise
            except Exception:
                await _advance(store, key, message, order)
                raise
            await _advance(store, key, message, order)
            return result

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(consumer)
    def wrapper(message: Message, **kwargs: Any) -> Any:
        key, order = _check(message)
        context, store = _store()
        if not _verdict(message, order, context.call(store.load, key)):
            return None
        try:
            result = consumer(message, **kwargs)
        except ConsumeLater:
            raise
        except Exception:
            context.call(_advance, store, key, message, order)
            raise
        context.call(_advance, store, key, message, order)
        return result

    return wrapper  # type: ignore[return-value]


async def _advance(store: SessionStore, key: str, message: Message, order: int) -> None:
    if message.channel.name in _FINAL_CHANNELS:
        await store.delete(key)
    else:
        await store.save(key, {_NEXT: order + 1})
