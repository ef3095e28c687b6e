"""The worker: receive -> route -> run the consumer in a bounded pool of threads.

``csp-bus worker APP`` (or :class:`Worker` in your own Trio program, or
:func:`csp_bus.embedded.run_workers`) receives on the union of the channels its routes
name and hands each message to its consumer (DESIGN.md section 6):

* **Bounded.** The worker runs ``threads`` *lanes* and a pool of ``threads`` threads: a
  lane receives one message, has its consumer run, and only then receives the next, so
  the worker holds at most ``threads`` messages and each one it holds has a thread free
  to start it. With every lane busy nobody receives, and the messages wait on the layer
  (where capacity and expiry apply) for this or another worker. A sync consumer runs in
  whichever pool thread is free first (see :class:`_Threads` for why not
  ``trio.to_thread.run_sync``); an ``async def`` consumer runs on the worker's Trio
  loop and occupies its lane too.
* **Contained.** A consumer's exception is logged with the channel, the route and the
  traceback (at most 10 per route per minute, the rest summarised); the worker carries
  on. A message no route matches is logged (once per
  channel, then at DEBUG) and dropped.
* **ConsumeLater.** A consumer raising :class:`~csp_bus.consumers.ConsumeLater` gets its
  message sent back to the same channel after a backoff (1 ms doubling to 100 ms) with
  ``__retries__`` counted in the message; after ``message_retries`` tries it is logged
  and dropped. At most ``4 * threads`` requeues wait at once; past that the worker stops
  receiving until one is sent.
* **Graceful.** :meth:`Worker.stop` (the CLI calls it on SIGTERM/SIGINT) stops
  receiving, sends pending requeues at once, and waits up to ``grace_period`` seconds
  for running consumers; consumers still running then are abandoned (a thread cannot be
  interrupted) and counted in the log. A second ``stop()`` stops without waiting.
"""

from __future__ import annotations

import argparse
import contextvars
import fnmatch
import inspect
import logging
import os
import queue
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import outcome
import trio

from .consumers import BusContext, ConsumeLater, Message, _context
from .errors import BusError, ChannelFull, LayerClosed, LayerError, UsageError
from .layers.base import ChannelLayer
from .routing import Match, Router, RoutingError, load_routes
from .sessions import SessionStore, session_store_for
from .sync import SyncLayer

__all__ = [
    "DEFAULT_THREADS",
    "Worker",
    "WorkerStats",
    "add_worker_arguments",
    "load_app",
    "register",
    "select_channels",
]

logger = logging.getLogger("csp_bus.worker")

T = TypeVar("T")

#: Eight threads: more consumers in flight per wake-up of the Trio thread means fewer GIL
#: hand-offs per message under load (bench/http.py, sync consumer: ~176 us of server CPU
#: per request with 4 threads, ~155 with 8, measured on the 2-core development VM); a
#: slow consumer still blocks only its own thread.
DEFAULT_THREADS = 8
DEFAULT_RETRIES = 10
DEFAULT_GRACE = 30.0
_BACKOFF_FIRST = 0.001
_BACKOFF_MAX = 0.1
_RETRIES_KEY = "__retries__"
_FAILURE_LOGS = 10
_FAILURE_WINDOW = 60.0
_OUTAGE_FIRST = 0.05
_OUTAGE_MAX = 2.0


def select_channels(
    channels: Iterable[str], only: Iterable[str] = (), exclude: Iterable[str] = ()
) -> tuple[str, ...]:
    """``channels`` kept by the ``only`` globs (all if none) minus the ``exclude`` globs."""
    only, exclude = tuple(only), tuple(exclude)
    return tuple(
        sorted(
            name
            for name in channels
            if (not only or any(fnmatch.fnmatchcase(name, glob) for glob in only))
            and not any(fnmatch.fnmatchcase(name, glob) for glob in exclude)
        )
    )


@dataclass
class WorkerStats:
    """Counters of one worker run (read them in tests and logs)."""

    received: int = 0
    handled: int = 0
    failed: int = 0
    requeued: int = 0
    dropped: int = 0
    unmatched: int = 0
    running: int = 0
    abandoned: int = 0


