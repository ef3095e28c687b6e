"""The channel-layer contract (DESIGN.md section 3).

Every layer subclasses :class:`ChannelLayer` and passes ``tests/conformance/``. The
docstrings below are the contract: what each operation does, what it raises, and what
cancellation means. Where a docstring and a layer disagree, the layer is wrong.

Checkpoints and cancellation. An operation either raises ``trio.Cancelled`` and had no
effect (a cancelled ``receive`` took no message; a cancelled ``send`` enqueued nothing),
or returns having had its whole effect: nothing is ever half done or lost. An operation
that must wait (a ``receive`` on empty channels, ``send_wait`` on a full one) is always
a checkpoint. One that need not wait (a ``send``, a ``receive`` that finds a message
ready) is a full checkpoint -- cancellation and schedule point -- at least once every 32
calls, the way Go's buffered channel operations do not yield: a Trio checkpoint costs
more than a whole memory-layer send, and a loop that moves many messages should not pay
it per message. So a tight loop of operations still notices cancellation and lets other
tasks run within a bounded number of iterations; code that must yield or notice
cancellation at one precise spot calls ``trio.lowlevel.checkpoint()`` itself.
"""

from __future__ import annotations

import abc
import math
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, ClassVar, Self

import trio

from ..errors import ChannelFull
from ..messages import Message
from .options import LayerOptions

__all__ = ["ChannelLayer", "Listener"]


