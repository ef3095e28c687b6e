"""A small Redis client for Trio: RESP through ``hiredis``, automatic pipelining.

Three pieces, each with one job:

* :class:`Connection` -- one socket (TCP, TLS or Unix) plus a ``hiredis.Reader``. Used
  directly by one task at a time for *blocking* commands (``BLMPOP``), which must have a
  connection of their own.
* :class:`Multiplexer` -- shares one :class:`Connection` between every task of the
  program. Commands issued by many tasks in the same moment leave in one write (the first
  task that finds no write in progress sends everything queued so far); one reader task
  matches the replies to their callers in order.
* :class:`RedisNode` -- one Redis server (or the current master behind Sentinel): a
  multiplexer, a bounded pool of blocking connections, and the reconnect policy.

Failure rules. A dropped connection fails every command waiting on it at once with
:class:`~csp_bus.errors.LayerUnavailable`; a server silent for ``timeout`` seconds
fails them with :class:`~csp_bus.errors.LayerTimeout`. Reconnecting is lazy, with
exponential backoff and full jitter (50 ms doubling to 5 s): while a node is in backoff
every command fails *at once* instead of queueing, so callers see the outage and decide.
A command, once written, is never retried (it may have run: at-most-once).

Cancellation. A command that was queued for writing runs to completion (bounded by
``timeout``): the caller cannot tell whether Redis ran it, so it is not interrupted.
Callers check for cancellation before they submit (``checkpoint_if_cancelled``).
"""

from __future__ import annotations

import random
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import hiredis
import outcome
import trio

from ...errors import LayerError, LayerTimeout, LayerUnavailable

__all__ = [
    "ConnectOptions",
    "Connection",
    "Endpoint",
    "Multiplexer",
    "RedisNode",
    "RedisReplyError",
    "SentinelResolver",
    "StaticResolver",
]

_NEED_DATA = object()
_READ_SIZE = 65536

# Reply errors that mean "this server cannot take writes now": the node drops its
# connections, so the next command reconnects (and re-resolves the master via Sentinel).
_UNAVAILABLE_CODES = frozenset({"READONLY", "MASTERDOWN", "LOADING", "TRYAGAIN", "CLUSTERDOWN"})


class RedisReplyError(LayerError):
    """Redis answered a command with an error reply; ``code`` is its first word."""

    def __init__(self, message: str, *, command: str = "") -> None:
        self.code = message.split(" ", 1)[0] if message else "ERR"
        self.reply = message
        self.command = command
        where = f" to {command}" if command else ""
        super().__init__(f"Redis answered{where}: {message}")


def _reply_error(error: hiredis.ReplyError, command: str = "") -> LayerError:
    text = str(error)
    code = text.split(" ", 1)[0]
    if code in _UNAVAILABLE_CODES:
        return LayerUnavailable(f"Redis cannot serve {command or 'the command'} now: {text}")
    if code in {"MOVED", "ASK", "CROSSSLOT"}:
        return RedisReplyError(
            f"{text} (Redis Cluster is not supported: list the servers in the URL for "
            "client-side sharding, redis://a:6379,b:6379/0)",
            command=command,
        )
    if code == "ERR" and "unknown command" in text and command in {"BLMPOP", "LMPOP"}:
        return RedisReplyError(f"{text} (csp-bus needs Redis 7.0 or later)", command=command)
    return RedisReplyError(text, command=command)


def bulk(value: bytes) -> bytes:
    """``value`` as a RESP bulk string, for callers that pack a hot command by hand."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _command_name(args: Sequence[Any]) -> str:
    name = args[0] if args else ""
    return name.decode() if isinstance(name, bytes) else str(name)


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """Where a server listens: ``host``/``port``, or a Unix socket ``path``."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class ConnectOptions:
    """How to open and talk to a server (built once from the URL)."""

    username: str | None = None
    password: str | None = None
    db: int = 0
    tls: ssl.SSLContext | None = None
    connect_timeout: float = 2.0
    #: seconds a non-blocking command may wait for its reply
    timeout: float = 5.0
    #: require ``ROLE`` = master after connecting (Sentinel)
    require_master: bool = False
    client_name: str | None = None


