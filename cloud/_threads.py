"""Running blocking work off the event loop, on every Python the device side supports.

``asyncio.to_thread`` arrived in Python 3.9; the agent's local API runs this package's app
on Python 3.8 (JetPack 5) too, so this module gives the same call on both.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["to_thread"]

T = TypeVar("T")


async def to_thread(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``func(*args, **kwargs)`` in the loop's default executor, keeping context vars."""
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
    return await loop.run_in_executor(None, call)
