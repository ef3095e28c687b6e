"""Plug-in point of the conformance suite: every layer runs every test here.

A test asks for ``make_layer`` and calls ``await make_layer(capacity=3, expiry=1)``:
it gets an open, empty layer with those URL parameters, closed after the test. Adding a
layer = adding a ``pytest.param`` to ``LAYERS`` plus a branch in ``_base_url`` (and, for
a layer that may not be installed, a line in ``_MODULES`` so it skips with a reason).

The suite tests the public contract only (``csp_bus/layers/base.py`` and DESIGN.md
section 3): no test here may look at a layer's private attributes.

Any other layer, a third-party one found through the ``csp_bus.layers`` entry points
included, runs the whole suite with ``CSP_BUS_CONFORMANCE_URL=scheme://...`` in the
environment (parameter id ``url``); docs/conformance.md tells more.

A test that found a bug in one layer calls ``known_bug(layer_kind, "memory", "...")``: the
test stays in the suite, marked as an expected failure of that layer only (strict, so
that the fix turns it into a failure until the marker is removed).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import quote

import pytest

from csp_bus import ChannelLayer, open_layer

LAYERS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]

#: a layer URL from outside (a third-party layer): the suite runs on it as layer "url".
EXTRA_URL = os.environ.get("CSP_BUS_CONFORMANCE_URL", "").strip()
if EXTRA_URL:
    LAYERS.append(pytest.param("url", id="url"))

#: layer kind -> the module that must import for the kind to run at all.
_MODULES = {"redis": "csp_bus.layers.redis"}

MakeLayer = Callable[..., Awaitable[ChannelLayer]]


def _skip_if_not_installed(kind: str) -> None:
    module = _MODULES.get(kind)
    if module is None:
        return
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # Only the layer's own module missing is a skip; a layer whose module exists but
        # fails to import (a missing dependency inside it, a syntax error) must fail.
        if exc.name != module:
            raise
        pytest.skip(f"the {kind} layer is not written yet: {module} does not exist")


@pytest.fixture(params=LAYERS)
def layer_kind(request: pytest.FixtureRequest) -> str:
    kind = str(request.param)
    _skip_if_not_installed(kind)
    return kind


def _base_url(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "memory":
        return "memory://?"
    if kind == "url":
        return EXTRA_URL + ("&" if "?" in EXTRA_URL else "?")
    return str(request.getfixturevalue("redis_url")) + "&"


def _query(params: dict[str, Any]) -> str:
    # Values are percent-quoted except the characters capacity patterns use, so that a
    # URL reads as a user would write it (channel_capacity=http.request:2,ws.*:1).
    return "&".join(f"{key}={quote(str(value), safe='*,:!?.-_')}" for key, value in params.items())


@pytest.fixture
async def make_layer(layer_kind: str, request: pytest.FixtureRequest) -> AsyncIterator[MakeLayer]:
    base = _base_url(layer_kind, request)
    async with AsyncExitStack() as stack:

        async def make(**params: Any) -> ChannelLayer:
            layer = await stack.enter_async_context(open_layer(base + _query(params)))
            await layer.flush()
            return layer

        yield make


@pytest.fixture
def layer_url(layer_kind: str, request: pytest.FixtureRequest) -> str:
    """The URL ``make_layer`` builds on, for a test that opens a layer itself."""
    return _base_url(layer_kind, request).rstrip("?&")


@pytest.fixture
async def layer(make_layer: MakeLayer) -> ChannelLayer:
    """A layer with default options."""
    return await make_layer()


@pytest.fixture
def known_bug(request: pytest.FixtureRequest) -> Callable[[str, str, str], None]:
    """``known_bug(layer_kind, "memory", "what is wrong, file:line")``: mark this test an
    expected (strict) failure on that layer only."""

    def mark(kind: str, buggy_kind: str, reason: str) -> None:
        if kind == buggy_kind:
            request.applymarker(pytest.mark.xfail(reason=f"BUG({buggy_kind}): {reason}"))

    return mark