class ChannelLayer(abc.ABC):
    """A named-channel message bus: the five operations plus ``new_channel``.

    Use it as an async context manager (``async with open_layer(url) as layer``) or call
    :meth:`aclose` when done. All methods must be called from the Trio run the layer is
    used in (from any of its tasks: a layer may be opened in one task and closed in
    another); threads go through :mod:`csp_bus.sync`.
    """

    #: URL schemes this class serves (``open_layer`` picks the class by scheme).
    schemes: ClassVar[tuple[str, ...]] = ()
    #: extra URL parameters beyond :data:`~csp_bus.layers.options.COMMON_PARAMETERS`.
    URL_PARAMETERS: ClassVar[dict[str, str]] = {}
    #: ASGI 1.x extension names this layer implements.
    extensions: ClassVar[frozenset[str]] = frozenset({"groups", "flush", "statistics"})

    options: LayerOptions

    @classmethod
    @abc.abstractmethod
    def from_url(cls, url: str) -> Self:
        """Build an (unopened) layer from its URL; raise ``InvalidLayerURL`` on a bad one."""

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Acquire resources (connections). ``open_layer`` calls it; idempotent."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections and wake every waiting ``receive`` with ``LayerClosed``.

        Idempotent. After it, every operation raises ``LayerClosed``. Messages already in
        a shared backend (Redis) stay there; an in-process layer's messages are gone.
        """

    async def close(self) -> None:
        """Alias of :meth:`aclose` (the ASGI 1.x name)."""
        await self.aclose()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with trio.CancelScope(shield=True):
            await self.aclose()

    # -- the core operations --------------------------------------------------------------

    @abc.abstractmethod
    async def send(self, channel: str, message: Message) -> None:
        """Enqueue ``message`` on ``channel``; never waits for a receiver.

        Raises ``InvalidChannelName`` (``channel`` is not a full name: a name ending in
        ``!`` or ``?`` is a pattern), ``InvalidMessage``/``MessageTooLarge`` (before
        anything is enqueued), ``ChannelFull`` (the channel, or for ``a!b`` the prefix
        ``a!``, holds ``capacity`` messages), ``LayerClosed``, ``LayerError``.
        """

    @abc.abstractmethod
    async def receive(self, *channels: str) -> tuple[str, Message]:
        """Wait until any of ``channels`` has a message; return ``(channel, message)``.

        ``channels`` are full names or process-local prefixes (``a!``, returning messages
        sent to any ``a!x`` with their full name ``a!x``). FIFO per channel; fair across
        channels: a busy channel never starves a quiet one. The message is a fresh copy.
        Each message goes to exactly one receive, at most once.

        Cancellation: if cancelled, no message was taken. Raises ``InvalidChannelName``,
        ``ValueError`` (no channel given), ``LayerClosed``, ``LayerError`` -- also while
        waiting, when a shared backend drops (``LayerUnavailable``): no message was
        taken then either, and the caller decides whether to retry.
        """

    @abc.abstractmethod
    async def receive_nowait(self, *channels: str) -> tuple[str, Message] | None:
        """Like :meth:`receive`, but return ``None`` at once when no message is ready."""

    async def receive_many(self, *channels: str, limit: int = 64) -> list[tuple[str, Message]]:
        """Like :meth:`receive`, but return up to ``limit`` messages: wait for the first
        exactly as :meth:`receive` does, then add, without waiting, those ready at once.

        "Ready" is what the layer holds in this process: a shared backend makes no extra
        round trip for them (on Redis, the rest of a ``send_group`` envelope popped for
        a process-local prefix). Order and fairness are those of as many ``receive``
        calls in a row. One call is one operation for the checkpoint rule above. This is
        for a loop that hands messages on without awaiting per message (the server's
        reply dispatcher): it pays the per-call overhead once per batch.

        Cancellation: as :meth:`receive`; a cancelled call took no message. Raises
        ``ValueError`` for ``limit < 1`` and what :meth:`receive` raises. The default
        returns one message per call; layers override it.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        return [await self.receive(*channels)]

    @abc.abstractmethod
    async def new_channel(self, pattern: str) -> str:
        """Return ``pattern`` (ending in ``!`` or ``?``) plus a fresh random suffix.

        ``?`` channels are single-reader channels, consistent across processes. For
        ``!`` channels the pattern is a process-local prefix the caller reads.
        """

    @abc.abstractmethod
    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group``, or refresh its membership (``group_expiry``)."""

    @abc.abstractmethod
    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; a channel that is not a member is no error."""

    @abc.abstractmethod
    async def send_group(self, group: str, message: Message) -> None:
        """Send ``message`` to every current member; full members are skipped silently
        (counted as dropped), never an error. The message is validated once.

        Members of one process (process-local channels sharing a prefix ``a!``) share
        their prefix's queue, and one ``send_group`` reaching several of them is queued
        and capped as ONE message on that prefix, fanned out when received (as
        channels_redis does): a room of 500 on one server costs one slot, not 500, and
        a full prefix skips all of its members together. A member whose messages expire
        unread has a dead reader and leaves every group (DESIGN.md section 3)."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Delete every message and group of this layer (its prefix, on a shared backend)."""

    @abc.abstractmethod
    async def stats(self, channel: str | None = None) -> dict[str, Any]:
        """Figures named as ASGI 1's statistics extension.

        Without ``channel``: ``messages_count`` (sent), ``messages_received``,
        ``messages_expired``, ``messages_dropped`` (skipped by ``send_group``),
        ``channel_full_count``, ``messages_pending``, ``messages_max_age``, ``channels``
        (queue key -> ``{"messages_pending", "messages_max_age", "capacity"}`` for every
        non-empty queue) and ``groups`` (group -> member count). With ``channel``:
        ``messages_pending``, ``messages_max_age`` and ``capacity`` of that channel's
        queue. Counters of a shared backend count this process's operations.
        """

    # -- Go-style ergonomics, built on the operations above -----------------------------

    async def send_wait(
        self,
        channel: str,
        message: Message,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - expiry answers ChannelFull, as send does
    ) -> None:
        """Send, waiting while the channel is full (Go's send on a full buffered channel).

        Waits up to ``timeout`` seconds (``None``: for ever); still full then, raises
        ``ChannelFull``. Cancellation: nothing was sent.
        """
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        attempt = 0
        while True:
            try:
                await self.send(channel, message)
                return
            except ChannelFull:
                if trio.current_time() >= deadline:
                    raise
                await self._wait_for_room(channel, deadline, attempt)
                attempt += 1

    async def _wait_for_room(self, channel: str, deadline: float, attempt: int) -> None:
        """Return when ``channel`` may have room, or at ``deadline``.

        The default polls with exponential backoff (1 ms doubling to 50 ms): correct on
        any backend. Layers that are told when room appears (memory) override it.
        """
        delay = min(0.05, 0.001 * 2**attempt)
        await trio.sleep_until(min(deadline, trio.current_time() + delay))

    def listen(self, *channels: str) -> Listener:
        """``async for channel, message in layer.listen("a", "b")``: receive for ever.

        The loop ends only by ``break``, cancellation, or ``LayerClosed``.
        """
        return Listener(self, channels)


class Listener:
    """Async iterator over ``receive(*channels)``; a class, not an async generator, so
    that breaking out of the loop needs no finalization (Trio warns about those)."""

    __slots__ = ("_channels", "_layer")

    def __init__(self, layer: ChannelLayer, channels: tuple[str, ...]) -> None:
        if not channels:
            raise ValueError("listen() needs at least one channel")
        self._layer = layer
        self._channels = channels

    def __aiter__(self) -> AsyncIterator[tuple[str, Message]]:
        return self

    async def __anext__(self) -> tuple[str, Message]:
        return await self._layer.receive(*self._channels)
