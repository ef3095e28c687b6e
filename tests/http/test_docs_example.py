"""The runnable example of docs/http.md, served with embedded workers."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import httpx
import trio
from csp_bus.adapters.http import HTTPConfig, adapter

from csp_bus.embedded import run_workers
from csp_bus.layers import open_layer
from csp_bus.server import ServerConfig, run_server

DOC = Path(__file__).resolve().parents[2] / "docs" / "http.md"


def load_example(tmp_path: Path):
    text = DOC.read_text()
    code = re.search(r"```python\n(# myapp\.py\n.*?)```", text, re.S).group(1)
    path = tmp_path / "doc_myapp.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("doc_myapp", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


async def test_the_docs_example_runs(tmp_path: Path) -> None:
    app = load_example(tmp_path)
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_workers(layer, app, task_status=task_status))
        runtime = await nursery.start(
            lambda task_status: run_server(
                layer,
                ServerConfig(binds=(("127.0.0.1", 0),), access_log=False),
                [(adapter, HTTPConfig(long_poll_paths=("^/wait$",), response_timeout=2))],
                task_status=task_status,
            )
        )
        url = runtime.addresses[0]
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(url + "/hello/you")
            assert response.text == "Hello, you!"
            waited = []

            async def waiter() -> None:
                waited.append(await client.get(url + "/wait"))

            async with trio.open_nursery() as waiters:
                waiters.start_soon(waiter)
                waiters.start_soon(waiter)
                with trio.fail_after(5):
                    # the consumers run in worker threads: look at the layer until both joined
                    while (await layer.stats())["groups"].get("waiters", 0) < 2:  # noqa: ASYNC110
                        await trio.sleep(0.02)
                notified = await client.post(url + "/notify", content=b"it works")
                assert notified.status_code == 204
                assert "content-length" not in notified.headers
            assert [r.text for r in waited] == ["news: it works"] * 2
        nursery.cancel_scope.cancel()
