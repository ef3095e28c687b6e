"""Access log in the Common Log Format, one line per response, to stderr by default.

    127.0.0.1 - - [21/Nov/2026:12:00:00 +0000] "GET /path?q=1 HTTP/1.1" 200 13

Written synchronously: a line is small and stderr is unbuffered or line buffered; a
server under load that cannot afford it runs with ``--no-access-log``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import TextIO

__all__ = ["AccessLog"]


class AccessLog:
    """Format and write access-log lines to ``stream`` (default: ``sys.stderr``)."""

    __slots__ = ("_second", "_stamp", "_stream")

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._second = -1
        self._stamp = ""

    def _now(self) -> str:
        now = int(time.time())
        if now != self._second:  # formatting the date costs more than the rest
            self._second = now
            self._stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now))
        return self._stamp

    def format(
        self,
        client: tuple[str, int] | None,
        request_line: str,
        status: int,
        size: int | None,
    ) -> str:
        host = client[0] if client else "-"
        length = "-" if size is None else str(size)
        if '"' in request_line or "\\" in request_line:
            request_line = request_line.replace("\\", "\\\\").replace('"', '\\"')
        return f'{host} - - [{self._now()}] "{request_line}" {status} {length}\n'

    def log(
        self,
        client: tuple[str, int] | None,
        request_line: str,
        status: int,
        size: int | None,
    ) -> None:
        """Write one line; a broken stderr never breaks the server."""
        stream = self._stream or sys.stderr
        with contextlib.suppress(OSError, ValueError):
            stream.write(self.format(client, request_line, status, size))
