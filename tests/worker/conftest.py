"""Fixtures for the worker tests: an open memory layer driven by Trio's clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from csp_bus.layers.memory import MemoryLayer


@pytest.fixture
async def layer() -> AsyncIterator[MemoryLayer]:
    """A memory layer whose expiry follows Trio's clock (mock-clock friendly)."""
    async with MemoryLayer(clock=trio.current_time) as opened:
        yield opened
