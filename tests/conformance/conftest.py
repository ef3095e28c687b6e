"""Plug-in point of the conformance suite: every layer runs every test here.

A test asks for ``make_layer`` and calls ``await make_layer(capacity=3, expiry=1)``:
it gets an open, empty layer with those URL parameters, closed after the test. Adding a
layer = adding a ``pytest.param`` to ``LAYERS`` plus a branch in ``_base_url``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from csp_bus import ChannelLayer, open_layer

LAYERS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]

MakeLayer = Callable[..., Awaitable[ChannelLayer]]


@pytest.fixture(params=LAYERS)
def layer_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _base_url(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "memory":
        return "memory://?"
    return str(request.getfixturevalue("redis_url")) + "&"


@pytest.fixture
async def make_layer(layer_kind: str, request: pytest.FixtureRequest) -> AsyncIterator[MakeLayer]:
    base = _base_url(layer_kind, request)
    async with AsyncExitStack() as stack:

        async def make(**params: Any) -> ChannelLayer:
            query = "&".join(f"{key}={value}" for key, value in params.items())
            layer = await stack.enter_async_context(open_layer(base + query))
            await layer.flush()
            return layer

        yield make


@pytest.fixture
async def layer(make_layer: MakeLayer) -> ChannelLayer:
    """A layer with default options."""
    return await make_layer()
