"""Responses the server gives by itself, without the bus.

* The welcome page: ``csp-bus serve`` with the memory layer and no ``--app`` has no
  worker to answer, so instead of failing every request it explains what to do.
* ``--adapter websocket`` alone: plain HTTP requests on the port get a short 404.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from .protocol import RequestHead

if TYPE_CHECKING:
    from csp_bus.server.runtime import ServerRuntime

__all__ = ["not_served_response", "welcome_response"]

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>csp-bus is running</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:44em;margin:3em auto;padding:0 1em}}
code,pre{{background:#f3f3f3;padding:.1em .3em;border-radius:3px}}pre{{padding:.8em}}</style>
</head><body>
<h1>csp-bus is running</h1>
<p>This server is listening on {addresses} with the in-process <code>memory://</code>
layer, but no application was given, so there is no worker to answer requests.
Every request gets this page.</p>
<h2>Point it at an app</h2>
<p>Write the routes in a module, e.g. <code>myapp.py</code>:</p>
<pre>from csp_bus.routing import route

def hello(message):
    message.reply_channel.send({{
        "status": 200,
        "headers": [[b"content-type", b"text/plain"]],
        "content": b"Hello, world!",
    }})

app = [route("http.request", hello)]</pre>
<p>and serve it, with workers in this same process:</p>
<pre>csp-bus serve --adapter http --app myapp:app</pre>
<p>or run the server and the workers apart, sharing a Redis layer:</p>
<pre>csp-bus serve --adapter http --layer redis://127.0.0.1:6379/0
csp-bus worker myapp:app --layer redis://127.0.0.1:6379/0</pre>
<p>The message formats are in <code>docs/http.md</code>; the server options in
<code>docs/server.md</code> (<code>csp-bus serve --help</code>).</p>
<p><small>You asked for <code>{method} {path}</code>.</small></p>
</body></html>
"""


def welcome_response(
    runtime: ServerRuntime, head: RequestHead
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """``(status, headers, body)`` of the welcome page."""
    addresses = ", ".join(html.escape(a) for a in runtime.addresses) or "its sockets"
    body = _PAGE.format(
        addresses=addresses, method=html.escape(head.method), path=html.escape(head.path)
    ).encode("utf-8")
    return 200, [(b"content-type", b"text/html; charset=utf-8")], body


def not_served_response(
    runtime: ServerRuntime, head: RequestHead
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """``(status, headers, body)`` for a plain request when only upgrades are served."""
    tokens = ", ".join(sorted(runtime.extensions["http.front"].upgrade_handlers)) or "none"
    body = (
        f"404 Not Found: this server only accepts upgraded connections ({tokens}).\n"
        "Run it with --adapter http as well to serve plain HTTP requests.\n"
    ).encode()
    return 404, [(b"content-type", b"text/plain; charset=utf-8")], body