class _Threads:
    """The worker's ``size`` threads that run sync consumers, one job at a time each.

    Why not ``trio.to_thread.run_sync``: a to_thread round trip costs about 100 us on
    the 2-vCPU test machine, and what dominates a sync consumer's cost is the number of
    times work crosses between the Trio thread and a worker thread (on a loaded core each
    crossing waits for the GIL). This pool keeps that number low:

    * jobs go in through one ``SimpleQueue`` that all the threads take from. A thread
      that finishes a consumer takes the next queued job at once, without sleeping: with
      the GIL only one consumer runs Python at a time, so under load jobs queue up while
      one thread runs, and the thread that finished (already awake, often holding the
      GIL) runs the next one instead of an idle thread being woken for it (bench/worker.py,
      8 threads, 64 in flight: 130 -> 40 us of CPU per message). The worker never holds
      more jobs than threads, so each queued job has a free thread: none waits behind a
      busy one;
    * everything the consumer asks of the Trio thread (its layer calls, then its
      result) goes into the job's *outbox*; the first item posted while the lane task
      is waiting asks for a wake-up, later ones ride along. The wake-ups of all jobs
      are coalesced (:class:`_Waker`): one ``run_sync_soon`` wakes every lane task with
      news, so a thread that runs several queued jobs while the Trio thread is busy
      does not make a ``run_sync_soon`` per job (each writes to Trio's wake-up socket,
      a system call that releases the GIL to the Trio thread and waits to get it back);
    * ``send`` and ``send_group`` (which never wait for a receiver), and
      ``send_wait_posted`` (a consumer's last message), do not wait for their
      outcome: the consumer carries on while the lane task performs them, in order.
      So the usual "reply, then return" consumer costs one crossing out, not three
      (send out, its outcome back, the result out). A failed posted send
      (``ChannelFull``...) is raised by the consumer's next layer call, or, when the
      consumer has returned meanwhile, counted as the consumer's failure (logged).
    * other calls (``receive``, ``group_add``, ``send_wait``...) block the consumer
      until the lane task answers through the thread's reply queue.

    The lane task that submitted a job runs all of these itself, instead of a new
    system task per call as ``trio.from_thread.run`` with a token does.

    The threads only ever run user code (the consumers); they start on first use and
    are told to end when the worker stops. A consumer still running when the grace
    period ends is *abandoned*: its lane task is cancelled, the thread finishes on its
    own (a daemon thread), its result is ignored, and its further layer calls go through
    ``trio.from_thread`` like any other thread's (``LayerClosed`` once the program ends).
    """

    __slots__ = ("_inbox", "_size", "_threads", "_waker")

    def __init__(self, token: trio.lowlevel.TrioToken, size: int) -> None:
        self._waker = _Waker(token)
        self._size = size
        self._inbox: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def _loop(self) -> None:
        inbox = self._inbox
        # One blocking call at a time per consumer thread: one reply queue serves them.
        _lane_local.replies = queue.SimpleQueue()
        while (job := inbox.get()) is not None:
            _lane_local.job = job
            try:
                result = outcome.capture(job.invoke)
            finally:
                _lane_local.job = None
            if not job.post(_Done(result)) and job.finished:
                return  # the Trio run is over

    async def run(
        self, consumer: Callable[..., Any], message: Message, kwargs: dict[str, str]
    ) -> None:
        """Run ``consumer(message, **kwargs)`` in a pool thread; return or raise as it
        does. Cancellation abandons the consumer (see the class docstring)."""
        threads = self._threads
        if len(threads) < self._size:
            # Lazily, one more per job until all are started: at most ``size`` jobs are
            # submitted at once, so every submitted job finds a thread.
            thread = threading.Thread(
                target=self._loop, name=f"csp-bus-worker-{len(threads)}", daemon=True
            )
            thread.start()
            threads.append(thread)
        job = _Job(consumer, message, kwargs, trio.lowlevel.current_task(), self._waker)
        self._inbox.put(job)

        def abort(_: Any) -> trio.lowlevel.Abort:
            job.abandon()
            return trio.lowlevel.Abort.SUCCEEDED

        failed: outcome.Error | None = None  # a posted send that failed, not yet raised
        lock = job.lock
        try:
            while True:
                with lock:
                    items = job.outbox
                    if items:
                        job.outbox = []
                    else:
                        job.waiting = True
                if not items:
                    await trio.lowlevel.wait_task_rescheduled(abort)
                    continue
                for item in items:
                    if isinstance(item, _Done):
                        if failed is not None and isinstance(item.result, outcome.Value):
                            failed.unwrap()
                        item.result.unwrap()
                        return
                    call = item
                    if failed is not None:
                        # The consumer has not seen its failed send yet: its next call
                        # raises that error instead of running; later posted sends are
                        # dropped with it.
                        if call.reply is not None:
                            call.reply.put(failed)
                            failed = None
                        continue
                    result = await outcome.acapture(call.function, *call.args)
                    if isinstance(result, outcome.Error) and isinstance(
                        result.error, trio.Cancelled
                    ):
                        if call.reply is not None:
                            call.reply.put(
                                outcome.Error(LayerClosed("the worker stopped this consumer"))
                            )
                        result.unwrap()
                    if call.reply is not None:
                        call.reply.put(result)
                    elif isinstance(result, outcome.Error):
                        failed = result
        except BaseException:
            job.abandon()
            raise

    def close(self) -> None:
        for _ in self._threads:
            self._inbox.put(None)


