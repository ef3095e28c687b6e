"""A small per-connection session store, independent of the channel layer's backend.

``enforce_ordering`` keeps, per reply channel, the ``order`` it expects next. That state
must be seen by every worker that may get the connection's next message, so it lives
beside the messages: in this process for ``memory://`` (one store per layer instance,
shared by every worker of that instance), in Redis for ``redis://``.

:func:`session_store_for` picks the store for a layer:

1. a layer that offers ``session_store()`` provides its own;
2. a :class:`~csp_bus.layers.memory.MemoryLayer` gets one :class:`MemorySessionStore`;
3. a :class:`~csp_bus.layers.redis.RedisLayer` gets a :class:`RedisSessionStore`: one
   Redis string per session, ``<prefix>:s:<key>``, with a ``PX`` expiry, on the shard the
   key hashes to (so ``flush()`` clears sessions too);
4. any other layer gets a :class:`ChannelSessionStore`, which keeps each session as the
   one message of a per-session channel: it works on any layer that passes the
   conformance suite, at the cost of two layer operations per read-and-write.

Values are JSON-compatible dicts (the message rules). Every session expires ``ttl``
seconds after its last write; nothing grows without bound.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import inspect
import math
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from .consumers import current_context
from .errors import UsageError
from .layers.base import ChannelLayer
from .messages import Message, decode, encode

__all__ = [
    "ChannelSession",
    "ChannelSessionStore",
    "MemorySessionStore",
    "RedisAccess",
    "RedisSessionStore",
    "SessionStore",
    "channel_session",
    "redis_access",
    "session_key",
    "session_store_for",
]

F = TypeVar("F", bound=Callable[..., Any])

#: default lifetime of a session without writes: the layer's group expiry (a day).
DEFAULT_TTL = 86400.0


def session_key(name: str) -> str:
    """A short, channel-name-safe key for a session named ``name`` (e.g. a reply channel)."""
    return hashlib.sha1(name.encode("utf-8")).hexdigest()


class SessionStore(abc.ABC):
    """Async key -> dict storage with expiry. All methods are Trio checkpoints."""

    @abc.abstractmethod
    async def load(self, key: str) -> Message | None:
        """The stored dict (a fresh copy), or ``None`` if absent or expired."""

    @abc.abstractmethod
    async def save(self, key: str, value: Message, *, ttl: float = DEFAULT_TTL) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (validated like a message)."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Forget ``key``; an absent key is no error."""


class MemorySessionStore(SessionStore):
    """Sessions in this process's memory, expired lazily and by a periodic sweep."""

    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or trio.current_time
        self._data: dict[str, tuple[float, bytes]] = {}
        self._next_sweep = -math.inf

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        for key in [k for k, (expires, _) in self._data.items() if expires <= now]:
            del self._data[key]
        self._next_sweep = now + 60.0

    async def load(self, key: str) -> Message | None:
        await trio.lowlevel.checkpoint()
        found = self._data.get(key)
        if found is None:
            return None
        if found[0] <= self._clock():
            del self._data[key]
            return None
        return decode(found[1])

    async def save(self, key: str, value: Message, *, ttl: float = DEFAULT_TTL) -> None:
        payload = encode(value)
        await trio.lowlevel.checkpoint()
        now = self._clock()
        self._sweep(now)
        self._data[key] = (now + ttl, payload)

    async def delete(self, key: str) -> None:
        await trio.lowlevel.checkpoint()
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)


class ChannelSessionStore(SessionStore):
    """Sessions kept on the layer itself: session ``k`` is the single message of channel
    ``<prefix>.<k>``. Works on any conforming layer (messages survive as long as the
    layer's ``expiry``, so ``ttl`` is capped by it). Reads take the message and put it
    back: two workers reading the same session at the same instant may see it absent;
    ``enforce_ordering`` tolerates that (it holds the message back and retries).
    """

    def __init__(self, layer: ChannelLayer, *, prefix: str = "csp-bus.session") -> None:
        self._layer = layer
        self._prefix = prefix

    def _channel(self, key: str) -> str:
        return f"{self._prefix}.{key}"

    async def load(self, key: str) -> Message | None:
        found = await self._layer.receive_nowait(self._channel(key))
        if found is None:
            return None
        value = found[1]
        await self._layer.send(self._channel(key), value)
        return value

    async def save(self, key: str, value: Message, *, ttl: float = DEFAULT_TTL) -> None:
        channel = self._channel(key)
        while await self._layer.receive_nowait(channel) is not None:
            pass
        await self._layer.send(channel, value)

    async def delete(self, key: str) -> None:
        channel = self._channel(key)
        while await self._layer.receive_nowait(channel) is not None:
            pass


class RedisAccess:
    """Raw commands on the server a key of a :class:`~csp_bus.layers.redis.RedisLayer`
    lives on, under the layer's key prefix.

    Weak spot, said plainly: the Redis layer has no public "run this command" API yet,
    so this reaches for its placement method (``_node``) and entry check (``_enter``).
    If the layer grows ``session_store()``/``delay_store()`` hooks or a public
    ``execute``, this class is the one place to change.
    """

    def __init__(self, layer: Any) -> None:
        self._layer = layer
        self.prefix: str = layer.prefix

    def key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    async def execute(self, key: str, *args: Any) -> Any:
        await self._layer._enter()
        return await self._layer._node(key).execute(*args)

    async def execute_many(self, key: str, commands: list[list[Any]]) -> list[Any]:
        await self._layer._enter()
        return list(await self._layer._node(key).execute_many(commands))


