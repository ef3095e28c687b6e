"""Static files served by the HTTP adapter itself: ``--static /static/=./static``.

Meant for development and small assets (a chat page's JavaScript), so that a single
``csp-bus serve`` is a whole app; in production a CDN or the reverse proxy usually
serves them. Rules:

* only ``GET`` and ``HEAD`` (405 with ``Allow`` otherwise);
* the path is resolved inside the mounted directory; ``..`` segments, NUL bytes and
  symlinks leading out of it answer 404 (never a hint that the file exists);
* a directory serves its ``index.html``;
* ``ETag``/``Last-Modified`` are sent, and ``If-None-Match`` answers 304.

Files are read in 64 KiB blocks on the event loop: for local files in the page cache
that is a few microseconds per block, cheaper than a thread hop; a slow network disk
would stall the loop, another reason to keep this to development.
"""

from __future__ import annotations

import email.utils
import mimetypes
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from csp_bus.errors import UsageError

__all__ = ["StaticFile", "StaticMount", "find_static", "parse_mount"]

BLOCK = 64 * 1024


@dataclass(frozen=True)
class StaticMount:
    """URL ``prefix`` (starting and ending with ``/``) -> ``directory``."""

    prefix: str
    directory: str


def parse_mount(text: str) -> StaticMount:
    """``"/static/=./static"`` -> a mount; ``UsageError`` when malformed or missing."""
    prefix, sep, directory = text.partition("=")
    if not sep or not prefix.startswith("/") or not directory:
        raise UsageError(f"--static {text!r}: use URL_PREFIX=DIRECTORY, e.g. /static/=./static")
    if not prefix.endswith("/"):
        prefix += "/"
    path = Path(directory).resolve()
    if not path.is_dir():
        raise UsageError(f"--static {text!r}: {directory} is not a directory")
    return StaticMount(prefix, str(path))


@dataclass(frozen=True)
class StaticFile:
    """An opened file to serve: ``fd`` (the caller closes it), its headers."""

    fd: int
    size: int
    etag: bytes
    headers: list[tuple[bytes, bytes]]


def find_static(mounts: tuple[StaticMount, ...], path: str) -> StaticMount | None:
    """The mount whose prefix ``path`` starts with (longest first), if any."""
    best: StaticMount | None = None
    for mount in mounts:
        if (path.startswith(mount.prefix) or path + "/" == mount.prefix) and (
            best is None or len(mount.prefix) > len(best.prefix)
        ):
            best = mount
    return best


def open_static(mount: StaticMount, path: str) -> StaticFile | None:
    """Open the file ``path`` names under ``mount``; ``None`` for 404."""
    relative = path[len(mount.prefix) :] if path.startswith(mount.prefix) else ""
    parts = [part for part in relative.split("/") if part]
    if any(part in ("..", ".") or "\x00" in part or "\\" in part for part in parts):
        return None
    root = Path(mount.directory)
    target = root.joinpath(*parts)
    try:
        resolved = target.resolve()
        if resolved != root and root not in resolved.parents:
            return None  # a symlink out of the directory
        if resolved.is_dir():
            resolved = resolved / "index.html"
        fd = os.open(resolved, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError):
        return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    etag = f'"{info.st_size:x}-{int(info.st_mtime_ns // 1000):x}"'.encode("ascii")
    kind, encoding = mimetypes.guess_type(resolved.name)
    content_type = kind or "application/octet-stream"
    if content_type.startswith("text/") or content_type in (
        "application/javascript",
        "application/json",
    ):
        content_type += "; charset=utf-8"
    headers = [
        (b"content-type", content_type.encode("ascii")),
        (b"content-length", str(info.st_size).encode("ascii")),
        (b"etag", etag),
        (b"last-modified", email.utils.formatdate(info.st_mtime, usegmt=True).encode("ascii")),
        (b"cache-control", b"no-cache"),
    ]
    if encoding:
        headers.append((b"content-encoding", encoding.encode("ascii")))
    return StaticFile(fd, info.st_size, etag, headers)


def not_modified(file: StaticFile, request_headers: list[tuple[bytes, bytes]]) -> bool:
    """``If-None-Match`` names this file's ETag (or ``*``): answer 304."""
    for name, value in request_headers:
        if name == b"if-none-match":
            tags = [tag.strip().removeprefix(b"W/") for tag in value.split(b",")]
            if b"*" in tags or file.etag in tags:
                return True
    return False
