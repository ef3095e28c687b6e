"""Blocking access to a layer, for scripts, cron jobs and worker threads.

Two situations, one API:

* **A thread of a running Trio program** (a worker thread running a sync consumer): if
  that program has ``open_layer(url)`` open, :func:`connect` with the same URL reaches
  *that* instance through ``trio.from_thread``; so does :func:`bind` with the layer
  object itself. Nothing is copied: a message sent here is received there.
* **A plain script or cron job**: :func:`connect` opens the layer on a private Trio loop
  in a background thread for the duration of the ``with`` block. (That thread runs no
  user code; it exists because the caller is synchronous.) A ``memory://`` layer opened
  this way lives only as long as the block and is visible only to this process: use
  ``redis://`` to reach other processes.

Every blocking call takes its timeout as an explicit argument where it may wait.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import trio

from .errors import LayerClosed, UsageError
from .layers import find_open_layer, open_layer
from .layers.base import ChannelLayer
from .messages import Message

__all__ = ["DEFAULT_LAYER_URL", "SyncLayer", "bind", "connect", "default_url"]

T = TypeVar("T")

DEFAULT_LAYER_URL = "memory://"


def default_url() -> str:
    """``$CSP_BUS_LAYER`` when set, else ``memory://``."""
    return os.environ.get("CSP_BUS_LAYER") or DEFAULT_LAYER_URL


def _in_trio_thread(token: trio.lowlevel.TrioToken) -> bool:
    try:
        return trio.lowlevel.current_trio_token() is token
    except RuntimeError:
        return False


class SyncLayer:
    """The layer's operations as blocking calls. Thread-safe: many threads may share one."""

    def __init__(self, layer: ChannelLayer, token: trio.lowlevel.TrioToken) -> None:
        self.layer = layer
        self._token = token

    def _call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await function(*args)`` on the layer's Trio thread and return its result.

        Every blocking method goes through here, so a subclass may override it to carry
        the calls another way (the worker hands them to the task already waiting for
        its consumer thread, saving a wake-up of the Trio loop)."""
        if _in_trio_thread(self._token):
            raise UsageError(
                "csp_bus.sync blocks, so it cannot run on the Trio thread that owns the "
                "layer: await the layer's own methods there"
            )
        try:
            return trio.from_thread.run(function, *args, trio_token=self._token)
        except trio.RunFinishedError as exc:
            raise LayerClosed("the Trio program that owns this layer has finished") from exc

    def send(self, channel: str, message: Message) -> None:
        """Send; raises ``ChannelFull`` at capacity (see :meth:`send_wait`)."""
        self._call(self.layer.send, channel, message)

    def send_wait(self, channel: str, message: Message, timeout: float | None = None) -> None:
        """Send, waiting up to ``timeout`` seconds for room; then ``ChannelFull``."""

        async def op() -> None:
            await self.layer.send_wait(channel, message, timeout=timeout)

        self._call(op)

    def send_wait_posted(
        self, channel: str, message: Message, timeout: float | None = None
    ) -> None:
        """:meth:`send_wait` for the *last* message a consumer sends.

        In a worker's consumer thread the call does not wait for its outcome: the
        worker performs it in order with the consumer's other layer calls and takes no
        new message on that thread until it is done (so a full channel still holds the
        worker back); a failure (``ChannelFull`` after ``timeout``) is raised by the
        consumer's next layer call, or, when the consumer has returned, counted and
        logged as the consumer's failure. Anywhere else it is :meth:`send_wait`.
        Sending many messages this way would queue them all: use :meth:`send_wait`
        for every message but the last.
        """
        self.send_wait(channel, message, timeout)

    def receive(self, *channels: str, timeout: float | None = None) -> tuple[str, Message] | None:
        """Wait up to ``timeout`` seconds (``None``: for ever); ``None`` when it expires."""

        async def op() -> tuple[str, Message] | None:
            if timeout is None:
                return await self.layer.receive(*channels)
            with trio.move_on_after(timeout):
                return await self.layer.receive(*channels)
            return None

        return self._call(op)

    def receive_nowait(self, *channels: str) -> tuple[str, Message] | None:
        return self._call(self.layer.receive_nowait, *channels)

    def new_channel(self, pattern: str) -> str:
        return self._call(self.layer.new_channel, pattern)

    def group_add(self, group: str, channel: str) -> None:
        self._call(self.layer.group_add, group, channel)

    def group_discard(self, group: str, channel: str) -> None:
        self._call(self.layer.group_discard, group, channel)

    def send_group(self, group: str, message: Message) -> None:
        self._call(self.layer.send_group, group, message)

    def flush(self) -> None:
        self._call(self.layer.flush)

    def stats(self, channel: str | None = None) -> dict[str, Any]:
        return self._call(self.layer.stats, channel)


def bind(layer: ChannelLayer) -> SyncLayer:
    """A blocking view of ``layer`` for threads of the current Trio run.

    Call it on the Trio thread (it records the run's token); use the result from any
    thread that run started (``trio.to_thread.run_sync``) or any other thread.
    """
    return SyncLayer(layer, trio.lowlevel.current_trio_token())


class _PrivateLoop:
    """A Trio run in a background thread that keeps one layer open until stopped."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._layer: ChannelLayer | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="csp-bus-sync", daemon=True)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to the thread that called connect()
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        async with open_layer(self._url) as layer:
            self._layer = layer
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> SyncLayer:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self._layer is not None and self._token is not None
        return SyncLayer(self._layer, self._token)

    def __exit__(self, *exc_info: object) -> None:
        assert self._stop is not None and self._token is not None
        with suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()


@contextmanager
def connect(url: str | None = None) -> Iterator[SyncLayer]:
    """``with csp_bus.sync.connect("redis://localhost:6379/0") as bus: bus.send(...)``.

    ``url`` defaults to :func:`default_url`. Raises ``InvalidLayerURL`` for a bad URL and
    whatever the layer raises when it cannot open (``LayerUnavailable``).
    """
    url = url or default_url()
    found = find_open_layer(url)
    if found is not None and not _in_trio_thread(found[1]):
        yield SyncLayer(*found)
        return
    with _PrivateLoop(url) as layer:
        yield layer