class Connection:
    """One connection to one server. Not safe for concurrent use: one task at a time."""

    def __init__(self, stream: trio.abc.Stream, endpoint: Endpoint, options: ConnectOptions):
        self.stream = stream
        self.endpoint = endpoint
        self.options = options
        self.client_id: int = 0
        self.broken = False
        #: commands written whose reply has not been read yet
        self.outstanding = 0
        self._reader = hiredis.Reader(notEnoughData=_NEED_DATA)

    @classmethod
    async def open(cls, endpoint: Endpoint, options: ConnectOptions) -> Connection:
        """Connect, authenticate, select the database; errors are LayerUnavailable or
        LayerTimeout (chained to the OS error), or RedisReplyError for a refused AUTH."""
        stream: trio.abc.Stream | None = None
        try:
            with trio.fail_after(options.connect_timeout):
                if endpoint.path is not None:
                    stream = await trio.open_unix_socket(endpoint.path)
                else:
                    stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
                if options.tls is not None:
                    stream = trio.SSLStream(stream, options.tls, server_hostname=endpoint.host)
                    await stream.do_handshake()
                connection = cls(stream, endpoint, options)
                await connection._handshake()
                return connection
        except trio.TooSlowError:
            await _force_close(stream)
            raise LayerTimeout(
                f"connecting to Redis at {endpoint} took longer than "
                f"{options.connect_timeout} s (connect_timeout)"
            ) from None
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            await _force_close(stream)
            raise LayerUnavailable(f"cannot connect to Redis at {endpoint}: {exc}") from exc
        except BaseException:
            await _force_close(stream)
            raise

    async def _handshake(self) -> None:
        options = self.options
        commands: list[tuple[Any, ...]] = []
        if options.password is not None:
            if options.username:
                commands.append(("AUTH", options.username, options.password))
            else:
                commands.append(("AUTH", options.password))
        if options.db:
            commands.append(("SELECT", options.db))
        if options.client_name:
            commands.append(("CLIENT", "SETNAME", options.client_name))
        if options.require_master:
            commands.append(("ROLE",))
        commands.append(("CLIENT", "ID"))
        replies = await self.call_many(commands)
        for command, reply in zip(commands, replies, strict=True):
            if isinstance(reply, hiredis.ReplyError):
                name = command[0]
                text = str(reply)
                if name == "AUTH":
                    # never echo the password
                    raise RedisReplyError(text, command="AUTH") from None
                raise _reply_error(reply, " ".join(str(part) for part in command))
            if command[0] == "ROLE" and reply[0] != b"master":
                raise LayerUnavailable(
                    f"Redis at {self.endpoint} is a {reply[0].decode()}, not the master "
                    "(a Sentinel failover is probably in progress)"
                )
        self.client_id = int(replies[-1])

    # -- raw I/O -------------------------------------------------------------------------

    async def write(self, data: bytes | bytearray, commands: int = 1) -> None:
        """Send ``data`` whole; shielded, so a cancelled caller never leaves half a
        command on the wire. Bounded by ``timeout``."""
        self.outstanding += commands
        # One scope: shielded from the caller's cancellation, bounded by its own deadline.
        scope = trio.CancelScope(shield=True, deadline=trio.current_time() + self.options.timeout)
        try:
            with scope:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.broken = True
            raise LayerUnavailable(f"the connection to Redis at {self.endpoint} broke") from exc
        if scope.cancelled_caught:
            self.broken = True
            raise LayerTimeout(f"writing to Redis at {self.endpoint} timed out")

    def next_reply(self) -> Any:
        """A reply already buffered, or ``_NEED_DATA``."""
        return self._reader.gets()

    async def receive_some(self) -> None:
        """Read more bytes into the parser; cancellable (trio loses no bytes)."""
        try:
            data = await self.stream.receive_some(_READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.broken = True
            raise LayerUnavailable(f"the connection to Redis at {self.endpoint} broke") from exc
        if not data:
            self.broken = True
            raise LayerUnavailable(f"Redis at {self.endpoint} closed the connection")
        try:
            self._reader.feed(bytes(data))
        except hiredis.ProtocolError as exc:  # pragma: no cover - a broken server
            self.broken = True
            raise LayerError(f"Redis at {self.endpoint} sent bytes that are not RESP") from exc

    async def read_reply(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """The next reply (error replies are returned as ``hiredis.ReplyError``).

        Cancellable at any point: a partly read reply stays in the parser, so the next
        call continues it. Raises LayerTimeout after ``timeout`` (default: ``options``).
        """
        reply = self._reader.gets()
        if reply is _NEED_DATA:
            limit = self.options.timeout if timeout is None else timeout
            try:
                with trio.fail_after(limit):
                    while reply is _NEED_DATA:
                        await self.receive_some()
                        reply = self._reader.gets()
            except trio.TooSlowError:
                self.broken = True
                raise LayerTimeout(
                    f"Redis at {self.endpoint} did not answer within {limit} s"
                ) from None
        self.outstanding -= 1
        return reply

    async def call(self, *args: Any, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Send one command and return its reply; an error reply raises."""
        await self.write(hiredis.pack_command(args))
        reply = await self.read_reply(timeout)
        if isinstance(reply, hiredis.ReplyError):
            raise _reply_error(reply, _command_name(args))
        return reply

    async def call_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Pipeline ``commands``; replies in order, error replies returned, not raised."""
        data = b"".join(hiredis.pack_command(tuple(command)) for command in commands)
        await self.write(data, len(commands))
        return [await self.read_reply() for _ in commands]

    def abort(self) -> None:
        """Close the socket now, without waiting; a task reading it gets an error."""
        self.broken = True
        stream: Any = self.stream
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        sock = getattr(stream, "socket", None)
        if sock is not None:
            sock.close()

    async def aclose(self) -> None:
        self.broken = True
        await _force_close(self.stream)


async def _force_close(stream: trio.abc.Stream | None) -> None:
    if stream is None:
        return
    with trio.CancelScope(shield=True):
        if isinstance(stream, trio.SSLStream):
            await trio.aclose_forcefully(stream)
        else:
            await stream.aclose()


# ------------------------------------------------------------------------ multiplexer


class _Waiter(outcome.Outcome[Any]):
    """A caller waiting for its replies, and the outcome its task is resumed with: no
    ``outcome.Value`` is allocated per reply (``wait_task_rescheduled`` only unwraps)."""

    __slots__ = ("count", "error", "name", "parked", "replies", "task", "value")
    value: Any
    error: BaseException | None

    def __init__(self, task: trio.lowlevel.Task, count: int, name: Any) -> None:
        self.task = task
        #: replies still expected; 0 = a single command (its reply is the value)
        self.count = count
        self.name = name  # the command's name, for error messages (str or bytes)
        self.replies: list[Any] | None = [] if count else None
        self.error = None
        #: False while the caller itself writes (the reply may come before it waits)
        self.parked = True

    def unwrap(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value

    def send(self, gen: Any) -> Any:  # pragma: no cover - trio only unwraps
        if self.error is not None:
            return gen.throw(self.error)
        return gen.send(self.value)

    async def asend(self, agen: Any) -> Any:  # pragma: no cover - trio only unwraps
        if self.error is not None:
            return await agen.athrow(self.error)
        return await agen.asend(self.value)


def _abort_failed(_: Any) -> trio.lowlevel.Abort:
    # Once written, a command runs to completion: see the module docstring.
    return trio.lowlevel.Abort.FAILED


class Multiplexer:
    """One connection shared by every task; replies matched to callers in order."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._buffer = bytearray()
        self._pending: deque[_Waiter] = deque()
        #: the writer task while it waits for commands (woken by the first one queued)
        self._writer: trio.lowlevel.Task | None = None
        self._writing = False
        #: set when one read woke several callers: their commands (coming in the next
        #: scheduling batch) all go to the writer, none written alone by its caller
        self._gather = False
        self._error: LayerError | None = None
        self._read_scope: trio.CancelScope | None = None
        self._progress = 0.0  # when the last reply arrived (or the first command left)
        self._run_scope = trio.CancelScope()

    @property
    def broken(self) -> bool:
        return self._error is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer and reader tasks: run until the connection breaks or :meth:`close`."""
        task_status.started()
        with self._run_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop)
                await self._read_loop()

    def _abort_writer(self, _: Any) -> trio.lowlevel.Abort:
        self._writer = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _wake_writer(self) -> None:
        writer = self._writer
        if writer is not None:
            self._writer = None
            trio.lowlevel.reschedule(writer)

    async def _write_loop(self) -> None:
        # The writer runs in the scheduling batch after the commands were queued, so all
        # the commands that the tasks of one batch issued leave in one write.
        try:
            while True:
                while not self._buffer or self._writing:
                    self._writer = trio.lowlevel.current_task()
                    await trio.lowlevel.wait_task_rescheduled(self._abort_writer)
                data, self._buffer = self._buffer, bytearray()
                self._gather = False
                self._writing = True
                try:
                    await self.connection.write(data, 0)
                finally:
                    self._writing = False
        except LayerError as exc:
            self._break(exc)

    async def _read_loop(self) -> None:
        connection = self.connection
        timeout = connection.options.timeout
        next_reply = connection.next_reply
        pending = self._pending
        reschedule = trio.lowlevel.reschedule
        reply_error = hiredis.ReplyError
        try:
            while True:
                reply = next_reply()
                if reply is not _NEED_DATA:
                    self._progress = trio.current_time()
                    before = len(pending)
                    while reply is not _NEED_DATA:
                        # inline: the common case, one command per waiter, no error
                        waiter = pending[0]
                        if waiter.count or not waiter.parked or type(reply) is reply_error:
                            self._deliver(waiter, reply)
                        else:
                            pending.popleft()
                            waiter.value = reply
                            reschedule(waiter.task, waiter)
                        reply = next_reply()
                    if before - len(pending) > 1:
                        self._gather = True
                # The read deadline is "timeout after the last progress" while commands
                # wait; it is moved only when it fires, not on every reply (cheaper).
                deadline = self._progress + timeout if pending else float("inf")
                with trio.CancelScope(deadline=deadline) as scope:
                    self._read_scope = scope
                    await connection.receive_some()
                self._read_scope = None
                if self._error is not None:
                    # Broken (close() or the writer) while these bytes were on their way
                    # to us: _break already failed every waiter, the replies are no one's.
                    return
                if (
                    scope.cancelled_caught
                    and pending
                    and trio.current_time() >= self._progress + timeout
                ):
                    raise LayerTimeout(
                        f"Redis at {connection.endpoint} did not answer within {timeout} s"
                    )
        except LayerError as exc:
            self._break(exc)
        finally:
            self._read_scope = None
            if self._error is None:
                self._break(LayerUnavailable(f"the connection to {connection.endpoint} closed"))
            await connection.aclose()

    def _deliver(self, waiter: _Waiter, reply: Any) -> None:
        replies = waiter.replies
        if replies is not None:  # a pipeline: error replies are returned, not raised
            replies.append(reply)
            if len(replies) < waiter.count:
                return
            waiter.value = replies
        elif isinstance(reply, hiredis.ReplyError):
            waiter.error = _reply_error(reply, _command_name((waiter.name,)))
        else:
            waiter.value = reply
        self._pending.popleft()
        if waiter.parked:
            trio.lowlevel.reschedule(waiter.task, waiter)
        else:
            waiter.parked = True  # done: the caller finds it so after its write

    def _break(self, error: LayerError) -> None:
        if self._error is None:
            self._error = error
        self.connection.broken = True
        pending, self._pending = self._pending, deque()
        for waiter in pending:
            waiter.error = error
            if waiter.parked:
                trio.lowlevel.reschedule(waiter.task, waiter)
            else:
                waiter.parked = True
        self._run_scope.cancel()

    def close(self) -> None:
        self._break(LayerUnavailable("the Redis connection was closed by the layer"))

    async def submit(self, data: bytes, name: Any, count: int = 0) -> Any:
        """Send ``data``, one packed command named ``name`` (or, with ``count``, that
        many commands: their replies come back as a list, error replies included)."""
        if self._error is not None:
            raise self._error
        waiter = _Waiter(trio.lowlevel.current_task(), count, name)
        pending = self._pending
        if not pending:
            self._progress = trio.current_time()
            if self._read_scope is not None:
                self._read_scope.deadline = self._progress + self.connection.options.timeout
        pending.append(waiter)
        if self._writing or self._buffer or self._gather:
            # the writer task sends it with the others of this batch (woken by the first)
            if not self._buffer:
                self._wake_writer()
            self._buffer += data
        else:
            # An idle connection: write at once, saving the writer's scheduling hop (the
            # latency of a lone caller); tasks arriving meanwhile queue for the writer.
            waiter.parked = False
            self._writing = True
            try:
                await self.connection.write(data, 0)
            except LayerError as exc:
                self._break(exc)
            finally:
                self._writing = False
            if self._buffer:
                self._wake_writer()
            if waiter.parked:  # answered (or failed) while this task was writing
                return waiter.unwrap()
            waiter.parked = True
        return await trio.lowlevel.wait_task_rescheduled(_abort_failed)

    async def execute(self, *args: Any) -> Any:
        """Run one command; an error reply raises :class:`RedisReplyError`."""
        return await self.submit(hiredis.pack_command(args), args[0] if args else "")

    async def execute_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Run several commands back to back (one write); error replies are returned."""
        data = b"".join(hiredis.pack_command(tuple(command)) for command in commands)
        return await self.submit(data, "pipeline", len(commands))  # type: ignore[no-any-return]


# ------------------------------------------------------------------------ resolvers

Resolver = Callable[[], Awaitable[Endpoint]]


class StaticResolver:
    """A fixed address."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def __call__(self) -> Endpoint:
        return self.endpoint

    def __str__(self) -> str:
        return str(self.endpoint)


class SentinelResolver:
    """Ask Redis Sentinels for the current master of ``service`` (tried in turn; the
    one that answered last is asked first next time)."""

    def __init__(
        self, sentinels: Sequence[Endpoint], service: str, options: ConnectOptions
    ) -> None:
        self.sentinels = list(sentinels)
        self.service = service
        self.options = options

    def __str__(self) -> str:
        return f"sentinel master {self.service!r} via {', '.join(map(str, self.sentinels))}"

    async def __call__(self) -> Endpoint:
        errors: list[str] = []
        for index, sentinel in enumerate(list(self.sentinels)):
            try:
                connection = await Connection.open(sentinel, self.options)
            except LayerError as exc:
                errors.append(f"{sentinel}: {exc}")
                continue
            try:
                reply = await connection.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
            except LayerError as exc:
                errors.append(f"{sentinel}: {exc}")
                continue
            finally:
                await connection.aclose()
            if reply is None:
                errors.append(f"{sentinel}: knows no master named {self.service!r}")
                continue
            if index:
                self.sentinels.insert(0, self.sentinels.pop(index))
            return Endpoint(host=reply[0].decode(), port=int(reply[1]))
        raise LayerUnavailable(
            f"no Redis Sentinel gave the master of {self.service!r}: " + "; ".join(errors)
        )


# ------------------------------------------------------------------------ node

BACKOFF_BASE = 0.05
BACKOFF_CAP = 5.0


class RedisNode:
    """One server: a shared multiplexed connection plus a bounded pool of dedicated
    connections for blocking commands, reconnecting with backoff after failures.

    ``nursery`` hosts the multiplexer's reader task; the owner cancels it on close.
    """

    def __init__(
        self,
        resolver: Resolver,
        options: ConnectOptions,
        nursery: trio.Nursery,
        *,
        name: str,
        max_connections: int = 100,
    ) -> None:
        self.resolver = resolver
        self.options = options
        self.name = name
        self._nursery = nursery
        self._mux: Multiplexer | None = None
        self._connect_lock = trio.Lock()
        self._slots = trio.Semaphore(max_connections)
        self._idle: list[Connection] = []
        self._borrowed: set[Connection] = set()
        self._failures = 0
        self._retry_at = float("-inf")
        self._last_error: LayerError | None = None
        self._closed = False
        self._generation = 0

    def __str__(self) -> str:
        return self.name

    # -- connecting with backoff ----------------------------------------------------------

    def _check_backoff(self) -> None:
        if self._closed:
            raise LayerUnavailable(f"the connection pool for Redis at {self.name} is closed")
        wait = self._retry_at - trio.current_time()
        if wait > 0:
            raise LayerUnavailable(
                f"Redis at {self.name} is unreachable (last error: {self._last_error}); "
                f"next reconnect attempt in {wait:.2f} s"
            ) from self._last_error

    async def _connect(self) -> Connection:
        self._check_backoff()
        try:
            endpoint = await self.resolver()
            connection = await Connection.open(endpoint, self.options)
        except LayerError as exc:
            self._failures += 1
            # Full jitter (AWS architecture blog, "Exponential Backoff And Jitter").
            ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (self._failures - 1))
            self._retry_at = trio.current_time() + random.uniform(0, ceiling)
            self._last_error = exc
            raise
        self._failures = 0
        self._retry_at = float("-inf")
        return connection

    async def multiplexer(self) -> Multiplexer:
        mux = self._mux
        if mux is not None and not mux.broken:
            return mux
        async with self._connect_lock:
            mux = self._mux
            if mux is not None and not mux.broken:
                return mux
            connection = await self._connect()
            mux = self._mux = Multiplexer(connection)
            try:
                await self._nursery.start(mux.run)
            except RuntimeError as exc:  # the owner's nursery is closing
                await connection.aclose()
                raise LayerUnavailable(f"the pool for Redis at {self.name} is closed") from exc
            return mux

    def reset(self) -> None:
        """Drop every connection (after READONLY & co.): the next command reconnects."""
        self._generation += 1
        if self._mux is not None:
            self._mux.close()
        for connection in self._idle:
            connection.abort()
        self._idle.clear()

    # -- commands -------------------------------------------------------------------------

    async def execute(self, *args: Any) -> Any:
        return await self.submit(hiredis.pack_command(args), args[0])

    async def submit(self, data: bytes, name: Any) -> Any:
        """Run one command already packed (``hiredis.pack_command``), named ``name``."""
        mux = self._mux
        if mux is None or mux.broken:
            mux = await self.multiplexer()
        try:
            return await mux.submit(data, name)
        except LayerUnavailable:
            if not mux.broken:  # READONLY & co. on a live connection: re-resolve
                self.reset()
            raise

    async def execute_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        mux = await self.multiplexer()
        return await mux.execute_many(commands)

    @asynccontextmanager
    async def blocking(self) -> AsyncIterator[Connection]:
        """Borrow a dedicated connection (waits while ``max_connections`` are out).

        It goes back to the pool only when clean (no unread reply); else it is closed.
        """
        async with self._slots:
            generation = self._generation
            if self._idle:
                connection = self._idle.pop()
            else:
                async with self._connect_lock:
                    connection = await self._connect()
            self._borrowed.add(connection)
            try:
                yield connection
            finally:
                self._borrowed.discard(connection)
                if (
                    connection.broken
                    or connection.outstanding
                    or self._closed
                    or generation != self._generation
                ):
                    connection.abort()
                    with trio.CancelScope(shield=True):
                        await connection.aclose()
                else:
                    self._idle.append(connection)

    def abort_borrowed(self) -> None:
        """Close the dedicated connections in use: their blocked tasks wake with an error."""
        for connection in list(self._borrowed):
            connection.abort()

    async def aclose(self) -> None:
        """Close every connection; tasks blocked on a borrowed one get LayerUnavailable."""
        self._closed = True
        self.reset()
        self.abort_borrowed()
