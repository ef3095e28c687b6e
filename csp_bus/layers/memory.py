"""The in-process layer: the embedded default (``memory://``).

Design, for speed without breaking the contract:

* Messages are stored msgpack-encoded, so a receiver always decodes a fresh copy and the
  size limit is enforced exactly as on Redis.
* ``_queues`` holds only non-empty queues, in least-recently-served order; a queue served
  while still non-empty moves to the back. ``receive`` takes from the listed queue that
  was served least recently, which makes it fair across channels: a busy channel never
  starves a quiet one.
* A waiting ``receive`` registers one waiter on each of its queue keys. ``send`` to a key
  with waiters hands the payload straight to the oldest waiter (the queue is then empty
  by construction), so nothing is queued twice and a cancelled waiter has taken nothing:
  the abort callback unregisters it before any sender can see it.
* Process-local names ``a!x`` queue, count and cap on their prefix ``a!``.
* Expired messages are dropped when met, and a sweep (at most every ``expiry / 4``
  seconds, run by ``send``) purges queues and group memberships nobody reads.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Self
from urllib.parse import parse_qsl, urlsplit

import outcome
import trio

from ..errors import ChannelFull, InvalidLayerURL, LayerClosed
from ..messages import (
    Message,
    decode_trusted,
    encode,
    new_channel_name,
    queue_key,
    validate_group_name,
    validate_receive_name,
    validate_send_name,
)
from .base import ChannelLayer, Listener
from .options import LayerOptions

__all__ = ["MemoryLayer"]

# A Trio checkpoint (a trip through the scheduler) costs more than a whole send here;
# operations that need not wait are checkpoints once in _YIELD_EVERY calls (see the
# contract in base.py), like Go's buffered channel operations, which do not yield.
_YIELD_EVERY = 32

# (expires_at, target, payload). The target is a full channel name, or -- for one
# send_group reaching several channels of one process -- a list of them (in reverse
# order, popped from the end), queued and capped as ONE message on the prefix, as
# channels_redis does: a room of 500 on one server is one message, not 500.
_Item = tuple[float, "str | list[str]", bytes]


class _Queue(deque[_Item]):
    __slots__ = ("capacity", "served")

    capacity: int
    served: int


class _Waiter:
    __slots__ = ("keys", "keyset", "task")

    def __init__(
        self, task: trio.lowlevel.Task, keys: tuple[str, ...], keyset: frozenset[str]
    ) -> None:
        self.task = task
        self.keys = keys
        self.keyset = keyset


# A receive on more keys than this waits as one "broad" waiter (O(1) to register) that
# senders test by set membership, instead of registering on every key (O(keys)).
_NARROW = 16

_Selector = tuple[tuple[str, ...], tuple[str, ...], frozenset[str]]


class MemoryLayer(ChannelLayer):
    """Channels in this process's memory. Fast, and gone when the process ends.

    Every task of one Trio run may share it; threads reach it through
    :func:`csp_bus.sync.connect`. Pass ``clock=trio.current_time`` to drive expiry with
    Trio's mock clock in tests.
    """

    schemes: ClassVar[tuple[str, ...]] = ("memory",)

    def __init__(
        self,
        options: LayerOptions | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options or LayerOptions()
        self._clock = clock
        self._queues: dict[str, _Queue] = {}
        self._waiters: dict[str, dict[_Waiter, None]] = {}
        self._broad: dict[_Waiter, None] = {}
        self._room: dict[str, trio.Event] = {}
        self._groups: dict[str, dict[str, float]] = {}
        self._memberships: dict[str, set[str]] = {}
        self._selectors: dict[tuple[str, ...], _Selector] = {}
        self._last_selector: _Selector = ((), (), frozenset())
        self._capacities: dict[str, int] = {}
        self._expiry = self.options.expiry
        self._max_size = self.options.max_message_size
        self._closed = False
        self._ops = 0
        self._served = 0
        self._next_sweep = clock() + self._sweep_interval()
        self._sent = 0
        self._received = 0
        self._expired = 0
        self._dropped = 0
        self._full = 0

    @classmethod
    def from_url(cls, url: str) -> Self:
        parts = urlsplit(url)
        if parts.scheme.lower() not in cls.schemes:
            raise InvalidLayerURL(f"{url!r} is not a memory:// URL")
        if parts.netloc or parts.path.strip("/"):
            raise InvalidLayerURL(
                f"a memory:// URL names no host or path (got {url!r}); "
                "use memory://?capacity=100&expiry=60"
            )
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        options, _ = LayerOptions.from_query(query, layer="memory://")
        return cls(options)

    def _sweep_interval(self) -> float:
        return min(self.options.expiry, self.options.group_expiry) / 4

    # -- checkpoints -------------------------------------------------------------------

    async def _checkpoint(self) -> None:
        self._ops += 1
        if not self._ops % _YIELD_EVERY:
            await trio.lowlevel.checkpoint()
        if self._closed:
            raise LayerClosed("the memory layer is closed")

    # -- sending -----------------------------------------------------------------------

    def _capacity(self, key: str) -> int:
        capacity = self._capacities.get(key)
        if capacity is None:
            if len(self._capacities) >= 4096:
                self._capacities.clear()
            capacity = self._capacities[key] = self.options.capacity_for(key)
        return capacity

    def _waiter_for(self, key: str) -> _Waiter | None:
        """The receiver waiting longest on ``key`` (narrow ones first), if any."""
        waiters = self._waiters.get(key)
        if waiters:
            return next(iter(waiters))
        if self._broad:
            return next((w for w in self._broad if key in w.keyset), None)
        return None

    def _handoff(self, waiter: _Waiter, channel: str, payload: bytes) -> None:
        self._unregister(waiter)
        self._received += 1
        trio.lowlevel.reschedule(waiter.task, outcome.Value((channel, payload)))

    def _enqueue(self, key: str, target: str | list[str], payload: bytes, now: float) -> bool:
        """Queue one item on ``key``; False when the queue is at capacity."""
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue()
            queue.capacity = self._capacity(key)
            queue.served = self._served
        elif len(queue) >= queue.capacity:
            self._purge_expired(key, queue, now)
            if len(queue) >= queue.capacity:
                return False
            if key not in self._queues:  # purging emptied and removed it
                self._queues[key] = queue
        queue.append((now + self._expiry, target, payload))
        return True

    def _deliver(self, key: str, channel: str, payload: bytes, now: float) -> bool:
        """Hand ``payload`` to a waiting receiver or enqueue it; False when full.

        A waiter exists only while all its queues are empty, so handing over directly
        keeps FIFO order."""
        waiter = self._waiter_for(key)
        if waiter is not None:
            self._handoff(waiter, channel, payload)
            return True
        return self._enqueue(key, channel, payload, now)

    def _deliver_many(self, key: str, channels: list[str], payload: bytes, now: float) -> int:
        """Deliver one payload to several channels sharing a queue key (members of one
        process); return how many got it. Waiting receivers take theirs directly; the
        rest share ONE queued item, capped as one message."""
        handed = 0
        while handed < len(channels) and (waiter := self._waiter_for(key)) is not None:
            self._handoff(waiter, channels[handed], payload)
            handed += 1
        rest = channels[handed:]
        if not rest:
            return handed
        target: str | list[str] = rest[0] if len(rest) == 1 else rest[::-1]
        return handed + (len(rest) if self._enqueue(key, target, payload, now) else 0)

    async def send(self, channel: str, message: Message) -> None:
        key = validate_send_name(channel)
        payload = encode(message, self._max_size)
        # _checkpoint(), inlined: this is the hot path.
        self._ops += 1
        if not self._ops % _YIELD_EVERY:
            await trio.lowlevel.checkpoint()
        if self._closed:
            raise LayerClosed("the memory layer is closed")
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        if not self._deliver(key, channel, payload, now):
            self._full += 1
            raise ChannelFull(channel, self._capacity(key))
        self._sent += 1

    async def _wait_for_room(self, channel: str, deadline: float, attempt: int) -> None:
        key = queue_key(channel)
        event = self._room.get(key)
        if event is None:
            event = self._room[key] = trio.Event()
        wake_at = deadline
        queue = self._queues.get(key)
        if queue:
            # A receive sets the event; expiry frees a slot too, silently, when the
            # oldest message's time is up: wake then at the latest.
            expires_in = max(0.0, queue[0][0] - self._clock())
            wake_at = min(deadline, trio.current_time() + expires_in)
        with trio.move_on_at(wake_at):
            await event.wait()

    # -- receiving ---------------------------------------------------------------------

    def _selector(self, channels: tuple[str, ...]) -> tuple[tuple[str, ...], frozenset[str]]:
        # The same channels as last time (a listen() loop, a worker) is the common case;
        # comparing tuples skips hashing a long one.
        if not channels:
            raise ValueError("receive() needs at least one channel")
        last = self._last_selector
        if last[0] is channels or last[0] == channels:
            return last[1], last[2]
        found = self._selectors.get(channels)
        if found is None:
            keys = tuple(dict.fromkeys(validate_receive_name(name) for name in channels))
            if len(self._selectors) >= 1024:
                self._selectors.clear()
            found = self._selectors[channels] = (channels, keys, frozenset(keys))
        self._last_selector = found
        return found[1], found[2]

    def _pick(self, keys: tuple[str, ...], keyset: frozenset[str]) -> str | None:
        """The ready key among ``keys`` that was served least recently, or None."""
        queues = self._queues
        if len(keys) == 1:
            return keys[0] if keys[0] in queues else None
        if len(keys) <= len(queues):
            best: str | None = None
            best_served = 0
            for key in keys:
                queue = queues.get(key)
                if queue is not None and (best is None or queue.served < best_served):
                    best, best_served = key, queue.served
            return best
        # Fewer ready queues than listed keys: walk the ready ones, oldest-served first.
        for key in queues:
            if key in keyset:
                return key
        return None

    def _take(self, keys: tuple[str, ...], keyset: frozenset[str]) -> tuple[str, bytes] | None:
        if len(keys) == 1 and keys[0] not in self._queues:
            return None  # the common miss, answered without reading the clock
        now = self._clock()
        while (key := self._pick(keys, keyset)) is not None:
            queue = self._queues[key]
            while queue:
                expires, target, payload = queue.popleft()
                if expires > now:
                    break
                self._on_expired(target)
            else:
                del self._queues[key]
                continue
            if type(target) is list:
                channel = target.pop()
                if target:  # more channels of this process await the same message
                    queue.appendleft((expires, target, payload))
            else:
                channel = target  # type: ignore[assignment]
            self._served += 1
            queue.served = self._served
            del self._queues[key]
            if queue:
                self._queues[key] = queue  # to the back: fairness
            self._received += 1
            if self._room:
                event = self._room.pop(key, None)
                if event is not None:
                    event.set()
            return channel, payload
        return None

    def _unregister(self, waiter: _Waiter) -> None:
        if len(waiter.keys) > _NARROW:
            del self._broad[waiter]
            return
        for key in waiter.keys:
            waiting = self._waiters[key]
            del waiting[waiter]
            if not waiting:
                del self._waiters[key]

    async def receive(self, *channels: str) -> tuple[str, Message]:
        keys, keyset = self._selector(channels)
        # _checkpoint(), inlined: this is the hot path.
        self._ops += 1
        if not self._ops % _YIELD_EVERY:
            await trio.lowlevel.checkpoint()
        if self._closed:
            raise LayerClosed("the memory layer is closed")
        found = self._take(keys, keyset)
        if found is None:
            found = await self._wait(keys, keyset)
        return found[0], decode_trusted(found[1])

    async def receive_many(self, *channels: str, limit: int = 64) -> list[tuple[str, Message]]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        keys, keyset = self._selector(channels)
        await self._checkpoint()
        found = self._take(keys, keyset)
        if found is None:
            found = await self._wait(keys, keyset)
        batch = [(found[0], decode_trusted(found[1]))]
        while len(batch) < limit and (found := self._take(keys, keyset)) is not None:
            batch.append((found[0], decode_trusted(found[1])))
        return batch

    async def _wait(self, keys: tuple[str, ...], keyset: frozenset[str]) -> tuple[str, bytes]:
        """Sleep until a sender hands this task a message (see ``_deliver``)."""
        waiter = _Waiter(trio.lowlevel.current_task(), keys, keyset)
        if len(keys) > _NARROW:
            self._broad[waiter] = None
        else:
            for key in keys:
                self._waiters.setdefault(key, {})[waiter] = None

        def abort(_: Any) -> trio.lowlevel.Abort:
            # Cancelled before any sender chose this waiter: unregister, so no sender
            # can hand it a message any more. Nothing was taken, nothing is lost.
            self._unregister(waiter)
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)  # type: ignore[no-any-return]

    def listen(self, *channels: str) -> _MemoryListener:
        """As :meth:`ChannelLayer.listen`; the channels are checked once, not per message,
        so listening on 1,000 channels costs what listening on one does."""
        keys, keyset = self._selector(channels)
        return _MemoryListener(self, keys, keyset)

    async def receive_nowait(self, *channels: str) -> tuple[str, Message] | None:
        keys, keyset = self._selector(channels)
        await self._checkpoint()
        found = self._take(keys, keyset)
        return None if found is None else (found[0], decode_trusted(found[1]))

    async def new_channel(self, pattern: str) -> str:
        await self._checkpoint()
        return new_channel_name(pattern)

    # -- expiry ------------------------------------------------------------------------

    def _on_expired(self, target: str | list[str]) -> None:
        if isinstance(target, list):
            for name in target:
                self._on_expired(name)
            return
        channel = target
        self._expired += 1
        # A process-local channel whose message expired unread has a dead reader: it
        # leaves every group, so it stops costing every send_group (DESIGN.md 3).
        if "!" in channel:
            for group in self._memberships.pop(channel, ()):
                members = self._groups.get(group)
                if members is not None:
                    members.pop(channel, None)
                    if not members:
                        del self._groups[group]

    def _purge_expired(self, key: str, queue: _Queue, now: float) -> None:
        while queue and queue[0][0] <= now:
            self._on_expired(queue.popleft()[1])
        if not queue:
            self._queues.pop(key, None)

    def _sweep(self, now: float) -> None:
        for key, queue in list(self._queues.items()):
            self._purge_expired(key, queue, now)
        for group, members in list(self._groups.items()):
            for channel in [c for c, expires in members.items() if expires <= now]:
                self._leave(group, channel)
        self._next_sweep = now + self._sweep_interval()

    # -- groups ------------------------------------------------------------------------

    def _leave(self, group: str, channel: str) -> None:
        members = self._groups.get(group)
        if members is not None and members.pop(channel, None) is not None and not members:
            del self._groups[group]
        groups = self._memberships.get(channel)
        if groups is not None:
            groups.discard(group)
            if not groups:
                del self._memberships[channel]

    async def group_add(self, group: str, channel: str) -> None:
        validate_group_name(group)
        validate_send_name(channel)
        await self._checkpoint()
        self._groups.setdefault(group, {})[channel] = self._clock() + self.options.group_expiry
        self._memberships.setdefault(channel, set()).add(group)

    async def group_discard(self, group: str, channel: str) -> None:
        validate_group_name(group)
        validate_send_name(channel)
        await self._checkpoint()
        self._leave(group, channel)

    async def send_group(self, group: str, message: Message) -> None:
        validate_group_name(group)
        payload = encode(message, self._max_size)
        await self._checkpoint()
        members = self._groups.get(group)
        if not members:
            return
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        by_key: dict[str, list[str]] = {}
        for channel, expires in list(members.items()):
            if expires <= now:
                self._leave(group, channel)
            else:
                by_key.setdefault(queue_key(channel), []).append(channel)
        for key, channels in by_key.items():
            queue = self._queues.get(key)
            if queue and queue[0][0] <= now:
                # An expired message at the head may mean a dead reader: purging it
                # removes process-local members from their groups before we deliver.
                self._purge_expired(key, queue, now)
                channels = [channel for channel in channels if channel in members]
            delivered = self._deliver_many(key, channels, payload, now)
            self._sent += delivered
            self._dropped += len(channels) - delivered

    # -- housekeeping ------------------------------------------------------------------

    async def flush(self) -> None:
        await self._checkpoint()
        self._queues.clear()
        self._groups.clear()
        self._memberships.clear()
        for event in self._room.values():
            event.set()
        self._room.clear()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        waiters = {waiter for waiting in self._waiters.values() for waiter in waiting}
        waiters.update(self._broad)
        self._waiters.clear()
        self._broad.clear()
        for waiter in waiters:
            error = LayerClosed("the memory layer was closed while receiving")
            trio.lowlevel.reschedule(waiter.task, outcome.Error(error))
        for event in self._room.values():
            event.set()
        self._room.clear()
        self._queues.clear()
        self._groups.clear()
        self._memberships.clear()

    async def stats(self, channel: str | None = None) -> dict[str, Any]:
        await self._checkpoint()
        now = self._clock()
        if channel is not None:
            if "!" in channel and channel.endswith("!"):
                key = validate_receive_name(channel)
            else:
                key = validate_send_name(channel)
            return self._queue_stats(key, now)
        channels = {key: self._queue_stats(key, now) for key in self._queues}
        return {
            "messages_count": self._sent,
            "messages_received": self._received,
            "messages_expired": self._expired,
            "messages_dropped": self._dropped,
            "channel_full_count": self._full,
            "messages_pending": sum(c["messages_pending"] for c in channels.values()),
            "messages_max_age": max((c["messages_max_age"] for c in channels.values()), default=0),
            "channels": channels,
            "groups": {
                group: live
                for group, members in self._groups.items()
                if (live := sum(1 for expires in members.values() if expires > now))
            },
        }

    def _queue_stats(self, key: str, now: float) -> dict[str, Any]:
        queue = self._queues.get(key)
        age = 0.0
        if queue:
            age = max(0.0, now - (queue[0][0] - self.options.expiry))
        return {
            "messages_pending": len(queue) if queue else 0,
            "messages_max_age": age,
            "capacity": self._capacity(key),
        }


class _MemoryListener(Listener):
    __slots__ = ("_keys", "_keyset", "_memory")

    def __init__(self, layer: MemoryLayer, keys: tuple[str, ...], keyset: frozenset[str]) -> None:
        super().__init__(layer, keys)
        self._memory = layer
        self._keys = keys
        self._keyset = keyset

    async def __anext__(self) -> tuple[str, Message]:
        layer = self._memory
        await layer._checkpoint()
        found = layer._take(self._keys, self._keyset)
        if found is None:
            found = await layer._wait(self._keys, self._keyset)
        return found[0], decode_trusted(found[1])