_lane_local = threading.local()


class _Waker:
    """Wakes the lane tasks whose jobs have news, with one ``run_sync_soon`` for all the
    jobs that post before the Trio thread gets to run it (see :class:`_Threads`)."""

    __slots__ = ("_jobs", "_lock", "_pending", "_token", "finished")

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._lock = threading.Lock()
        self._jobs: list[_Job] = []  # under _lock
        self._pending = False  # under _lock: a run_sync_soon(self._wake_all) is queued
        self.finished = False  # the Trio run is over

    def wake(self, job: _Job) -> bool:
        """Runs in any thread: reschedule ``job``'s task soon. False when the Trio run
        is over."""
        with self._lock:
            if self.finished:
                return False
            self._jobs.append(job)
            if self._pending:
                return True
            self._pending = True
        try:
            self._token.run_sync_soon(self._wake_all)
        except trio.RunFinishedError:
            with self._lock:
                self.finished = True
                self._pending = False
                self._jobs.clear()
            return False
        return True

    def _wake_all(self) -> None:
        """Runs on the Trio thread."""
        with self._lock:
            jobs, self._jobs = self._jobs, []
            self._pending = False
        for job in jobs:
            if not job.abandoned:
                trio.lowlevel.reschedule(job.task)


class _Done:
    __slots__ = ("result",)

    def __init__(self, result: outcome.Outcome[Any]) -> None:
        self.result = result


class _Call:
    __slots__ = ("args", "function", "reply")

    def __init__(
        self,
        function: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        reply: queue.SimpleQueue[outcome.Outcome[Any]] | None,
    ) -> None:
        self.function = function
        self.args = args
        self.reply = reply  # None: a posted send, nobody waits for its outcome


