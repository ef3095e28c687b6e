"""Delayed messages: ``asgi.delay`` and the delay service (DESIGN.md section 4).

Send ``{"channel": "reminders", "content": {...}, "delay": 1500}`` (``delay`` in
milliseconds) to ``asgi.delay``, or call :func:`send_later` / :func:`asend_later` (delay in
seconds, like everything else in Python and Trio). A delay service -- ``csp-bus delay``,
or :class:`DelayService` in your own Trio program -- takes those messages off
``asgi.delay``, keeps them until due, then sends each ``content`` to its ``channel``.

Where due messages wait (:func:`delay_store_for`):

* ``memory://``: in the service's memory (a heap), so they are gone when it stops.
* ``redis://``: in a Redis sorted set scored by due time (wall clock), so they survive
  a restart of the service, and several services may share the work (each due message
  is taken by exactly one of them, ``ZREM`` decides).

Bounded: at most ``max_pending`` messages wait in a memory store; when it is full the
service stops taking from ``asgi.delay`` (whose capacity then pushes back on senders).
A due message whose channel is full is retried every second, ``delivery_attempts``
times, then logged and dropped (the predecessor dropped it at once, channels#598).
Invalid ``asgi.delay`` messages are logged and dropped.
"""

from __future__ import annotations

import abc
import argparse
import heapq
import itertools
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from .consumers import Channel, current_context
from .errors import ChannelFull, InvalidMessage, LayerClosed, LayerError, UsageError
from .layers.base import ChannelLayer
from .messages import Message, decode, encode, validate_send_name
from .sessions import RedisAccess, redis_access

__all__ = [
    "DELAY_CHANNEL",
    "DelayService",
    "DelayStore",
    "MemoryDelayStore",
    "RedisDelayStore",
    "asend_later",
    "delay_message",
    "delay_store_for",
    "register",
    "send_later",
]

logger = logging.getLogger("csp_bus.delay")

DELAY_CHANNEL = "asgi.delay"
DEFAULT_MAX_PENDING = 10_000
DEFAULT_ATTEMPTS = 10
_RETRY_AFTER = 1.0


def delay_message(channel: str, content: Message, delay: float) -> Message:
    """The ``asgi.delay`` message that sends ``content`` to ``channel`` after ``delay``
    seconds (stored as whole milliseconds, rounded up so it never arrives early)."""
    validate_send_name(channel)
    if not isinstance(content, dict):
        raise InvalidMessage("content", f"must be a dict, not {type(content).__name__}")
    if not isinstance(delay, int | float) or isinstance(delay, bool) or not delay >= 0:
        raise UsageError(f"delay must be a non-negative number of seconds, not {delay!r}")
    if math.isinf(delay):
        raise UsageError("delay must be finite")
    return {"channel": channel, "content": content, "delay": math.ceil(delay * 1000)}


def send_later(channel: str, content: Message, delay: float) -> None:
    """Blocking: have the delay service send ``content`` to ``channel`` in ``delay`` s.

    Works in consumers (the worker's layer) and scripts (``csp_bus.sync.connect()``
    on the default URL, or a ``using(...)`` block), like :class:`~csp_bus.consumers.Channel`.
    """
    Channel(DELAY_CHANNEL).send(delay_message(channel, content, delay))


async def asend_later(
    channel: str, content: Message, delay: float, *, layer: ChannelLayer | None = None
) -> None:
    """Async :func:`send_later`: on ``layer``, or the current worker's layer."""
    message = delay_message(channel, content, delay)
    if layer is None:
        context = current_context()
        if context is None:
            raise UsageError("asend_later needs layer= outside a worker")
        layer = context.layer
    await layer.send(DELAY_CHANNEL, message)


def parse_delay_message(message: Message) -> tuple[str, Message, float]:
    """``(channel, content, delay seconds)``; ``InvalidMessage`` says what is wrong."""
    channel = message.get("channel")
    content = message.get("content")
    delay = message.get("delay")
    if not isinstance(channel, str):
        raise InvalidMessage("channel", f"must be a channel name, not {channel!r}")
    validate_send_name(channel)
    if not isinstance(content, dict):
        raise InvalidMessage("content", f"must be a dict, not {type(content).__name__}")
    if not isinstance(delay, int | float) or isinstance(delay, bool) or not 0 <= delay < math.inf:
        raise InvalidMessage("delay", f"must be a non-negative number of ms, not {delay!r}")
    return channel, content, delay / 1000


# -- stores --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Due:
    """A message taken from a store because it is due."""

    channel: str
    content: Message
    attempts: int = 0


