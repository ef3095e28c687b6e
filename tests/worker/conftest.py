"""Fixtures for the worker tests: an open memory layer driven by Trio's clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio

from csp_bus.layers.memory import MemoryLayer


@pytest.fixture
async def layer() -> AsyncIterator[MemoryLayer]:
    """A memory layer whose expiry follows Trio's clock (mock-clock friendly)."""
    async with MemoryLayer(clock=trio.current_time) as opened:
        yield opened


Condition = Callable[[], object]


async def _until(condition: Condition, timeout: float = 60) -> None:  # noqa: ASYNC109
    with trio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - counters updated by worker threads
            await trio.sleep(0.002)


@pytest.fixture
def until() -> Callable[..., Awaitable[None]]:
    """``await until(lambda: worker.stats.handled >= 3)``: wait, bounded, for a counter
    that worker threads update (there is no event to wait on, so this test helper polls;
    with the autojump clock the timeout is virtual time)."""
    return _until