class _Job:
    __slots__ = (
        "abandoned",
        "consumer",
        "context",
        "finished",
        "kwargs",
        "lock",
        "message",
        "outbox",
        "task",
        "waiting",
        "waker",
    )

    def __init__(
        self,
        consumer: Callable[..., Any],
        message: Message,
        kwargs: dict[str, str],
        task: trio.lowlevel.Task,
        waker: _Waker,
    ) -> None:
        self.consumer = consumer
        self.message = message
        self.kwargs = kwargs
        self.task = task
        self.waker = waker
        self.context = contextvars.copy_context()
        self.abandoned = False
        self.finished = False  # the Trio run is over
        # Items for the lane task (_Call, then one _Done), under ``lock``; ``waiting``:
        # the lane task is parked and the next post must wake it (once).
        self.lock = threading.Lock()
        self.outbox: list[_Call | _Done] = []
        self.waiting = False

    def invoke(self) -> Any:
        """Runs in the lane thread, in the lane task's context (the worker's layer)."""
        result = self.context.run(self.consumer, self.message, **self.kwargs)
        if inspect.iscoroutine(result):
            # An async callable the worker could not recognise (an object with an async
            # __call__...): never awaited, it would do nothing, silently. Say so.
            result.close()
            raise UsageError(
                f"consumer {self.consumer!r} returned a coroutine: make it an `async def` "
                "function so the worker runs it on its Trio loop"
            )
        return result

    def post(self, item: _Call | _Done) -> bool:
        """Runs in the lane thread: queue ``item`` for the lane task, waking it if it
        waits. False when nobody will take it (abandoned, or the Trio run is over)."""
        with self.lock:
            if self.abandoned:
                return False
            self.outbox.append(item)
            if not self.waiting:
                return True
            self.waiting = False
        if not self.waker.wake(self):
            self.finished = True
            return False
        return True

    def abandon(self) -> None:
        """Runs on the Trio thread: the lane task stops waiting for this job. Calls the
        consumer is blocked on get ``LayerClosed``; later ones go through from_thread."""
        with self.lock:
            self.abandoned = True
            items, self.outbox = self.outbox, []
        for item in items:
            if type(item) is _Call and item.reply is not None:
                item.reply.put(outcome.Error(LayerClosed("the worker stopped this consumer")))

    def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Runs in the lane thread: have the lane task await ``function(*args)``."""
        replies: queue.SimpleQueue[outcome.Outcome[Any]] = _lane_local.replies
        if not self.post(_Call(function, args, replies)):
            if self.finished:
                raise LayerClosed("the Trio program that owns this layer has finished")
            raise LayerClosed("the worker stopped this consumer")
        return replies.get().unwrap()  # type: ignore[no-any-return]

    def call_soon(self, function: Callable[..., Awaitable[Any]], *args: Any) -> bool:
        """Runs in the lane thread: have the lane task await ``function(*args)`` without
        waiting for it. False when the lane task will not (use another way)."""
        return self.post(_Call(function, args, None))


class _LaneSync(SyncLayer):
    """The blocking facade a worker gives its consumers: from a lane thread running a
    consumer, layer calls go through its lane's task (see :class:`_Threads`); from
    any other thread, through ``trio.from_thread`` as usual."""

    def _call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        job: _Job | None = getattr(_lane_local, "job", None)
        if job is None or job.abandoned:
            return super()._call(function, *args)
        return job.call(function, *args)

    def send(self, channel: str, message: dict[str, Any]) -> None:
        job: _Job | None = getattr(_lane_local, "job", None)
        if job is None or not job.call_soon(self.layer.send, channel, message):
            super().send(channel, message)

    def send_group(self, group: str, message: dict[str, Any]) -> None:
        job: _Job | None = getattr(_lane_local, "job", None)
        if job is None or not job.call_soon(self.layer.send_group, group, message):
            super().send_group(group, message)

    def send_wait_posted(
        self, channel: str, message: dict[str, Any], timeout: float | None = None
    ) -> None:
        job: _Job | None = getattr(_lane_local, "job", None)
        if job is None or not job.call_soon(self._send_wait, channel, message, timeout):
            super().send_wait(channel, message, timeout)

    async def _send_wait(
        self,
        channel: str,
        message: dict[str, Any],
        timeout: float | None,  # noqa: ASYNC109 - send_wait's own timeout, passed on
    ) -> None:
        await self.layer.send_wait(channel, message, timeout=timeout)


class Worker:
    """Runs ``routes``' consumers for messages on ``layer``.

    ``routes`` is anything :class:`~csp_bus.routing.Router` accepts (a route list, a
    Router, an import path). Raises :class:`~csp_bus.routing.RoutingError` at once for
    invalid routes and :class:`~csp_bus.errors.UsageError` when the channel filters
    leave nothing to listen to.
    """

    def __init__(
        self,
        layer: ChannelLayer,
        routes: Any,
        *,
        threads: int = DEFAULT_THREADS,
        only_channels: Iterable[str] = (),
        exclude_channels: Iterable[str] = (),
        message_retries: int = DEFAULT_RETRIES,
        grace_period: float = DEFAULT_GRACE,
        sessions: SessionStore | None = None,
    ) -> None:
        if threads < 1:
            raise UsageError(f"threads must be at least 1 (got {threads})")
        if message_retries < 0:
            raise UsageError(f"message_retries must not be negative (got {message_retries})")
        if grace_period < 0:
            raise UsageError(f"grace_period must not be negative (got {grace_period})")
        self.layer = layer
        self.router = Router.of(routes)
        self.channels = select_channels(self.router.channels, only_channels, exclude_channels)
        if not self.channels:
            raise UsageError(
                "no channel left to listen to: the routes name "
                f"{sorted(self.router.channels) or 'no channels'}, and --only-channels/"
                "--exclude-channels filtered them all out"
            )
        self.threads = threads
        self.message_retries = message_retries
        self.grace_period = grace_period
        self.sessions = sessions
        self.stats = WorkerStats()
        self._unmatched: set[str] = set()
        self._is_async: dict[Any, bool] = {}
        # route label -> [window end, tracebacks logged, failures not logged]
        self._failure_windows: dict[str, list[Any]] = {}
        self._stop_requests = 0
        self._stopping: trio.Event | None = None
        self._receive_scopes: set[trio.CancelScope] = set()
        self._handlers_scope: trio.CancelScope | None = None

    # -- control --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop gracefully (call on the Trio thread; a second call stops at once)."""
        self._stop_requests += 1
        if self._stopping is None:
            return  # not running yet: run() will return at once
        if not self._stopping.is_set():
            self._stopping.set()
            for scope in self._receive_scopes:
                scope.cancel()
            if self.stats.running:
                logger.info(
                    "stopping: waiting up to %s s for %d running consumer(s)",
                    self.grace_period,
                    self.stats.running,
                )
        if self._handlers_scope is not None:
            grace = 0.0 if self._stop_requests > 1 else self.grace_period
            deadline = trio.current_time() + grace
            self._handlers_scope.deadline = min(self._handlers_scope.deadline, deadline)

    # -- the run ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED) -> None:
        """Receive and dispatch until :meth:`stop` (returns after the grace period at
        most) or cancellation (returns at once, abandoning running threads).

        ``task_status.started(self)`` reports readiness: ``worker = await
        nursery.start(Worker(layer, routes).run)``.
        """
        self._stopping = trio.Event()
        if self._stop_requests:
            self._stopping.set()
        requeues = trio.CapacityLimiter(4 * self.threads)
        sessions = self.sessions or session_store_for(self.layer)
        token = trio.lowlevel.current_trio_token()
        context_token = _context.set(BusContext(_LaneSync(self.layer, token), sessions))
        threads = _Threads(token, self.threads)
        try:
            async with trio.open_nursery() as nursery:
                self._handlers_scope = nursery.cancel_scope
                for index in range(self.threads):
                    nursery.start_soon(self._lane, index, threads, nursery, requeues)
                logger.info(
                    "worker listening on %s with %d thread(s)",
                    ", ".join(self.channels),
                    self.threads,
                )
                task_status.started(self)
        finally:
            _context.reset(context_token)
            self._handlers_scope = None
            threads.close()
        if self.stats.abandoned:
            logger.warning(
                "stopped; %d consumer(s) were still running after the grace period and "
                "were abandoned",
                self.stats.abandoned,
            )
        else:
            logger.info("stopped")

    async def _lane(
        self,
        index: int,
        threads: _Threads,
        nursery: trio.Nursery,
        requeues: trio.CapacityLimiter,
    ) -> None:
        """One of ``threads`` lanes: receive a message only when this lane is free, run
        its consumer (in a pool thread when sync), repeat."""
        assert self._stopping is not None
        stopping = self._stopping
        channels = self.channels
        receive = self.layer.receive
        failures = 0
        # One cancel scope serves every receive of the lane (a scope per message cost ~6%
        # of an async echo round trip): stop() sets ``stopping`` and then cancels the
        # scope only while it is registered, that is while the lane receives, never
        # while it runs a consumer. A cancelled receive took nothing.
        taken: tuple[str, dict[str, Any]] | None = None
        with trio.CancelScope() as scope:
            while not stopping.is_set():
                self._receive_scopes.add(scope)
                try:
                    taken = await receive(*channels)
                except LayerClosed:
                    logger.info("the layer was closed: lane %d ends", index)
                    return
                except LayerError as exc:
                    # The backend is down (Redis restarting...): wait and try again,
                    # never die of it. Logged once per outage, per lane.
                    if not failures:
                        logger.warning("receive failed (%s); retrying with backoff", exc)
                    await trio.sleep(min(_OUTAGE_MAX, _OUTAGE_FIRST * 2**failures))
                    failures += 1
                    continue
                finally:
                    self._receive_scopes.discard(scope)
                if failures:
                    logger.info("receiving again after %d failed tries", failures)
                    failures = 0
                self.stats.received += 1
                if scope.cancel_called:
                    break  # stop() came as the receive returned: handled below
                await self._handle(threads, nursery, requeues, *taken)
                taken = None
        if taken is not None:
            await self._handle(threads, nursery, requeues, *taken)

    def _consumer_is_async(self, consumer: Any) -> bool:
        found = self._is_async.get(consumer)
        if found is None:
            found = self._is_async[consumer] = inspect.iscoroutinefunction(consumer)
        return found

    async def _handle(
        self,
        threads: _Threads,
        nursery: trio.Nursery,
        requeues: trio.CapacityLimiter,
        channel: str,
        content: dict[str, Any],
    ) -> None:
        match = self.router.match(channel, content)
        if match is None:
            self._log_unmatched(channel, content)
            return
        self.stats.running += 1
        try:
            message = Message(content, channel)
            if self._consumer_is_async(match.consumer):
                await match.consumer(message, **match.kwargs)
            else:
                await threads.run(match.consumer, message, match.kwargs)
            self.stats.handled += 1
        except ConsumeLater as exc:
            # A requeue waits its backoff in a task of its own, so the lane is free at
            # once; taking a requeue place first bounds how many wait (no unbounded
            # buffer: with every place taken, this lane stops receiving).
            borrower = object()
            await requeues.acquire_on_behalf_of(borrower)
            nursery.start_soon(self._requeue, channel, content, match, exc, requeues, borrower)
        except trio.Cancelled:
            self.stats.abandoned += 1
            raise
        except Exception:
            self.stats.failed += 1
            if self._failure_log_allowed(match.route):
                logger.exception(
                    "consumer failed on channel %r (route %s, reply_channel %r)",
                    channel,
                    match.route,
                    content.get("reply_channel"),
                )
        finally:
            self.stats.running -= 1

    def _failure_log_allowed(self, route: str) -> bool:
        """At most ``_FAILURE_LOGS`` tracebacks per route per ``_FAILURE_WINDOW`` seconds:
        a consumer failing on every message must not flood the logs (the predecessor's
        logs did, channels_redis#181). The rest are counted and summarised."""
        now = trio.current_time()
        window = self._failure_windows.get(route)
        if window is None or now >= window[0]:
            if window is not None and window[2]:
                logger.error(
                    "route %s: %d more consumer failure(s) in the last %g s were not logged",
                    route,
                    window[2],
                    _FAILURE_WINDOW,
                )
            window = self._failure_windows[route] = [now + _FAILURE_WINDOW, 0, 0]
        if window[1] < _FAILURE_LOGS:
            window[1] += 1
            return True
        window[2] += 1
        return False

    async def _requeue(
        self,
        channel: str,
        content: dict[str, Any],
        match: Match,
        reason: ConsumeLater,
        requeues: trio.CapacityLimiter,
        borrower: object,
    ) -> None:
        try:
            await self._requeue_after_backoff(channel, content, match, reason)
        finally:
            requeues.release_on_behalf_of(borrower)

    async def _requeue_after_backoff(
        self, channel: str, content: dict[str, Any], match: Match, reason: ConsumeLater
    ) -> None:
        retries = content.get(_RETRIES_KEY, 0)
        if not isinstance(retries, int):
            retries = 0
        if retries >= self.message_retries:
            self.stats.dropped += 1
            logger.warning(
                "dropping a message on %r after %d ConsumeLater retries (route %s): %s",
                channel,
                retries,
                match.route,
                reason,
            )
            return
        content[_RETRIES_KEY] = retries + 1
        assert self._stopping is not None
        delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2**retries)
        with trio.move_on_after(delay):
            await self._stopping.wait()  # stopping: send it back now, not later
        try:
            await self.layer.send_wait(channel, content, timeout=max(1.0, self.grace_period))
        except ChannelFull:
            self.stats.dropped += 1
            logger.warning("dropping a ConsumeLater message: %r stayed full", channel)
            return
        except BusError as exc:  # the backend failed: the message is lost, say so
            self.stats.dropped += 1
            logger.warning("dropping a ConsumeLater message for %r: %s", channel, exc)
            return
        self.stats.requeued += 1

    def _log_unmatched(self, channel: str, content: dict[str, Any]) -> None:
        self.stats.unmatched += 1
        if channel in self._unmatched:
            logger.debug("no route matches a message on %r; dropped", channel)
            return
        self._unmatched.add(channel)
        logger.warning(
            "no route matches a message on %r (keys %s; routes on this channel: %s); "
            "dropping it. Further unmatched messages on %r are logged at DEBUG",
            channel,
            sorted(content),
            "; ".join(self.router.routes_for(channel)) or "none",
            channel,
        )