class DelayStore(abc.ABC):
    """Where delayed messages wait. Times are in the store's own clock (:meth:`now`)."""

    #: True when the service should also wake up periodically: another process may add
    #: earlier messages (a shared store).
    shared: bool = False

    @abc.abstractmethod
    def now(self) -> float:
        """The store's clock, in seconds."""

    @abc.abstractmethod
    async def add(self, due: float, channel: str, content: Message, attempts: int = 0) -> None:
        """Keep ``content`` for ``channel`` until ``due``."""

    @abc.abstractmethod
    async def next_due(self) -> float | None:
        """The earliest due time, or ``None`` when empty."""

    @abc.abstractmethod
    async def pop_due(self, now: float, limit: int = 100) -> list[Due]:
        """Remove and return up to ``limit`` messages due at ``now``, earliest first."""

    @abc.abstractmethod
    async def pending(self) -> int:
        """How many messages wait."""

    def full(self) -> bool:
        """True while the store takes no more (the service stops receiving)."""
        return False


class MemoryDelayStore(DelayStore):
    """A heap in this process; its clock is Trio's (mock-clock friendly)."""

    def __init__(self, *, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.max_pending = max_pending
        self._heap: list[tuple[float, int, str, bytes, int]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return trio.current_time()

    async def add(self, due: float, channel: str, content: Message, attempts: int = 0) -> None:
        await trio.lowlevel.checkpoint()
        heapq.heappush(self._heap, (due, next(self._seq), channel, encode(content), attempts))

    async def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    async def pop_due(self, now: float, limit: int = 100) -> list[Due]:
        found: list[Due] = []
        while self._heap and self._heap[0][0] <= now and len(found) < limit:
            _, _, channel, payload, attempts = heapq.heappop(self._heap)
            found.append(Due(channel, decode(payload), attempts))
        return found

    async def pending(self) -> int:
        return len(self._heap)

    def full(self) -> bool:
        return len(self._heap) >= self.max_pending


class RedisDelayStore(DelayStore):
    """A Redis sorted set ``<prefix>:delay:due`` scored by due time (wall-clock ms).

    Members are 8 random bytes + msgpack ``{c: channel, m: content, a: attempts}`` (random bytes
    keep equal messages distinct). Taking: ``ZRANGEBYSCORE`` then one ``ZREM`` per
    member, pipelined; only the service whose ``ZREM`` answers 1 sends the message, so
    several services on one Redis never send a message twice.
    """

    shared = True

    def __init__(self, access: RedisAccess) -> None:
        self._redis = access
        self._key = access.key("delay", "due")

    def now(self) -> float:
        return time.time()

    async def add(self, due: float, channel: str, content: Message, attempts: int = 0) -> None:
        member = os.urandom(8) + encode({"c": channel, "m": content, "a": attempts})
        await self._redis.execute(self._key, "ZADD", self._key, int(due * 1000), member)

    async def next_due(self) -> float | None:
        found = await self._redis.execute(self._key, "ZRANGE", self._key, 0, 0, "WITHSCORES")
        return float(found[1]) / 1000 if found else None

    async def pop_due(self, now: float, limit: int = 100) -> list[Due]:
        key = self._key
        members = await self._redis.execute(
            key, "ZRANGEBYSCORE", key, "-inf", int(now * 1000), "LIMIT", 0, limit
        )
        if not members:
            return []
        removed = await self._redis.execute_many(key, [["ZREM", key, m] for m in members])
        found: list[Due] = []
        for member, mine in zip(members, removed, strict=True):
            if mine:
                record = decode(member[8:])
                found.append(Due(record["c"], record["m"], record["a"]))
        return found

    async def pending(self) -> int:
        return int(await self._redis.execute(self._key, "ZCARD", self._key))


def delay_store_for(layer: ChannelLayer) -> DelayStore:
    """The store a delay service on ``layer`` uses: the layer's own ``delay_store()``
    if it offers one, a :class:`RedisDelayStore` on the Redis layer, else a
    :class:`MemoryDelayStore`."""
    provider: Any = getattr(layer, "delay_store", None)
    if callable(provider):
        store = provider()
        if isinstance(store, DelayStore):
            return store
    access = redis_access(layer)
    if access is not None:
        return RedisDelayStore(access)
    return MemoryDelayStore()


# -- the service ---------------------------------------------------------------------------------


@dataclass
class DelayStats:
    received: int = 0
    invalid: int = 0
    sent: int = 0
    retried: int = 0
    dropped: int = 0


class DelayService:
    """Drains ``asgi.delay`` into a :class:`DelayStore` and sends messages when due.

    ``service = await nursery.start(DelayService(layer).run)``; ``service.stop()`` (or
    cancellation) ends it. Due messages in a shared store stay there for the next run.
    """

    def __init__(
        self,
        layer: ChannelLayer,
        *,
        store: DelayStore | None = None,
        channel: str = DELAY_CHANNEL,
        delivery_attempts: int = DEFAULT_ATTEMPTS,
        poll_interval: float = 1.0,
    ) -> None:
        self.layer = layer
        self.store = store if store is not None else delay_store_for(layer)
        self.channel = channel
        self.delivery_attempts = delivery_attempts
        self.poll_interval = poll_interval
        self.stats = DelayStats()
        self._wakeup = trio.Event()
        self._room = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._stopped = False

    def stop(self) -> None:
        """End :meth:`run` (call on the Trio thread)."""
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

    async def run(
        self, *, task_status: trio.TaskStatus[DelayService] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.CancelScope() as self._scope:
            if self._stopped:
                self._scope.cancel()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._resilient, self._intake)
                nursery.start_soon(self._resilient, self._dispatch)
                logger.info(
                    "delay service: draining %r, %d message(s) waiting",
                    self.channel,
                    await self.store.pending(),
                )
                task_status.started(self)
        self._scope = None

    async def _resilient(self, loop: Callable[[], Awaitable[None]]) -> None:
        """Run ``loop``; when the backend fails (Redis restarting...), wait and rerun it,
        logging once per outage. Only a closed layer ends the service."""
        failures = 0
        while True:
            try:
                await loop()
            except LayerClosed:
                logger.info("delay service: the layer was closed")
                return
            except LayerError as exc:
                if not failures:
                    logger.warning("delay service: the layer failed (%s); retrying", exc)
                await trio.sleep(min(2.0, 0.05 * 2**failures))
                failures = min(failures + 1, 16)

    def _wake(self) -> None:
        self._wakeup.set()

    async def _intake(self) -> None:
        while True:
            while self.store.full():
                self._room = trio.Event()
                await self._room.wait()
            _, message = await self.layer.receive(self.channel)
            self.stats.received += 1
            try:
                channel, content, delay = parse_delay_message(message)
            except UsageError as exc:
                self.stats.invalid += 1
                logger.warning("dropping an invalid %s message: %s", self.channel, exc)
                continue
            await self.store.add(self.store.now() + delay, channel, content)
            self._wake()

    async def _dispatch(self) -> None:
        while True:
            self._wakeup = trio.Event()  # before reading: an add from now on wakes us
            due = await self.store.next_due()
            if due is None or due > self.store.now():
                wait = math.inf if due is None else due - self.store.now()
                if self.store.shared:
                    wait = min(wait, self.poll_interval)
                with trio.move_on_after(wait):
                    await self._wakeup.wait()
                continue
            for item in await self.store.pop_due(self.store.now()):
                await self._deliver(item)
            self._room.set()

    async def _deliver(self, item: Due) -> None:
        try:
            await self.layer.send(item.channel, item.content)
        except ChannelFull:
            if item.attempts + 1 >= self.delivery_attempts:
                self.stats.dropped += 1
                logger.warning(
                    "dropping a delayed message for %r: the channel stayed full for %d tries",
                    item.channel,
                    item.attempts + 1,
                )
                return
            self.stats.retried += 1
            await self.store.add(
                self.store.now() + _RETRY_AFTER, item.channel, item.content, item.attempts + 1
            )
        except UsageError as exc:
            self.stats.dropped += 1
            logger.warning("dropping a delayed message for %r: %s", item.channel, exc)
        except LayerError:
            # The backend failed mid-send: put it back (if the store is down too, the
            # error ends this round and the message is lost: at-most-once, logged).
            self.stats.retried += 1
            await self.store.add(
                self.store.now() + _RETRY_AFTER, item.channel, item.content, item.attempts + 1
            )
            raise
        else:
            self.stats.sent += 1


# -- the command line ----------------------------------------------------------------------------


def _cmd_delay(args: argparse.Namespace) -> int:
    from .layers import open_layer
    from .worker import configure_logging, run_until_signal

    configure_logging(args.debug)
    if args.layer.split("://", 1)[0].lower() == "memory":
        logger.warning(
            "--layer %s lives inside this process: nothing else can send to its asgi.delay; "
            "use redis:// (due messages then also survive a restart)",
            args.layer,
        )

    async def main() -> None:
        async with open_layer(args.layer) as layer:
            service = DelayService(layer, delivery_attempts=args.delivery_attempts)
            await run_until_signal(service.run, service.stop, name="delay")

    trio.run(main)
    return 0


def register(subparsers: Any) -> None:
    """Add ``csp-bus delay`` to the CLI."""
    from .cli import add_common_options

    parser = subparsers.add_parser(
        "delay",
        help="run the delay service (asgi.delay)",
        description=f"Take messages {{channel, content, delay (ms)}} off {DELAY_CHANNEL} and "
        "send each content to its channel when due. On redis:// due messages wait in Redis "
        "and survive a restart. SIGTERM/SIGINT: exit 0.",
    )
    parser.add_argument(
        "--delivery-attempts",
        type=int,
        default=DEFAULT_ATTEMPTS,
        metavar="N",
        help=f"tries (1 s apart) when the target channel is full (default {DEFAULT_ATTEMPTS})",
    )
    add_common_options(parser)
    parser.set_defaults(func=_cmd_delay)
