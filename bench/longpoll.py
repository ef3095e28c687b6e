"""Long-poll fan-out: N clients parked on one server process, answered by one send_group.

    python bench/longpoll.py                 # 5,000 clients, 3 runs
    python bench/longpoll.py --clients 1000 --runs 1

One ``csp-bus serve`` process (memory:// layer, embedded async consumers, pinned to CPU
0) holds every connection: ``GET /poll`` adds the request's ``reply_channel`` to the
group ``waiters`` and answers nothing, so the connection waits without holding a worker;
``GET /fire`` sends ONE ``send_group`` to ``waiters`` with the response. The clients (raw
Trio sockets in this process, CPU 1) measure:

* memory per held connection: the server's RSS with all N parked minus its RSS before,
  divided by N (target: at most 20 KiB);
* the time from ``/fire`` until the last of the N clients has its whole response.

The layer keeps its default capacity: one ``send_group`` reaching N members of one
process is ONE message on that process's prefix, fanned out when the server receives it
(the layer contract, csp_bus/layers/base.py).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import trio
import trio.lowlevel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import free_port

APP = textwrap.dedent(
    """
    from csp_bus.consumers import Group
    from csp_bus.routing import route

    held = 0

    async def poll(message):
        global held
        await Group("waiters").aadd(message.reply_channel)
        held += 1

    async def count(message):
        await message.reply_channel.asend({"status": 200, "content": str(held).encode()})

    async def fire(message):
        global held
        await Group("waiters").asend({"status": 200, "content": b"news for everyone"})
        held = 0
        await message.reply_channel.asend({"status": 200, "content": b"fired"})

    app = [
        route("http.request", poll, path=r"^/poll"),
        route("http.request", count, path=r"^/count"),
        route("http.request", fire, path=r"^/fire"),
    ]
    """
)


def rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1))  # type: ignore[union-attr]


async def get(port: int, path: str) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1]


async def one_run(port: int, pid: int, clients: int) -> tuple[float, float, int]:
    """(KiB per connection, seconds from /fire to the last answer, answers)."""
    for _ in range(20):  # warm up: imports, first allocations
        await get(port, "/count")
    before = rss_kib(pid)
    streams: list[trio.SocketStream] = []
    answered = 0
    last = 0.0
    fired_at = 0.0
    everyone = trio.Event()

    async def client(stream: trio.SocketStream) -> None:
        nonlocal answered, last
        data = b""
        while b"news for everyone" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        answered += 1
        last = trio.current_time()
        if answered == clients:
            everyone.set()

    async with trio.open_nursery() as nursery:
        for index in range(clients):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET /poll HTTP/1.1\r\nHost: b\r\n\r\n")
            streams.append(stream)
            nursery.start_soon(client, stream)
            if index % 500 == 499:
                await trio.lowlevel.checkpoint()  # let the server keep up with accepts
        with trio.fail_after(60):
            # Asking another process over HTTP: nothing to wait on but the answer.
            while int(await get(port, "/count")) < clients:  # noqa: ASYNC110
                await trio.sleep(0.2)
        await trio.sleep(0.5)  # let the server settle every connection into its wait
        after = rss_kib(pid)
        fired_at = trio.current_time()
        await get(port, "/fire")
        with trio.move_on_after(60):
            await everyone.wait()
        nursery.cancel_scope.cancel()
    for stream in streams:
        await stream.aclose()
    return (after - before) / clients, max(0.0, last - fired_at), answered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, args.clients * 2 + 1000)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < args.clients + 500:
        print(
            f"the open-file limit ({hard}) is too low for {args.clients} clients", file=sys.stderr
        )
        return 2
    if shutil.which("taskset") and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})
    results: list[tuple[float, float, int]] = []
    with tempfile.TemporaryDirectory(prefix="csp-bus-bench-longpoll-") as tmp:
        Path(tmp, "longpoll_app.py").write_text(APP)
        for run in range(args.runs):
            port = free_port()
            layer = "memory://"
            command = [
                sys.executable, "-m", "csp_bus", "serve", "--bind", f"127.0.0.1:{port}",
                "--app", "longpoll_app:app", "--layer", layer, "--long-poll", "^/poll",
                "--no-access-log", "--backlog", "4096", "--threads", "4",
            ]  # fmt: skip
            if shutil.which("taskset"):
                command = ["taskset", "-c", "0", *command]
            env = {**os.environ, "PYTHONPATH": tmp}
            server = subprocess.Popen(command, cwd=tmp, env=env, stderr=subprocess.PIPE, text=True)
            try:
                assert server.stderr is not None
                while "csp-bus serve [" not in (line := server.stderr.readline()):
                    if not line:
                        raise RuntimeError("the server did not start")
                pid = server.pid
                # taskset execs python in place: the pid is the server's.
                per_conn, spread, answered = trio.run(one_run, port, pid, args.clients)
                results.append((per_conn, spread, answered))
                print(
                    f"run {run + 1}: {answered}/{args.clients} answered, "
                    f"{per_conn:.1f} KiB per connection, last answer {spread * 1000:.0f} ms "
                    "after /fire",
                    file=sys.stderr,
                    flush=True,
                )
            finally:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(30)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
                if server.stderr:
                    server.stderr.close()
    per = [r[0] for r in results]
    spread = [r[1] * 1000 for r in results]
    answered = [r[2] for r in results]
    print(
        f"\nlong-poll fan-out, {args.clients} clients on one server process, {args.runs} run(s); "
        "median (min-max)"
    )
    print(
        f"memory per held connection: {statistics.median(per):.1f} KiB "
        f"({min(per):.1f}-{max(per):.1f}); target <= 20 KiB -> "
        f"{'OK' if statistics.median(per) <= 20 else 'over target'}"
    )
    print(
        f"one send_group -> all answered: {statistics.median(spread):.0f} ms "
        f"({min(spread):.0f}-{max(spread):.0f}); answered {min(answered)}-{max(answered)} "
        f"of {args.clients}"
    )
    return 0 if min(answered) == args.clients else 1


if __name__ == "__main__":
    sys.exit(main())