# -- loading an app ----------------------------------------------------------------------------


def load_app(spec: str) -> Router:
    """``"module:attribute"`` or a module with ``router``/``routes``/``channel_routing``.

    The current directory is importable (as with ``python -m``). Raises
    :class:`~csp_bus.routing.RoutingError` with the reason.
    """
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        routes = load_routes(spec)
    except Exception as exc:  # the user's module may raise anything while importing
        raise RoutingError(
            f"cannot load APP {spec!r}: {type(exc).__name__}: {exc} (--debug shows the traceback)"
        ) from exc
    return Router.of(routes)


# -- the command line ----------------------------------------------------------------------------


def configure_logging(debug: bool) -> None:
    """Log to stderr at INFO (DEBUG with --debug) unless the program set logging up."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=logging.DEBUG if debug else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )


async def run_until_signal(
    start: Callable[..., Any], stop: Callable[[], None], *, name: str
) -> None:
    """Run ``start`` (a ``run(task_status=...)`` function) until it returns; on the first
    SIGTERM/SIGINT call ``stop()``, on the second call it again (stop at once)."""
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

            async def watch() -> None:
                async for signum in signals:
                    logger.info("%s: got %s, stopping", name, signal.Signals(signum).name)
                    stop()

            nursery.start_soon(watch)
            await start()
            nursery.cancel_scope.cancel()


def _cmd_worker(args: argparse.Namespace) -> int:
    from .cli import CommandError
    from .layers import open_layer

    configure_logging(args.debug)
    if args.threads < 1:
        raise CommandError("--threads must be at least 1", 2)
    router = load_app(args.app)
    if args.layer.split("://", 1)[0].lower() == "memory":
        logger.warning(
            "--layer %s lives inside this process: only messages sent by the APP itself "
            "reach this worker; use redis:// to receive from other processes",
            args.layer,
        )

    async def main() -> None:
        async with open_layer(args.layer) as layer:
            worker = Worker(
                layer,
                router,
                threads=args.threads,
                only_channels=args.only_channels,
                exclude_channels=args.exclude_channels,
                message_retries=args.message_retries,
                grace_period=args.grace_period,
            )
            await run_until_signal(worker.run, worker.stop, name="worker")

    trio.run(main)
    return 0


def add_worker_arguments(
    parser: argparse.ArgumentParser,
    *,
    threads_default: int | None = DEFAULT_THREADS,
    threads_help: str | None = None,
) -> None:
    """Add the options of a worker command to ``parser``.

    ``--threads``, ``--only-channels``, ``--exclude-channels``, ``--message-retries`` and
    ``--grace-period``, with the destinations :class:`Worker` takes
    (``args.threads``, ``args.only_channels``, ...). ``csp-bus worker`` and Django's
    ``manage.py runworker`` both use it, so the two commands have the same options.
    ``threads_default`` and ``threads_help`` let a command take the thread count from
    its own settings (``runworker`` passes ``None`` and falls back to
    ``CSP_BUS["WORKER_THREADS"]``).
    """
    parser.add_argument(
        "--threads",
        type=int,
        default=threads_default,
        metavar="N",
        help=threads_help
        or f"consumers running at once, each sync one in a thread (default {DEFAULT_THREADS})",
    )
    parser.add_argument(
        "--only-channels",
        action="append",
        default=[],
        metavar="GLOB",
        help="listen only to the routed channels matching GLOB (repeatable)",
    )
    parser.add_argument(
        "--exclude-channels",
        action="append",
        default=[],
        metavar="GLOB",
        help="do not listen to the routed channels matching GLOB (repeatable)",
    )
    parser.add_argument(
        "--message-retries",
        type=int,
        default=DEFAULT_RETRIES,
        metavar="N",
        help=f"ConsumeLater requeues before a message is dropped (default {DEFAULT_RETRIES})",
    )
    parser.add_argument(
        "--grace-period",
        type=float,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long running consumers may finish "
        f"(default {DEFAULT_GRACE:g})",
    )


def register(subparsers: Any) -> None:
    """Add ``csp-bus worker`` to the CLI."""
    from .cli import add_common_options

    parser = subparsers.add_parser(
        "worker",
        help="run consumers for the channels an APP routes",
        description="Import APP (module:attribute, or a module with router/routes), receive "
        "on the channels its routes name and run each message's consumer in a pool of "
        "threads. SIGTERM/SIGINT: stop receiving, let running consumers finish within "
        "--grace-period, exit 0 (a second signal stops at once).",
    )
    parser.add_argument("app", metavar="APP", help="e.g. myproject.routing:routes")
    add_worker_arguments(parser)
    add_common_options(parser)
    parser.set_defaults(func=_cmd_worker)
