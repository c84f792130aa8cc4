"""A bound on a wait that would otherwise hang the whole run if its event never came."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["hang_guard"]


@asynccontextmanager
async def hang_guard(what: str, seconds: float = 30.0) -> AsyncIterator[None]:
    """Fail with an AssertionError naming `what` (the awaited event) if the block has not
    ended within `seconds`.

    Not a timed assertion: `seconds` is far beyond how long the event takes even on a loaded
    machine; it only turns a wait that would never end into a failure that says what it was.
    """
    try:
        async with asyncio.timeout(seconds) as scope:
            yield
    except TimeoutError:
        if scope.expired():  # else the block itself raised TimeoutError: let it through
            raise AssertionError(f"not within {seconds:g} s: {what}") from None
        raise