def redis_access(layer: ChannelLayer) -> RedisAccess | None:
    """A :class:`RedisAccess` when ``layer`` is the Redis layer, else ``None``."""
    try:
        from .layers.redis import RedisLayer
    except ImportError:  # hiredis not installed: there is no Redis layer to be
        return None
    return RedisAccess(layer) if isinstance(layer, RedisLayer) else None


class RedisSessionStore(SessionStore):
    """Sessions as Redis strings ``<prefix>:s:<key>`` (msgpack) with a ``PX`` expiry."""

    def __init__(self, access: RedisAccess) -> None:
        self._redis = access

    async def load(self, key: str) -> Message | None:
        name = self._redis.key("s", key)
        payload = await self._redis.execute(name, "GET", name)
        return None if payload is None else decode(payload)

    async def save(self, key: str, value: Message, *, ttl: float = DEFAULT_TTL) -> None:
        name = self._redis.key("s", key)
        payload = encode(value)
        await self._redis.execute(name, "SET", name, payload, "PX", max(1, int(ttl * 1000)))

    async def delete(self, key: str) -> None:
        name = self._redis.key("s", key)
        await self._redis.execute(name, "DEL", name)


_memory_stores: weakref.WeakKeyDictionary[ChannelLayer, SessionStore] = weakref.WeakKeyDictionary()


def session_store_for(layer: ChannelLayer) -> SessionStore:
    """The session store every worker on ``layer`` shares (see the module docstring)."""
    provider: Any = getattr(layer, "session_store", None)
    if callable(provider):
        provided = provider()
        if isinstance(provided, SessionStore):
            return provided
    from .layers.memory import MemoryLayer

    store = _memory_stores.get(layer)
    if store is None:
        access = redis_access(layer)
        if access is not None:
            store = RedisSessionStore(access)
        elif isinstance(layer, MemoryLayer):
            store = MemorySessionStore(clock=getattr(layer, "_clock", None))
        else:
            store = ChannelSessionStore(layer)
        _memory_stores[layer] = store
    return store


# -- channel_session: per-connection data for consumers ----------------------------------------


class ChannelSession(dict[str, Any]):
    """A dict that remembers whether it was changed (``channel_session`` saves it then).

    Values follow the message rules (JSON-compatible plus bytes). Mutating a nested
    value does not mark it changed: set ``session.modified = True`` yourself then.
    """

    modified: bool = False

    def __setitem__(self, key: str, value: Any) -> None:
        self.modified = True
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.modified = True
        super().__delitem__(key)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.modified = True
        super().update(*args, **kwargs)

    def pop(self, *args: Any) -> Any:
        self.modified = True
        return super().pop(*args)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self.modified = True
        return super().setdefault(key, default)

    def clear(self) -> None:
        self.modified = True
        super().clear()


_SESSION_ENDS = frozenset({"websocket.disconnect"})


def channel_session(consumer: F) -> F:
    """Give ``consumer`` ``message.channel_session``: a dict kept per reply channel.

    Every message of one connection sees the same session, whichever thread or worker
    process handles it (it lives in the layer's session store: this process for
    ``memory://``, Redis for ``redis://``). It is saved after the consumer returns, if
    changed, and deleted after the ``websocket.disconnect`` consumer. Works on sync and
    ``async def`` consumers. A message without ``reply_channel`` is a ``UsageError``.
    """

    def prepare(message: Any) -> tuple[Any, SessionStore, str]:
        if message.reply_channel is None:
            raise UsageError(
                f"channel_session needs a reply_channel; a {message.channel.name} message has none"
            )
        context = current_context()
        if context is None:
            raise UsageError("channel_session runs inside a worker (no bus context here)")
        store = context.sessions or session_store_for(context.layer)
        return context, store, "session." + session_key(message.reply_channel.name)

    def finish_plan(message: Any) -> str | None:
        if message.channel.name in _SESSION_ENDS:
            return "delete"
        return "save" if message.channel_session.modified else None

    if inspect.iscoroutinefunction(consumer):

        @functools.wraps(consumer)
        async def async_wrapper(message: Any, **kwargs: Any) -> Any:
            _, store, key = prepare(message)
            message.channel_session = ChannelSession(await store.load(key) or {})
            result = await consumer(message, **kwargs)
            plan = finish_plan(message)
            if plan == "delete":
                await store.delete(key)
            elif plan == "save":
                await store.save(key, dict(message.channel_session))
            return result

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(consumer)
    def wrapper(message: Any, **kwargs: Any) -> Any:
        context, store, key = prepare(message)
        message.channel_session = ChannelSession(context.call(store.load, key) or {})
        result = consumer(message, **kwargs)
        plan = finish_plan(message)
        if plan == "delete":
            context.call(store.delete, key)
        elif plan == "save":

            async def save() -> None:
                await store.save(key, dict(message.channel_session))

            context.call(save)
        return result

    return wrapper  # type: ignore[return-value]
