"""Per-stage wall-clock timings of the methods (``timings`` dicts in their results and benchmarks)."""

from __future__ import annotations

import time
from contextlib import contextmanager

__all__ = ["timed"]


@contextmanager
def timed(timings: dict[str, float] | None, name: str):
    """Add the block's wall-clock seconds to ``timings[name]`` (nothing when ``timings`` is None)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - start, 4)
