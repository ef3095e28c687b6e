"""The per-process reply dispatcher (DESIGN.md 5).

A server process takes one process-local prefix per adapter (``http.response.<rand>!``)
and runs **one** receive loop on it. Each connection gets a reply channel
``prefix + <id>`` and a bounded buffer; the loop hands every message to the buffer of
the connection it is addressed to. Messages for connections that are
gone are dropped (counted in ``dropped``).

Backpressure: when a connection's buffer is full (a streamed response outrunning a slow
client), the loop waits for that connection up to ``overrun_timeout`` seconds, which
holds back every other connection of the process: that is deliberate. The layer's
capacity on the prefix then fills and producers see ``ChannelFull`` (or wait in
``send_wait``), which is the end-to-end flow control a Go channel gives. A connection
still full after the timeout is *overrun*: its buffer is closed, its receive raises
:class:`ReplyOverrun`, and the glue aborts the connection.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Callable
from types import TracebackType

import outcome
import trio

from ..errors import BusError, LayerClosed, LayerError
from ..layers.base import ChannelLayer
from ..messages import Message, new_process_prefix

__all__ = ["ReplyChannel", "ReplyDispatcher", "ReplyOverrun"]

logger = logging.getLogger("csp_bus.server")

#: most messages one ``receive_many`` call of the loop takes (a send_group to a whole
#: process arrives in one piece: handed over without a trip through the scheduler each)
BATCH = 256


class ReplyOverrun(BusError):
    """The connection did not take its replies fast enough and was cut off."""


class ReplyChannel:
    """One connection's reply channel: ``name`` goes into messages as ``reply_channel``;
    :meth:`receive` returns what the application sent to it, in order.

    Use as a context manager (``with dispatcher.open_channel() as reply:``) so that the
    name is unregistered when the connection ends.

    The buffer is a deque of at most ``buffer`` messages that only the dispatcher's task
    fills (a Trio memory channel's send_nowait and receive_nowait cost more than the
    rest of handing a reply over): a task waiting in :meth:`receive` is handed its
    message directly, as a memory channel does.
    """

    __slots__ = (
        "_buffer",
        "_closed",
        "_dispatcher",
        "_ended",
        "_receivers",
        "_room",
        "_size",
        "name",
        "overrun",
        "wakeup",
    )

    def __init__(self, dispatcher: ReplyDispatcher, name: str, buffer: int) -> None:
        self._dispatcher = dispatcher
        self.name = name
        self._size = buffer
        self._buffer: deque[Message] = deque()
        #: tasks parked in receive(), oldest first
        self._receivers: OrderedDict[trio.lowlevel.Task, None] = OrderedDict()
        #: set (and dropped) when a message leaves the buffer: the dispatcher waits on it
        #: for room in a full buffer
        self._room: trio.Event | None = None
        self._ended = False  # cut off: nothing more comes; ReplyOverrun once drained
        self._closed = False
        self.overrun = False
        #: called (synchronously, by the dispatcher's task) after each message is put in
        #: the buffer and when the connection is cut off: a connection that waits on its
        #: socket and its replies in one task sets it instead of parking in receive()
        self.wakeup: Callable[[], object] | None = None

    def _put(self, message: Message) -> bool:
        """The dispatcher's hand-over: False when the buffer is full."""
        if self._closed or self._ended:
            raise trio.BrokenResourceError
        receivers = self._receivers
        if receivers:
            task = receivers.popitem(last=False)[0]
            trio.lowlevel.reschedule(task, outcome.Value(message))
            return True
        buffer = self._buffer
        if len(buffer) < self._size:
            buffer.append(message)
            return True
        return False

    def _end(self) -> None:
        """Cut off: waiting receives raise ReplyOverrun (the buffer is empty then)."""
        self._ended = True
        self._wake_all(self._overrun_error)

    def _overrun_error(self) -> ReplyOverrun:
        return ReplyOverrun(f"{self.name}: replies arrived faster than they were sent")

    def _wake_all(self, error: Callable[[], BaseException]) -> None:
        while self._receivers:
            task = self._receivers.popitem(last=False)[0]
            trio.lowlevel.reschedule(task, outcome.Error(error()))

    async def receive(self) -> Message:
        """The next message for this connection. Raises :class:`ReplyOverrun` when the
        dispatcher cut the connection off, ``trio.ClosedResourceError`` after close."""
        await trio.lowlevel.checkpoint_if_cancelled()
        message = self.receive_nowait()
        if message is not None:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return message
        task = trio.lowlevel.current_task()
        self._receivers[task] = None

        def abort(_: object) -> trio.lowlevel.Abort:
            self._receivers.pop(task, None)
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)  # type: ignore[no-any-return]

    def receive_nowait(self) -> Message | None:
        """A message already buffered, or ``None``. Raises :class:`ReplyOverrun` once a
        cut-off connection's buffer is empty, ``trio.ClosedResourceError`` after close."""
        if self._closed:
            raise trio.ClosedResourceError
        buffer = self._buffer
        if buffer:
            if self._room is not None:
                self._room.set()
                self._room = None
            return buffer.popleft()
        if self._ended:
            raise self._overrun_error()
        return None

    def close(self) -> None:
        """Unregister; later messages to ``name`` are dropped. Idempotent."""
        self._dispatcher._channels.pop(self.name, None)
        if not self._closed:
            self._closed = True
            self._buffer.clear()
            self._wake_all(trio.ClosedResourceError)
            if self._room is not None:
                self._room.set()
                self._room = None

    def __enter__(self) -> ReplyChannel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ReplyDispatcher:
    """One receive loop on a process-local prefix, feeding per-connection channels.

    Build it with :meth:`ServerRuntime.open_dispatcher
    <csp_bus.server.runtime.ServerRuntime.open_dispatcher>`, which runs :meth:`run` in the
    server's nursery; or run it yourself in a nursery of your own.
    """

    def __init__(
        self,
        layer: ChannelLayer,
        base: str,
        *,
        buffer: int = 16,
        overrun_timeout: float = 2.0,
    ) -> None:
        self.layer = layer
        self.prefix = new_process_prefix(base)
        self.buffer = buffer
        self.overrun_timeout = overrun_timeout
        self._channels: dict[str, ReplyChannel] = {}
        self._ids = itertools.count(1)
        self.delivered = 0
        self.dropped = 0
        self.overruns = 0

    def open_channel(self, buffer: int | None = None) -> ReplyChannel:
        """A fresh reply channel registered with this dispatcher."""
        name = f"{self.prefix}{next(self._ids)}"
        channel = ReplyChannel(self, name, self.buffer if buffer is None else buffer)
        self._channels[name] = channel
        return channel

    def __len__(self) -> int:
        return len(self._channels)

    def _offer(self, name: str, message: Message) -> ReplyChannel | None:
        """Put ``message`` in its connection's buffer and wake the connection, without
        waiting. Returns the channel when its buffer is full; a message for a closed or
        unknown connection is counted as dropped."""
        channel = self._channels.get(name)
        if channel is None:
            self.dropped += 1
            return None
        try:
            if not channel._put(message):
                return channel
        except trio.BrokenResourceError:
            self.dropped += 1
            return None
        self.delivered += 1
        if channel.wakeup is not None:
            channel.wakeup()
        return None

    async def _hand_over(self, channel: ReplyChannel, message: Message) -> None:
        """Wait up to ``overrun_timeout`` for room in a full connection buffer."""
        with trio.move_on_after(self.overrun_timeout):
            # _offer counts a connection that closed meanwhile as dropped
            while self._offer(channel.name, message) is not None:
                if channel._room is None:
                    channel._room = trio.Event()
                await channel._room.wait()
            return
        self._cut_off(channel)

    def _cut_off(self, channel: ReplyChannel) -> None:
        """The connection did not take its replies: close its buffer (its receiver sees
        EndOfChannel -> ReplyOverrun), unregister it and tell it."""
        self.overruns += 1
        channel.overrun = True
        logger.warning("%s: connection too slow to take its replies; cutting it off", channel.name)
        channel._end()
        self._channels.pop(channel.name, None)
        if channel.wakeup is not None:
            channel.wakeup()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Receive on the prefix until cancelled or the layer closes.

        A failing backend (``LayerError``: Redis restarting) is logged and retried with
        a growing pause; it never stops the server.
        """
        task_status.started()
        receive_many = self.layer.receive_many
        prefix = self.prefix
        backoff = 0.0
        while True:
            try:
                batch = await receive_many(prefix, limit=BATCH)
            except LayerClosed:
                return
            except LayerError as exc:
                backoff = min(5.0, backoff * 2 or 0.05)
                logger.warning("reply dispatcher %s: %s; retrying in %.2fs", prefix, exc, backoff)
                await trio.sleep(backoff)
                continue
            backoff = 0.0
            # No await per message: the whole batch is handed over in this task unless a
            # connection's buffer is full (then _hand_over waits for it).
            messages = iter(batch)
            try:
                for name, message in messages:
                    full = self._offer(name, message)
                    if full is not None:
                        if self.overrun_timeout <= 0 or math.isnan(self.overrun_timeout):
                            self._cut_off(full)
                        else:
                            await self._hand_over(full, message)
            except BaseException:
                # Cancelled while waiting for a slow connection: what is left of the
                # batch goes to the connections with room (nothing else can take it).
                for name, message in messages:
                    if self._offer(name, message) is not None:
                        self.dropped += 1
                raise
