"""Embedded mode: run a router's consumers inside your own Trio program.

One process, one layer instance, no extra worker process: the embedded default of
DESIGN.md section 1. The same call serves ``csp-bus serve --app`` and microservices that
embed the bus::

    async def main():
        async with csp_bus.open_layer("memory://") as layer, trio.open_nursery() as nursery:
            worker = await nursery.start(run_workers, layer, "myapp.routing:routes")
            ...                          # your server, producers, timers
            worker.stop()                # graceful: running consumers finish

Sync consumers run in worker threads and reach *this* layer instance through
``Channel``/``Group`` (and ``csp_bus.sync.connect(url)`` with the layer's URL).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import trio

from .layers.base import ChannelLayer
from .sessions import SessionStore
from .worker import DEFAULT_GRACE, DEFAULT_RETRIES, DEFAULT_THREADS, Worker

__all__ = ["run_workers"]


async def run_workers(
    layer: ChannelLayer,
    router: Any,
    *,
    threads: int = DEFAULT_THREADS,
    only_channels: Iterable[str] = (),
    exclude_channels: Iterable[str] = (),
    message_retries: int = DEFAULT_RETRIES,
    grace_period: float = DEFAULT_GRACE,
    sessions: SessionStore | None = None,
    task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``router``'s consumers on ``layer`` until stopped or cancelled.

    Arguments:
      layer: an open layer of this Trio run (``async with open_layer(url) as layer``).
      router: a :class:`~csp_bus.routing.Router`, a route list, or an import path
        (``"myapp.routing"``, ``"myapp.routing:routes"``).
      threads: consumers running at once; each sync consumer takes a thread.
      only_channels / exclude_channels: ``fnmatch`` globs over the routed channels.
      message_retries: ``ConsumeLater`` requeues before a message is dropped.
      grace_period: seconds running consumers get after ``worker.stop()``.
      sessions: the session store for ``enforce_ordering`` (default: the layer's,
        see :func:`csp_bus.sessions.session_store_for`).

    Readiness: ``worker = await nursery.start(run_workers, layer, router)`` returns once
    the worker receives, with the :class:`~csp_bus.worker.Worker` (``worker.stop()``
    for a graceful stop, ``worker.stats`` for counters). Cancelling the surrounding scope
    stops at once (threads still running are abandoned). Invalid routes raise
    :class:`~csp_bus.routing.RoutingError` before ``started``.
    """
    worker = Worker(
        layer,
        router,
        threads=threads,
        only_channels=only_channels,
        exclude_channels=exclude_channels,
        message_retries=message_retries,
        grace_period=grace_period,
        sessions=sessions,
    )
    await worker.run(task_status=task_status)
