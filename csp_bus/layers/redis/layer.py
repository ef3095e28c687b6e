"""The Redis channel layer (``redis://``): many processes, many machines, one bus.

Keys, scripts and the envelope format are specified in ``docs/redis-protocol.md``; in
short, with ``P`` the ``prefix`` URL parameter:

* ``P:q:<queue key>`` -- a LIST per queue: a normal or ``?`` channel's name, or a
  process-local prefix ``a.b!``. Senders LPUSH, receivers pop on the right (FIFO).
* ``P:g:<group>`` -- a ZSET of member channel -> membership expiry (Unix ms).

Receiving. Normal channels listed in one ``receive`` are waited on together in one
``BLMPOP`` on a dedicated connection, keys rotated on every call (fairness); concurrent
receives on the same channels of a server share it (one loop pops ``COUNT <waiting
receives>`` and hands the messages out, oldest receive first); a lone receive whose last
pop found a message tries ``LMPOP`` on the shared connection first. Process-local
prefixes are read by **one reader per server** in this process, whatever the number of
prefixes: it pops only for prefixes some ``receive`` waits on -- what is ready on all of
them with one ``pop_all`` script call, else one ``BLMPOP`` over all of them -- and hands
the messages to the local waiters. A receive that waits on several servers, or on local
and normal channels together, races one waiter per source; whatever the losers took
goes back where it came from. A receive cancelled while its ``BLMPOP`` is blocked
unblocks it (``CLIENT UNBLOCK``) and pushes back anything the server popped meanwhile,
so no message is lost and nothing piles up in memory: a prefix's local buffer holds at
most ``capacity`` envelopes and goes back to Redis when nobody asked for it for a second.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any, ClassVar, Self

import hiredis
import outcome
import trio

from ...errors import ChannelFull, InvalidMessage, LayerClosed, LayerError, UsageError
from ...messages import (
    Message,
    decode,
    encode,
    new_channel_name,
    queue_key,
    validate_group_name,
    validate_receive_name,
    validate_send_name,
)
from ..base import ChannelLayer
from .client import (
    Connection,
    RedisNode,
    RedisReplyError,
    SentinelResolver,
    StaticResolver,
    _reply_error,
    bulk,
)
from .config import URL_PARAMETERS, RedisConfig, parse_url, rendezvous
from .scripts import (
    FANOUT,
    GROUP_ADD,
    GROUP_DISCARD,
    GROUP_MEMBERS,
    LEAVE_ALL,
    POP_ALL,
    SEND,
    SEND_GROUP,
    capacity_args,
)

__all__ = ["RedisLayer"]

log = logging.getLogger(__name__)

#: seconds a normal receive's BLMPOP blocks before it is re-issued
RECEIVE_BLOCK = 5.0
#: seconds a process-local loop's BLMPOP blocks before it re-checks that someone waits
LOOP_BLOCK = 1.0
#: seconds a loop keeps unclaimed messages before pushing them back to Redis
LINGER = 1.0
#: largest batch a process-local loop pops at once
BATCH = 1024
_PACKED_BATCH = bulk(b"%d" % BATCH)

# A message taken for one receiver: (deadline ms, full channel name, msgpack payload).
_Item = tuple[int, str, bytes]
# One envelope in a local buffer: [deadline ms, its channels *reversed* (a send_group
# envelope names every member on the prefix; pop() takes the next), payload]. A buffer
# counts envelopes, as the Redis list does: one send_group is one queued item.
_Entry = list[Any]
# What send() needs for a channel: (queue key, packed EVALSHA head up to the Redis key,
# channel name, envelope length less the payload, capacity, packed capacity argument).
_Target = tuple[str, bytes, bytes, int, int, bytes]
# (process-local prefixes, normal channel names)
_Selector = tuple[tuple[str, ...], tuple[str, ...]]
# Value types that make a message "flat": a shallow copy of it is a fresh message.
_FLAT_TYPES = frozenset({str, bytes, bool, float, int, type(None)})


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Waiter(outcome.Outcome[_Item]):
    """A receive waiting on process-local prefixes, and the outcome its task is resumed
    with (``item``): a fan-out to 1,000 members allocates no ``outcome.Value`` each."""

    __slots__ = ("item", "queues", "task")
    item: _Item
    # a key of _LocalQueue.waiters: hashed by identity (attrs made Outcome unhashable)
    __hash__ = object.__hash__  # type: ignore[assignment]
    __eq__ = object.__eq__

    def __init__(self, task: trio.lowlevel.Task, queues: tuple[_LocalQueue, ...]) -> None:
        self.task = task
        self.queues = queues

    def unwrap(self) -> _Item:
        return self.item

    def send(self, gen: Any) -> Any:
        return gen.send(self.item)

    async def asend(self, agen: Any) -> Any:
        return await agen.asend(self.item)


class _LocalQueue:
    """A process-local prefix this process reads: its buffer and waiting receives."""

    __slots__ = (
        "buffer",
        "capacity",
        "key",
        "packed_key",
        "reader",
        "redis_key",
        "served",
        "touched",
        "waiters",
    )

    def __init__(self, key: str, redis_key: str, capacity: int, reader: _Reader) -> None:
        self.key = key
        self.redis_key = redis_key
        #: the key as a RESP bulk string, for the pop_all command
        self.packed_key = bulk(redis_key.encode())
        self.capacity = capacity
        self.reader = reader
        self.buffer: deque[_Entry] = deque()
        # OrderedDict: popping the oldest is O(1); a plain dict's next(iter()) walks
        # over the slots of every waiter removed before it (quadratic for big fan-outs).
        self.waiters: OrderedDict[_Waiter, None] = OrderedDict()
        self.served = 0
        self.touched = trio.current_time()  # last take from, or fill of, the buffer


class _Reader:
    """The one loop per server that reads every process-local prefix of this process
    living there (DESIGN.md 5: one blocking loop, whatever the number of prefixes)."""

    __slots__ = ("blocked_on", "demand", "node", "queues", "running", "scope")

    def __init__(self, node: RedisNode) -> None:
        self.node = node
        self.queues: dict[str, _LocalQueue] = {}
        self.demand = trio.Event()
        self.running = False
        #: the BLMPOP in flight: its cancel scope and the prefixes it waits on
        self.scope: trio.CancelScope | None = None
        self.blocked_on: frozenset[str] = frozenset()


class _Pool:
    """The receives blocked on the same normal channels of one server: one loop pops
    for all of them, ``BLMPOP ... COUNT <waiters>``, and hands the messages out oldest
    waiter first (N idle receivers cost one round trip and one wake-up per batch, not
    one each, and one dedicated connection instead of N)."""

    __slots__ = ("keys", "node", "running", "scope", "settled", "waiters")

    def __init__(self, node: RedisNode, keys: tuple[str, ...]) -> None:
        self.node = node
        self.keys = keys  # full Redis keys
        self.waiters: OrderedDict[_Waiter, None] = OrderedDict()
        self.running = False
        #: the cancel scope of the BLMPOP in flight, and the event set once what it
        #: popped is handed out or pushed back
        self.scope: trio.CancelScope | None = None
        self.settled = trio.Event()


class RedisLayer(ChannelLayer):
    """Channels in Redis, shared by every process that opens the same URL and prefix.

    ``async with open_layer("redis://127.0.0.1:6379/0?prefix=myapp") as layer: ...``
    """

    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss", "unix", "redis+sentinel")
    URL_PARAMETERS: ClassVar[dict[str, str]] = URL_PARAMETERS

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.options = config.layer
        self.prefix = config.prefix
        self._qprefix = f"{config.prefix}:q:"
        self._gprefix = f"{config.prefix}:g:"
        self._mprefix = f"{config.prefix}:m:"
        self._dead: set[str] = set()
        self._expiry_ms = int(self.options.expiry * 1000)
        self._ttl_ms = self._expiry_ms + 1000
        ttl = b"%d" % self._ttl_ms
        self._ttl_arg = b"$%d\r\n%b\r\n" % (len(ttl), ttl)
        self._group_expiry_ms = int(self.options.group_expiry * 1000)
        self._cap_args = capacity_args(self.options.capacity, self.options.channel_capacity)
        if config.scheme == "redis+sentinel":
            self._node_names = [f"sentinel:{config.service}"]
        else:
            self._node_names = [str(endpoint) for endpoint in config.endpoints]
        self._nodes: list[RedisNode] = []
        self._node_of: dict[str, RedisNode] = {}
        self._capacities: dict[str, int] = {}
        #: channel -> what send() needs for it (see _target)
        self._targets: dict[str, _Target] = {}
        self._selectors: dict[tuple[str, ...], _Selector] = {}
        self._local: dict[str, _LocalQueue] = {}
        self._readers: dict[RedisNode, _Reader] = {}
        self._pools: dict[tuple[RedisNode, tuple[str, ...]], _Pool] = {}
        #: pools whose keys one receive pops alone, in its own task
        self._solo: set[tuple[RedisNode, tuple[str, ...]]] = set()
        #: pools whose keys had a message at the last pop: LMPOP them first
        self._busy: set[tuple[RedisNode, tuple[str, ...]]] = set()
        self._opened = False
        self._host_done = trio.Event()
        self._loops: trio.Nursery | None = None
        self._closed = False
        self._rotation = 0
        self._turn = 0
        self._pool_turn = 0  # rotates a pool's keys on every BLMPOP (fairness)
        self._sent = 0
        self._received = 0
        self._expired = 0
        self._dropped = 0
        self._full = 0
        # The payload of the send_group envelope being handed out and, once decoded, its
        # message when flat: every other member gets a shallow copy (a fresh message,
        # ~10x cheaper than decoding the same bytes again for each of 1,000 members).
        self._fanout_payload: bytes | None = None
        self._fanout_message: Message | None = None

    @classmethod
    def from_url(cls, url: str) -> Self:
        return cls(parse_url(url))

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Start the layer's background host task; connections are made on first use.

        The layer's own tasks (one reader per shared connection, one loop per
        process-local prefix) live in a nursery owned by a Trio *system* task, so that
        the layer may be opened in one task and closed in another (fixtures, the sync
        facade) and never corrupts the caller's nursery stack. :meth:`aclose` ends it.
        """
        if self._opened:
            return
        if self._closed:
            raise LayerClosed("the redis layer is closed; make a new one with from_url()")
        self._opened = True
        ready = trio.Event()
        trio.lowlevel.spawn_system_task(
            self._host, ready, name=f"csp-bus redis layer {self.prefix}"
        )
        await ready.wait()

    def _make_nodes(self, nursery: trio.Nursery) -> None:
        config = self.config
        for name, endpoint in zip(self._node_names, config.endpoints, strict=False):
            if config.scheme == "redis+sentinel":
                assert config.service is not None and config.sentinel is not None
                resolver: Any = SentinelResolver(config.endpoints, config.service, config.sentinel)
            else:
                resolver = StaticResolver(endpoint)
            self._nodes.append(
                RedisNode(
                    resolver,
                    config.connect,
                    nursery,
                    name=name,
                    max_connections=config.max_connections,
                )
            )

    async def _host(self, ready: trio.Event) -> None:
        try:
            async with trio.open_nursery() as connections:
                self._make_nodes(connections)
                async with trio.open_nursery() as loops:
                    self._loops = loops
                    if self.config.scheme == "redis+sentinel":
                        loops.start_soon(self._watch_sentinels)
                    ready.set()
                    await trio.sleep_forever()  # until aclose() cancels this nursery
                for node in self._nodes:
                    await node.aclose()
                connections.cancel_scope.cancel()
        except Exception:  # a bug in a background task: close rather than crash the run
            log.exception("the redis layer's background tasks failed; the layer is closed")
        finally:
            ready.set()
            self._host_done.set()
            if not self._closed:
                await self.aclose()

    async def _watch_sentinels(self) -> None:
        """Follow ``+switch-master`` announcements: on a failover of our master, drop
        every connection at once, so that the next operation asks the Sentinels again
        (instead of writing to the old master until it is demoted)."""
        config = self.config
        assert config.sentinel is not None and config.service is not None
        node = self._nodes[0]
        failures = 0
        while True:
            for sentinel in config.endpoints:
                try:
                    connection = await Connection.open(sentinel, config.sentinel)
                except LayerError:
                    continue
                try:
                    subscribe: tuple[Any, ...] = ("SUBSCRIBE", "+switch-master")
                    await connection.write(hiredis.pack_command(subscribe))
                    while True:
                        reply = await connection.read_reply(math.inf)
                        if (
                            isinstance(reply, list)
                            and reply[0] == b"message"
                            and reply[2].split(b" ", 1)[0].decode() == config.service
                        ):
                            log.info("Sentinel: %s", reply[2].decode())
                            node.reset()
                            node.abort_borrowed()
                        failures = 0
                except LayerError:
                    pass
                finally:
                    await connection.aclose()
            failures += 1
            await trio.sleep(random.uniform(0, min(5.0, 0.05 * 2**failures)))

    async def aclose(self) -> None:
        """Close: waiting receives get LayerClosed, connections are released, background
        tasks end (each within ``timeout``). Idempotent; callable from any task."""
        if not self._closed:
            self._closed = True
            closed = LayerClosed("the redis layer was closed while receiving")
            for queue in self._local.values():
                self._fail_waiters(queue, closed)
            for pool in list(self._pools.values()):
                self._fail_pool(pool, closed)
            for node in self._nodes:
                node.abort_borrowed()
            if self._loops is not None:
                self._loops.cancel_scope.cancel()
        if self._opened:
            with trio.CancelScope(shield=True):
                await self._host_done.wait()

    async def _enter(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise LayerClosed("the redis layer is closed")
        if not self._opened:
            raise UsageError("open the layer first: `async with open_layer(url) as layer:`")

    def _closed_error(self, exc: LayerError) -> LayerClosed:
        error = LayerClosed("the redis layer was closed")
        error.__cause__ = exc
        return error

    # -- placement -----------------------------------------------------------------------

    def _node(self, hash_key: str) -> RedisNode:
        nodes = self._nodes
        if len(nodes) == 1:
            return nodes[0]
        node = self._node_of.get(hash_key)
        if node is None:
            if len(self._node_of) >= 65536:
                self._node_of.clear()
            node = self._node_of[hash_key] = nodes[rendezvous(hash_key, self._node_names)]
        return node

    def _capacity(self, key: str) -> int:
        capacity = self._capacities.get(key)
        if capacity is None:
            if len(self._capacities) >= 4096:
                self._capacities.clear()
            capacity = self._capacities[key] = self.options.capacity_for(key)
        return capacity

    def _open_envelope(self, envelope: bytes, now: int) -> _Entry | None:
        """Parse a LIST element; None (counted) when expired or malformed."""
        try:
            deadline = int(envelope[:13])
            newline = envelope.index(b"\n", 13)
            names = envelope[13:newline].decode("ascii")
        except (ValueError, UnicodeDecodeError):
            log.warning("dropped a malformed envelope from Redis: %r", envelope[:80])
            self._expired += 1
            return None
        # one channel (a send) is the common case: no split, nothing to reverse
        channels = names.split(",") if "," in names else [names]
        if deadline <= now:
            self._expired += len(channels)
            for channel in channels:
                if "!" in channel:
                    self._dead.add(channel)
            return None
        if len(channels) > 1:
            channels.reverse()
        return [deadline, channels, envelope[newline + 1 :]]

    @staticmethod
    def _envelope(entry: _Entry) -> bytes:
        """The LIST element for what is left of a buffered entry."""
        return b"%013d%b\n%b" % (entry[0], ",".join(reversed(entry[1])).encode(), entry[2])

    def _entry_taken(self, entry: _Entry, now: int) -> _Item | None:
        """The next message of ``entry``; None (counted) when it expired meanwhile."""
        if entry[0] <= now:
            self._expired += len(entry[1])
            for channel in entry[1]:
                if "!" in channel:
                    self._dead.add(channel)
            entry[1].clear()
            return None
        return entry[0], entry[1].pop(), entry[2]

    async def _reap(self) -> None:
        """Process-local channels whose message expired unread have a dead reader: they
        leave every group (DESIGN.md 3). Shielded: idempotent cleanup, bounded."""
        dead, self._dead = self._dead, set()
        with trio.CancelScope(shield=True):
            for channel in dead:
                try:
                    with trio.fail_after(self.config.connect.timeout):
                        await self._leave_all(channel)
                except (LayerError, trio.TooSlowError) as exc:
                    log.warning(
                        "could not remove dead channel %r from its groups: %s", channel, exc
                    )

    async def _leave_all(self, channel: str) -> None:
        node = self._node(queue_key(channel))
        groups = await LEAVE_ALL(node, (self._mprefix + channel,), (self._gprefix, channel))
        for group in groups:
            home = self._node(group.decode())
            if home is not node:
                await home.execute("ZREM", self._gprefix + group.decode(), channel)

    # -- sending -------------------------------------------------------------------------

    def _target(self, channel: str) -> _Target:
        """What :meth:`send` needs for ``channel``, validated and packed once."""
        key = validate_send_name(channel)
        capacity = self._capacity(key)
        name = channel.encode()
        count = b"%d" % capacity
        target = (
            key,
            SEND.head((self._qprefix + key,), 4),
            name,
            14 + len(name),  # the envelope's length without the payload
            capacity,
            b"$%d\r\n%b\r\n" % (len(count), count),
        )
        if len(self._targets) >= 4096:
            self._targets.clear()
        self._targets[channel] = target
        return target

    async def send(self, channel: str, message: Message) -> None:
        target = self._targets.get(channel)
        if target is None:
            target = self._target(channel)
        key, head, name, size, capacity, count = target
        payload = encode(message, self.options.max_message_size)
        if self._closed or not self._opened:
            await self._enter()  # raises
        await trio.lowlevel.checkpoint_if_cancelled()
        now = _now_ms()
        stamp = b"%d" % now
        # EVALSHA <send> 1 <queue key> <envelope> <capacity> <now> <ttl>, packed by hand
        # (the hot path: 3x cheaper than hiredis.pack_command's conversions)
        command = b"%b$%d\r\n%013d%b\n%b\r\n%b$%d\r\n%b\r\n%b" % (
            head,
            size + len(payload),
            now + self._expiry_ms,
            name,
            payload,
            count,
            len(stamp),
            stamp,
            self._ttl_arg,
        )
        node = self._node(key)
        try:
            try:  # SEND.run_packed, inlined: the hot path
                done = await node.submit(command, "EVALSHA")
            except RedisReplyError as exc:
                if exc.code != "NOSCRIPT":
                    raise
                done = await SEND.load_and_run(node, command)
        except LayerError as exc:
            if self._closed:
                raise self._closed_error(exc) from exc
            raise
        if not done:
            self._full += 1
            raise ChannelFull(channel, capacity)
        self._sent += 1

    async def send_wait(
        self,
        channel: str,
        message: Message,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - as ChannelLayer.send_wait
    ) -> None:
        # The common case, room at once, without the generic loop's frame (when full,
        # the wait for room starts after this first round trip).
        try:
            return await self.send(channel, message)
        except ChannelFull:
            if timeout is not None and timeout <= 0:
                raise
        await super().send_wait(channel, message, timeout=timeout)

    # -- receiving -----------------------------------------------------------------------

    def _selector(self, channels: tuple[str, ...]) -> _Selector:
        found = self._selectors.get(channels)
        if found is None:
            if not channels:
                raise ValueError("receive() needs at least one channel")
            keys = dict.fromkeys(validate_receive_name(name) for name in channels)
            local = tuple(key for key in keys if key.endswith("!"))
            normal = tuple(key for key in keys if not key.endswith("!"))
            if len(self._selectors) >= 1024:
                self._selectors.clear()
            found = self._selectors[channels] = (local, normal)
        return found

    def _local_queue(self, key: str) -> _LocalQueue:
        queue = self._local.get(key)
        if queue is None:
            node = self._node(key)
            reader = self._readers.get(node)
            if reader is None:
                reader = self._readers[node] = _Reader(node)
            queue = _LocalQueue(key, self._qprefix + key, self._capacity(key), reader)
            self._local[key] = reader.queues[key] = queue
        return queue

    def _by_node(self, keys: Sequence[str]) -> list[tuple[RedisNode, list[str]]]:
        """Redis keys grouped by server, rotated so that each call starts elsewhere."""
        self._rotation += 1
        if len(keys) > 1:
            shift = self._rotation % len(keys)
            keys = [*keys[shift:], *keys[:shift]]
        groups: dict[RedisNode, list[str]] = {}
        for key in keys:
            groups.setdefault(self._node(key), []).append(self._qprefix + key)
        return list(groups.items())

    def _take_local(self, queues: Sequence[_LocalQueue]) -> _Item | None:
        """From the ready buffer served least recently (fair across prefixes)."""
        now = _now_ms()
        while True:
            best = None
            for queue in queues:
                if queue.buffer and (best is None or queue.served < best.served):
                    best = queue
            if best is None:
                return None
            entry = best.buffer[0]
            if len(entry[1]) > 1:
                self._shared(entry[2])
            item = self._entry_taken(entry, now)
            if not entry[1]:
                best.buffer.popleft()
            if item is not None:
                self._rotation += 1
                best.served = self._rotation
                best.touched = trio.current_time()
                return item

    def _decoded(self, item: _Item) -> tuple[str, Message] | None:
        """The message, or None (logged, counted as dropped) when a foreign writer put a
        payload there that is not a valid message: the receiver is not to blame."""
        payload = item[2]
        if payload is self._fanout_payload and self._fanout_message is not None:
            self._received += 1
            return item[1], dict(self._fanout_message)
        try:
            message = decode(payload)
        except InvalidMessage as exc:
            log.warning("dropped an invalid message on %r from Redis: %s", item[1], exc)
            self._dropped += 1
            return None
        self._received += 1
        if payload is self._fanout_payload and all(
            type(value) in _FLAT_TYPES for value in message.values()
        ):
            self._fanout_message = message
            return item[1], dict(message)
        return item[1], message

    async def receive(self, *channels: str) -> tuple[str, Message]:
        # Fast path, the receive loop of a server (DESIGN.md 5) draining a send_group:
        # one process-local prefix whose buffer holds a live message. A key is in
        # self._local only once validated; an expired entry takes the full path.
        queue = self._local.get(channels[0]) if len(channels) == 1 else None
        if queue is not None and queue.buffer:
            entry = queue.buffer[0]
            members = entry[1]
            if entry[0] > _now_ms() and members and self._opened and not self._closed:
                await trio.lowlevel.checkpoint_if_cancelled()
                if queue.buffer and queue.buffer[0] is entry and members:
                    payload = entry[2]
                    if len(members) > 1:
                        self._shared(payload)
                    channel = members.pop()
                    if not members:
                        queue.buffer.popleft()
                    self._rotation += 1
                    queue.served = self._rotation
                    queue.touched = trio.current_time()
                    shared = self._fanout_message
                    if shared is not None and payload is self._fanout_payload:
                        self._received += 1
                        return channel, dict(shared)  # decoded once, a copy each
                    found = self._decoded((entry[0], channel, payload))
                    if found is not None:
                        return found
        if queue is not None:  # one known prefix: its queue is current, no selector
            queues: tuple[_LocalQueue, ...] = (queue,)
            normal_keys: tuple[str, ...] = ()
        else:
            local_keys, normal_keys = self._selector(channels)
            # looked up on every call: an idle prefix's queue is dropped (see _read_loop)
            queues = tuple(map(self._local_queue, local_keys)) if local_keys else ()
        await self._enter()
        while True:
            try:
                if queue is not None and not queue.buffer:  # what _receive would do
                    item = await self._wait_local(queues)
                else:
                    item = await self._receive(queues, normal_keys)
            except LayerError as exc:
                if self._closed and not isinstance(exc, LayerClosed):
                    raise self._closed_error(exc) from exc
                raise
            finally:
                if self._dead:
                    await self._reap()
            found = self._decoded(item)
            if found is not None:
                return found

    async def receive_many(self, *channels: str, limit: int = 64) -> list[tuple[str, Message]]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        batch = [await self.receive(*channels)]
        # Then, synchronously (nothing can cancel what was taken), what this process
        # already holds for the prefixes among ``channels``: no round trip.
        if len(batch) < limit:
            local = self._local
            if len(channels) == 1:
                queue = local.get(channels[0])
                if queue is not None and queue.buffer:
                    self._drain(queue, batch, limit)
            else:
                local_keys = self._selector(channels)[0]
                queues = tuple(local[key] for key in local_keys if key in local)
                while len(batch) < limit and (item := self._take_local(queues)) is not None:
                    if (found := self._decoded(item)) is not None:
                        batch.append(found)
        return batch

    def _drain(self, queue: _LocalQueue, batch: list[tuple[str, Message]], limit: int) -> None:
        """Move ``queue``'s buffered messages into ``batch`` until it holds ``limit``:
        a send_group envelope's members in one go, its payload decoded once."""
        buffer = queue.buffer
        now = _now_ms()
        taken = len(batch)
        while buffer and len(batch) < limit:
            entry = buffer[0]
            deadline, members, payload = entry
            if deadline <= now:
                self._entry_taken(entry, now)  # counts it expired, marks dead readers
                buffer.popleft()
                continue
            room = limit - len(batch)
            if len(members) > 1:
                self._shared(payload)
            if len(members) <= room:
                take = members[::-1]
                buffer.popleft()
            else:
                take = members[-room:]
                del members[-room:]
                take.reverse()
            found = self._decoded((deadline, take[0], payload))
            if found is not None:
                batch.append(found)
            shared = self._fanout_message
            if shared is not None and payload is self._fanout_payload:
                batch += [(channel, dict(shared)) for channel in take[1:]]
                self._received += len(take) - 1
            else:
                for channel in take[1:]:
                    if (found := self._decoded((deadline, channel, payload))) is not None:
                        batch.append(found)
        if len(batch) > taken:
            self._rotation += 1
            queue.served = self._rotation
            queue.touched = trio.current_time()

    async def _receive(
        self, queues: tuple[_LocalQueue, ...], normal_keys: tuple[str, ...]
    ) -> _Item:
        if queues and normal_keys:
            # Alternate which kind is looked at first, so that a full local buffer
            # never starves the plain channels (fairness across channels).
            self._turn += 1
            if self._turn % 2 and (item := await self._pop_now(normal_keys)) is not None:
                return item
        if queues and (item := self._take_local(queues)) is not None:
            return item
        if not normal_keys:
            return await self._wait_local(queues)
        groups = self._by_node(normal_keys)
        if not queues and len(groups) == 1:
            node, keys = groups[0]
            return await self._wait_pool(node, keys)
        return await self._race(queues, groups)

    async def _race(
        self, queues: tuple[_LocalQueue, ...], groups: list[tuple[RedisNode, list[str]]]
    ) -> _Item:
        """Wait on every source at once; the first item wins, the others go back."""
        won: list[tuple[RedisNode | None, _Item]] = []
        errors: list[BaseException] = []

        async def run_local(nursery: trio.Nursery) -> None:
            try:
                won.append((None, await self._wait_local(queues)))
            except (LayerError, LayerClosed) as exc:
                errors.append(exc)
            nursery.cancel_scope.cancel()

        async def run_node(nursery: trio.Nursery, node: RedisNode, keys: list[str]) -> None:
            try:
                won.append((node, await self._pop_blocking(node, keys)))
            except (LayerError, LayerClosed) as exc:
                errors.append(exc)
            nursery.cancel_scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                if queues:
                    nursery.start_soon(run_local, nursery)
                for node, keys in groups:
                    nursery.start_soon(run_node, nursery, node, keys)
        except BaseException:
            with trio.CancelScope(shield=True):
                for source, item in won:
                    await self._give_back(source, item)
            raise
        if not won:
            raise errors[0]
        for source, item in won[1:]:
            with trio.CancelScope(shield=True):
                await self._give_back(source, item)
        return won[0][1]

    async def _give_back(self, node: RedisNode | None, item: _Item) -> None:
        """Return an item taken but not delivered to where it came from, oldest end."""
        channel = item[1]
        key = queue_key(channel)
        entry = [item[0], [channel], item[2]]
        if node is None:
            queue = self._local_queue(key)
            queue.buffer.appendleft(entry)
            self._dispatch(queue)
            return
        try:
            with trio.fail_after(self.config.connect.timeout):
                await node.execute("RPUSH", self._qprefix + key, self._envelope(entry))
        except (LayerError, trio.TooSlowError):
            log.warning("lost a message for %r: it could not be pushed back", channel)

    # process-local prefixes: one loop per prefix, waiters in this process

    async def _wait_local(self, queues: tuple[_LocalQueue, ...]) -> _Item:
        waiter = _Waiter(trio.lowlevel.current_task(), queues)
        for queue in queues:
            queue.waiters[waiter] = None
            reader = queue.reader
            if not reader.running:
                reader.running = True
                assert self._loops is not None
                self._loops.start_soon(self._read_loop, reader)
            elif reader.scope is not None and queue.key not in reader.blocked_on:
                reader.scope.cancel()  # re-issue the BLMPOP with this prefix too
            reader.demand.set()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._unregister(waiter)
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)  # type: ignore[no-any-return]

    def _shared(self, payload: bytes) -> None:
        """``payload`` is about to go to several members: decode it once for them."""
        if payload is not self._fanout_payload:
            self._fanout_payload = payload
            self._fanout_message = None

    def _unregister(self, waiter: _Waiter) -> None:
        for queue in waiter.queues:
            queue.waiters.pop(waiter, None)

    def _dispatch(self, queue: _LocalQueue, now: int = 0) -> None:
        """Hand buffered items to waiters, oldest waiter first (``now``: _now_ms())."""
        if not queue.waiters:
            return
        now = now or _now_ms()
        buffer = queue.buffer
        waiters = queue.waiters
        reschedule = trio.lowlevel.reschedule
        while buffer and waiters:
            entry = buffer[0]
            if entry[0] <= now:
                self._entry_taken(entry, now)  # counts it expired, marks dead readers
                buffer.popleft()
                continue
            deadline, channels, payload = entry
            if len(channels) > 1:
                self._shared(payload)
            # the hot loop of a big send_group: one waiter per member, no extra calls
            while channels and waiters:
                waiter = waiters.popitem(last=False)[0]
                if len(waiter.queues) > 1:
                    self._unregister(waiter)
                waiter.item = (deadline, channels.pop(), payload)
                reschedule(waiter.task, waiter)
            if not channels:
                buffer.popleft()

    def _fail_waiters(self, queue: _LocalQueue, error: BaseException) -> None:
        for waiter in list(queue.waiters):
            self._unregister(waiter)
            trio.lowlevel.reschedule(waiter.task, outcome.Error(error))

    async def _read_loop(self, reader: _Reader) -> None:
        """Pop for the prefixes that have waiting receives, only while they have some.

        With several such prefixes, one ``pop_all`` script call (on the shared, pipelined
        connection) takes what is ready on all of them; when nothing is, one ``BLMPOP``
        over all of them waits on a dedicated connection. A prefix that gets its first
        waiter while that BLMPOP blocks cancels it (unblock, nothing lost) and joins.
        Buffers nobody asked for within LINGER go back to Redis.
        """
        node = reader.node
        try:
            while True:
                stale = trio.current_time() - LINGER
                for queue in list(reader.queues.values()):
                    if queue.waiters or queue.touched > stale:
                        continue
                    if queue.buffer:
                        await self._push_back(node, queue)
                    if not queue.buffer and not queue.waiters:
                        # Forget a prefix nobody reads: a process that receives on many
                        # short-lived prefixes keeps no state for each (no leak).
                        del reader.queues[queue.key]
                        self._local.pop(queue.key, None)
                active = [queue for queue in reader.queues.values() if queue.waiters]
                if not active:
                    reader.demand = trio.Event()
                    if any(queue.buffer for queue in reader.queues.values()):
                        with trio.move_on_after(LINGER):
                            await reader.demand.wait()
                    else:
                        await reader.demand.wait()
                    continue
                try:
                    if len(active) > 1 and await self._pop_all(node, active):
                        continue
                    await self._block_pop(reader, active)
                except LayerError as exc:
                    for queue in active:
                        self._fail_waiters(queue, exc)
                if self._dead:
                    await self._reap()
        finally:
            reader.running = False
            with trio.CancelScope(shield=True):
                for queue in reader.queues.values():
                    await self._push_back(node, queue)

    def _room(self, queue: _LocalQueue) -> int:
        return max(1, min(BATCH, queue.capacity - len(queue.buffer)))

    def _buffer_popped(
        self, queue: _LocalQueue, envelopes: list[bytes], now: int, clock: float
    ) -> None:
        """Buffer what was popped for ``queue`` at ``now`` (ms; ``clock``: Trio's time)
        and hand it to its waiters."""
        queue.touched = clock
        append = queue.buffer.append
        for envelope in envelopes:
            entry = self._open_envelope(envelope, now)
            if entry is not None:
                append(entry)
        self._dispatch(queue, now)

    async def _pop_all(self, node: RedisNode, active: list[_LocalQueue]) -> bool:
        """Take what is ready on every active prefix at once; False when nothing was."""
        keys = [queue.packed_key for queue in active]
        rooms = [
            _PACKED_BATCH
            if queue.capacity - len(queue.buffer) >= BATCH
            else bulk(b"%d" % self._room(queue))
            for queue in active
        ]
        reply = await POP_ALL.run_packed(node, POP_ALL.pack(keys, rooms))
        if not reply:
            return False
        by_key = {queue.redis_key.encode(): queue for queue in active}
        now = _now_ms()
        clock = trio.current_time()
        for index in range(0, len(reply), 2):
            self._buffer_popped(by_key[reply[index]], reply[index + 1], now, clock)
        return True

    async def _block_pop(self, reader: _Reader, active: list[_LocalQueue]) -> None:
        self._rotation += 1
        shift = self._rotation % len(active)
        active = active[shift:] + active[:shift]
        count = min(self._room(queue) for queue in active)
        async with reader.node.blocking() as connection:
            popped = None
            with trio.CancelScope() as scope:
                reader.scope = scope
                reader.blocked_on = frozenset(queue.key for queue in active)
                try:
                    popped = await self._bpop(
                        reader.node,
                        connection,
                        [queue.redis_key for queue in active],
                        count,
                        LOOP_BLOCK,
                    )
                finally:
                    reader.scope = None
                    reader.blocked_on = frozenset()
        if popped:
            key = popped[0].decode()
            for queue in active:
                if queue.redis_key == key:
                    self._buffer_popped(queue, popped[1], _now_ms(), trio.current_time())
                    break

    async def _push_back(self, node: RedisNode, queue: _LocalQueue) -> None:
        """Return a prefix's unclaimed buffer to Redis (oldest at the right end)."""
        key = queue.redis_key
        if not queue.buffer:
            return
        items = list(queue.buffer)
        queue.buffer.clear()
        try:
            with trio.fail_after(self.config.connect.timeout):
                await node.execute("RPUSH", key, *map(self._envelope, reversed(items)))
        except (LayerError, trio.TooSlowError):
            if self._closed:
                log.warning("lost %d unclaimed messages of %r at close", len(items), queue.key)
            else:
                queue.buffer.extendleft(reversed(items))

    # normal channels: one BLMPOP over all of a server's keys

    async def _wait_pool(self, node: RedisNode, keys: list[str]) -> _Item:
        """Wait in the pool of receives on these keys of ``node`` (see :class:`_Pool`)."""
        pool_key = (node, tuple(sorted(keys)))
        pool = self._pools.get(pool_key)
        if pool_key not in self._solo and (pool is None or not pool.waiters):
            # Nobody else waits on these keys: pop in this task (no hand-off), as the
            # receives that join meanwhile share the pool's BLMPOP.
            self._solo.add(pool_key)
            try:
                if pool_key in self._busy:
                    # The last pop found a message: the next one is likely there too,
                    # and LMPOP on the shared, pipelined connection takes it at a
                    # fraction of a BLMPOP's cost (no dedicated connection, no syscalls
                    # of its own). Found nothing: the keys are idle again.
                    item = await self._pop_node(node, keys)
                    if item is not None:
                        return item
                    self._busy.discard(pool_key)
                item = await self._pop_blocking(node, keys)
                if len(self._busy) >= 4096:
                    self._busy.clear()
                self._busy.add(pool_key)
                return item
            finally:
                self._solo.discard(pool_key)
        if pool is None:
            pool = self._pools[pool_key] = _Pool(node, pool_key[1])
        waiter = _Waiter(trio.lowlevel.current_task(), ())
        pool.waiters[waiter] = None
        if not pool.running:
            pool.running = True
            assert self._loops is not None
            self._loops.start_soon(self._pool_loop, pool, pool_key)

        settling: list[trio.Event] = []

        def abort(_: Any) -> trio.lowlevel.Abort:
            pool.waiters.pop(waiter, None)
            if pool.scope is not None:
                # The BLMPOP in flight counted this waiter: unblock it (the loop pops
                # again for those left) and wait until what it took is back in Redis.
                pool.scope.cancel()
                settling.append(pool.settled)
            return trio.lowlevel.Abort.SUCCEEDED

        try:
            return await trio.lowlevel.wait_task_rescheduled(abort)  # type: ignore[no-any-return]
        except trio.Cancelled:
            if settling:  # a cancelled receive returns with nothing taken for it
                with trio.CancelScope(shield=True):
                    await settling[0].wait()
            raise

    def _fail_pool(self, pool: _Pool, error: BaseException) -> None:
        waiters = list(pool.waiters)
        pool.waiters.clear()
        for waiter in waiters:
            trio.lowlevel.reschedule(waiter.task, outcome.Error(error))

    async def _pool_loop(self, pool: _Pool, pool_key: tuple[RedisNode, tuple[str, ...]]) -> None:
        """Pop for a pool while it has waiters, on one dedicated connection."""
        node = pool.node
        try:
            while pool.waiters:
                try:
                    async with node.blocking() as connection:
                        while pool.waiters:
                            await self._pool_pop(pool, connection)
                except LayerError as exc:
                    self._fail_pool(pool, exc)
                if self._dead:
                    await self._reap()
        finally:
            pool.running = False
            if self._pools.get(pool_key) is pool:
                del self._pools[pool_key]
            if pool.waiters:  # only when the layer closes (its loops are cancelled)
                self._fail_pool(pool, LayerClosed("the redis layer was closed while receiving"))

    async def _pool_pop(self, pool: _Pool, connection: Connection) -> None:
        """One BLMPOP for as many messages as the pool has waiters; hand them out. Sets
        ``pool.settled`` once what it popped is handed out or back in Redis."""
        keys = list(pool.keys)
        if len(keys) > 1:  # fairness across channels: start elsewhere each time
            self._pool_turn += 1
            shift = self._pool_turn % len(keys)
            keys = keys[shift:] + keys[:shift]
        settled = pool.settled = trio.Event()
        try:
            popped = None
            with trio.CancelScope() as scope:
                pool.scope = scope
                try:
                    popped = await self._bpop(
                        pool.node, connection, keys, min(BATCH, len(pool.waiters)), RECEIVE_BLOCK
                    )
                finally:
                    pool.scope = None
            if popped is not None:
                await self._hand_out(pool, popped)
        finally:
            settled.set()

    async def _hand_out(self, pool: _Pool, popped: tuple[bytes, list[bytes]]) -> None:
        """Give each waiter of ``pool``, oldest first, one of the popped messages."""
        envelopes = popped[1]
        waiters = pool.waiters
        now = _now_ms()
        reschedule = trio.lowlevel.reschedule
        for index, envelope in enumerate(envelopes):
            if not waiters:  # some waiters were cancelled meanwhile: the rest goes back
                await self._push_back_popped(pool.node, popped[0], envelopes[index:])
                return
            entry = self._open_envelope(envelope, now)
            if entry is None:
                continue
            item = self._entry_taken(entry, now)
            if item is None:
                continue
            waiter = waiters.popitem(last=False)[0]
            waiter.item = item
            reschedule(waiter.task, waiter)

    async def _push_back_popped(self, node: RedisNode, key: bytes, envelopes: list[bytes]) -> None:
        """Return envelopes popped (oldest first) to the oldest end of their list."""
        with trio.CancelScope(shield=True):
            try:
                with trio.fail_after(self.config.connect.timeout):
                    await node.execute("RPUSH", key, *reversed(envelopes))
            except (LayerError, trio.TooSlowError):
                log.warning("lost %d messages of %r: not pushed back", len(envelopes), key)

    async def _pop_blocking(self, node: RedisNode, keys: list[str]) -> _Item:
        async with node.blocking() as connection:
            while True:
                popped = await self._bpop(node, connection, keys, 1, RECEIVE_BLOCK)
                if popped and (item := self._first(popped[1][0])) is not None:
                    return item

    async def _bpop(
        self, node: RedisNode, connection: Connection, keys: list[str], count: int, block: float
    ) -> tuple[bytes, list[bytes]] | None:
        """One cancellation-safe BLMPOP: if cancelled, nothing stays taken."""
        command: tuple[Any, ...] = ("BLMPOP", block, len(keys), *keys, "RIGHT", "COUNT", count)
        await connection.write(hiredis.pack_command(command))
        try:
            reply = await connection.read_reply(block + self.config.connect.timeout)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await self._unblock(node, connection)
            raise
        if isinstance(reply, hiredis.ReplyError):
            raise _reply_error(reply, "BLMPOP")
        return None if reply is None else (reply[0], reply[1])

    async def _unblock(self, node: RedisNode, connection: Connection) -> None:
        """Stop a BLMPOP in flight; push back whatever it popped meanwhile."""
        try:
            with trio.fail_after(self.config.connect.timeout):
                while True:
                    await node.execute("CLIENT", "UNBLOCK", connection.client_id)
                    # The UNBLOCK may overtake the BLMPOP (two sockets): then try again.
                    with trio.move_on_after(0.05):
                        reply = await connection.read_reply()
                        break
                if reply and not isinstance(reply, hiredis.ReplyError):
                    await node.execute("RPUSH", reply[0], *reversed(reply[1]))
        except (LayerError, trio.TooSlowError):
            connection.abort()

    async def receive_nowait(self, *channels: str) -> tuple[str, Message] | None:
        local_keys, normal_keys = self._selector(channels)
        # only buffers that exist: a non-blocking look creates no per-prefix state
        local = self._local
        queues = tuple(local[key] for key in local_keys if key in local)
        await self._enter()
        while True:
            item = self._take_local(queues) if queues else None
            if item is None:
                try:
                    item = await self._pop_now([*local_keys, *normal_keys])
                except LayerError as exc:
                    if self._closed:
                        raise self._closed_error(exc) from exc
                    raise
                finally:
                    if self._dead:
                        await self._reap()
            if item is None:
                return None
            found = self._decoded(item)
            if found is not None:
                return found

    async def _pop_now(self, keys: Sequence[str]) -> _Item | None:
        for node, redis_keys in self._by_node(keys):
            item = await self._pop_node(node, redis_keys)
            if item is not None:
                return item
        return None

    async def _pop_node(self, node: RedisNode, redis_keys: list[str]) -> _Item | None:
        """LMPOP on the shared connection: a message ready on these keys, or None."""
        while True:
            reply = await node.execute("LMPOP", len(redis_keys), *redis_keys, "RIGHT", "COUNT", 1)
            if reply is None:
                return None
            now = _now_ms()
            entry = self._open_envelope(reply[1][0], now)
            if entry is None:
                continue
            item = self._entry_taken(entry, now)
            if entry[1]:
                # The other members of a send_group envelope: back to the oldest end
                # in Redis, where their deadline stays visible to send_group.
                with trio.CancelScope(shield=True):
                    await node.execute("RPUSH", reply[0], self._envelope(entry))
            if item is not None:
                return item

    def _first(self, envelope: bytes) -> _Item | None:
        """The message of a popped plain-channel envelope (one channel only)."""
        now = _now_ms()
        entry = self._open_envelope(envelope, now)
        return None if entry is None else self._entry_taken(entry, now)

    async def new_channel(self, pattern: str) -> str:
        await self._enter()
        return new_channel_name(pattern)

    # -- groups --------------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        validate_group_name(group)
        validate_send_name(channel)
        await self._enter()
        expires = _now_ms() + self._group_expiry_ms
        args = (channel, expires, self._group_expiry_ms, group)
        home = self._node(group)
        try:
            if "!" not in channel:
                await GROUP_ADD(home, (self._gprefix + group,), args)
            elif (node := self._node(queue_key(channel))) is home:
                await GROUP_ADD(home, (self._gprefix + group, self._mprefix + channel), args)
            else:
                await GROUP_ADD(home, (self._gprefix + group,), args)
                await node.execute_many(
                    [
                        ("SADD", self._mprefix + channel, group),
                        ("PEXPIRE", self._mprefix + channel, self._group_expiry_ms),
                    ]
                )
        except LayerError as exc:
            if self._closed:
                raise self._closed_error(exc) from exc
            raise

    async def group_discard(self, group: str, channel: str) -> None:
        validate_group_name(group)
        validate_send_name(channel)
        await self._enter()
        home = self._node(group)
        args = (channel, group)
        try:
            if "!" not in channel:
                await GROUP_DISCARD(home, (self._gprefix + group,), args)
            elif (node := self._node(queue_key(channel))) is home:
                await GROUP_DISCARD(home, (self._gprefix + group, self._mprefix + channel), args)
            else:
                await GROUP_DISCARD(home, (self._gprefix + group,), args)
                await node.execute("SREM", self._mprefix + channel, group)
        except LayerError as exc:
            if self._closed:
                raise self._closed_error(exc) from exc
            raise

    async def send_group(self, group: str, message: Message) -> None:
        validate_group_name(group)
        payload = encode(message, self.options.max_message_size)
        await self._enter()
        now = _now_ms()
        args = (
            f"{self.prefix}:",
            payload,
            b"%013d" % (now + self._expiry_ms),
            now,
            self._ttl_ms,
            *self._cap_args,
        )
        group_key = self._gprefix + group
        try:
            if len(self._nodes) == 1:
                sent, dropped, _dead = await SEND_GROUP(self._nodes[0], (group_key,), args)
            else:
                sent, dropped = await self._send_group_sharded(group, group_key, now, args)
        except LayerError as exc:
            if self._closed:
                raise self._closed_error(exc) from exc
            raise
        self._sent += sent
        self._dropped += dropped

    async def _send_group_sharded(
        self, group: str, group_key: str, now: int, args: tuple[Any, ...]
    ) -> tuple[int, int]:
        """Members from the group's server, then one FANOUT per destination server."""
        home = self._node(group)
        members = await GROUP_MEMBERS(home, (group_key,), (now,))
        buckets: dict[RedisNode, list[bytes]] = {}
        for member in members:
            channel = member.decode("ascii")
            buckets.setdefault(self._node(queue_key(channel)), []).append(member)
        totals = [0, 0]
        dead: list[bytes] = []
        errors: list[LayerError] = []

        async def fan_out(node: RedisNode, batch: list[bytes]) -> None:
            try:
                reply = await FANOUT(node, (), (*args, *batch))
            except LayerError as exc:
                errors.append(exc)
                return
            totals[0] += reply[0]
            totals[1] += reply[1]
            dead.extend(reply[2:])

        async with trio.open_nursery() as nursery:
            for node, batch in buckets.items():
                nursery.start_soon(fan_out, node, batch)
        for member in dead:
            await self._leave_all(member.decode())
        if errors:
            raise errors[0]
        return totals[0], totals[1]

    # -- housekeeping --------------------------------------------------------------------

    async def _scan(self, node: RedisNode, pattern: str) -> list[bytes]:
        keys: list[bytes] = []
        cursor = b"0"
        while True:
            cursor, batch = await node.execute("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            keys.extend(batch)
            if cursor == b"0":
                return keys

    async def flush(self) -> None:
        """Delete this layer's keys (``prefix:*``) on every server; nothing else."""
        await self._enter()
        for queue in self._local.values():
            queue.buffer.clear()
        try:
            for node in self._nodes:
                keys = await self._scan(node, f"{self.prefix}:*")
                for start in range(0, len(keys), 1000):
                    await node.execute("UNLINK", *keys[start : start + 1000])
        except LayerError as exc:
            if self._closed:
                raise self._closed_error(exc) from exc
            raise

    async def stats(self, channel: str | None = None) -> dict[str, Any]:
        await self._enter()
        now = _now_ms()
        if channel is not None:
            if channel.endswith("!"):
                key = validate_receive_name(channel)
            else:
                key = validate_send_name(channel)
            replies = await self._node(key).execute_many(
                [("LLEN", self._qprefix + key), ("LINDEX", self._qprefix + key, -1)]
            )
            return self._queue_stats(key, replies[0], replies[1], now)
        channels: dict[str, dict[str, Any]] = {}
        groups: dict[str, int] = {}
        for node in self._nodes:
            keys = await self._scan(node, f"{self._qprefix}*")
            if keys:
                replies = await node.execute_many(
                    [command for key in keys for command in (("LLEN", key), ("LINDEX", key, -1))]
                )
                for index, raw in enumerate(keys):
                    name = raw.decode()[len(self._qprefix) :]
                    figures = self._queue_stats(
                        name, replies[2 * index], replies[2 * index + 1], now
                    )
                    if figures["messages_pending"]:
                        channels[name] = figures
            group_keys = await self._scan(node, f"{self._gprefix}*")
            if group_keys:
                counts = await node.execute_many(
                    [("ZCOUNT", key, now, "+inf") for key in group_keys]
                )
                for raw, count in zip(group_keys, counts, strict=True):
                    if count:
                        groups[raw.decode()[len(self._gprefix) :]] = count
        for name, queue in self._local.items():
            if queue.buffer and name not in channels:
                channels[name] = self._queue_stats(name, 0, None, now)
        return {
            "messages_count": self._sent,
            "messages_received": self._received,
            "messages_expired": self._expired,
            "messages_dropped": self._dropped,
            "channel_full_count": self._full,
            "messages_pending": sum(c["messages_pending"] for c in channels.values()),
            "messages_max_age": max((c["messages_max_age"] for c in channels.values()), default=0),
            "channels": channels,
            "groups": groups,
        }

    def _queue_stats(self, key: str, length: int, oldest: bytes | None, now: int) -> dict[str, Any]:
        pending = int(length)
        age = 0.0
        local = self._local.get(key)
        if local is not None and local.buffer:
            pending += sum(len(entry[1]) for entry in local.buffer)
            oldest_local = local.buffer[0][0]
            age = max(age, (now - (oldest_local - self._expiry_ms)) / 1000)
        if isinstance(oldest, bytes):
            try:
                sent_at = int(oldest[:13]) - self._expiry_ms
                age = max(age, (now - sent_at) / 1000)
            except ValueError:
                pass
        return {
            "messages_pending": pending,
            "messages_max_age": max(0.0, age),
            "capacity": self._capacity(key),
        }
