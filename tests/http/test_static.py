"""--static: files served by the HTTP adapter itself."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from csp_bus.adapters.http import HTTPConfig
from csp_bus.adapters.http.static import parse_mount

from csp_bus.errors import UsageError


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "js").mkdir(parents=True)
    (root / "index.html").write_text("<h1>home</h1>")
    (root / "js" / "app.js").write_bytes(b"console.log(1);" * 10000)
    (tmp_path / "secret.txt").write_text("do not serve")
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    return root


async def test_static_files(serve, raw, nursery, site: Path) -> None:
    served = await serve(nursery, http=HTTPConfig(static=(parse_mount(f"/static={site}"),)))
    async with httpx.AsyncClient() as client:
        response = await client.get(served.url + "/static/js/app.js")
        assert response.status_code == 200
        assert response.content == b"console.log(1);" * 10000
        assert response.headers["content-type"].startswith(
            ("text/javascript", "application/javascript")
        )
        etag = response.headers["etag"]
        again = await client.get(served.url + "/static/js/app.js", headers={"if-none-match": etag})
        assert again.status_code == 304 and again.content == b""
        head = await client.head(served.url + "/static/js/app.js")
        assert head.headers["content-length"] == "150000" and head.content == b""
        index = await client.get(served.url + "/static/")
        assert index.text == "<h1>home</h1>"
        post = await client.post(served.url + "/static/index.html", content=b"x")
        assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
        other = await client.get(served.url + "/api")  # not under the prefix: the bus
        assert other.text == "Hello, world!"
    # raw requests: httpx would normalize the dot segments away
    for path in (
        b"/static/../secret.txt",
        b"/static/%2e%2e/secret.txt",
        b"/static/escape",
        b"/static/missing.js",
        b"/static/js/%00",
        b"/static/js/..%2f..%2fsecret.txt",
    ):
        request = b"GET " + path + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        data = await raw(served.host, served.port, request)
        assert data.startswith(b"HTTP/1.1 404 Not Found"), path
    assert [m["path"] for m in served.requests] == ["/api"]
    nursery.cancel_scope.cancel()


def test_mounts_are_checked(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        parse_mount("static=./x")
    with pytest.raises(UsageError):
        parse_mount(f"/s/={tmp_path / 'missing'}")
    assert parse_mount(f"/s={tmp_path}").prefix == "/s/"
