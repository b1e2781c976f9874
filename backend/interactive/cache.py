"""A bounded, least-recently-used cache of per-image embeddings (no torch).

One entry per task: the image's content hash and the values computed from that image (SAM's image
embedding, CLIP's prefix tokens, ...), each with its size in bytes. An entry is found only with
the same task key *and* content hash: a task whose image changed gets a new entry and its old one
is dropped (an invalidation). Bounds: the number of entries and their bytes together; the least
recently used entries are evicted first, and a value that alone exceeds the byte bound is not kept.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CacheStats", "EmbeddingCache", "content_hash"]


def content_hash(image: np.ndarray) -> str:
    """A hash of an image's pixels, shape and type (BLAKE2b, 128 bits, hex)."""
    pixels = np.ascontiguousarray(image)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{pixels.shape}|{pixels.dtype}|".encode())
    digest.update(pixels.data)
    return digest.hexdigest()


@dataclass
class CacheStats:
    """Counters since the cache was made (``entries`` and ``bytes``: now)."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0  # entries dropped for the bounds
    invalidations: int = 0  # entries dropped because their task's image changed
    too_large: int = 0  # values not kept: alone larger than the byte bound
    entries: int = 0
    bytes: int = 0


@dataclass
class _Entry:
    content_hash: str
    values: dict[Hashable, tuple[Any, int]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(size for _, size in self.values.values())


class EmbeddingCache:
    """Per-image values keyed by ``(task key, content hash, name)``; thread-safe.

    Args:
        max_entries: images kept at most (0: nothing is kept).
        max_bytes: bytes kept at most, all entries together.
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ValueError(f"cache bounds must be >= 0, got {max_entries} entries, {max_bytes} bytes")
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._stats = CacheStats()

    def get(self, task_key: Hashable, content_hash: str, name: Hashable) -> Any | None:
        """The value stored under ``name`` for this task and image, or ``None``.

        A hit makes the entry the most recently used. A task whose stored image has another
        hash loses its entry here (the image changed).
        """
        with self._lock:
            entry = self._current(task_key, content_hash)
            if entry is None or name not in entry.values:
                self._stats.misses += 1
                return None
            self._entries.move_to_end(task_key)
            self._stats.hits += 1
            return entry.values[name][0]

    def put(self, task_key: Hashable, content_hash: str, name: Hashable, value: Any, nbytes: int) -> bool:
        """Store ``value`` (``nbytes`` large); evict the least recently used entries to stay in
        bounds. Returns whether it was kept."""
        nbytes = int(nbytes)
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        with self._lock:
            if self.max_entries == 0 or nbytes > self.max_bytes:
                self._stats.too_large += self.max_entries > 0
                return False
            entry = self._current(task_key, content_hash)
            if entry is None:
                entry = self._entries[task_key] = _Entry(content_hash)
            previous = entry.values.get(name)
            if previous is not None:
                self._bytes -= previous[1]
            entry.values[name] = (value, nbytes)
            self._bytes += nbytes
            self._entries.move_to_end(task_key)
            self._evict(keep=task_key)
            if self._bytes > self.max_bytes:  # this entry's other values and the new one do not fit together
                del entry.values[name]
                self._bytes -= nbytes
                self._stats.too_large += 1
                if not entry.values:
                    del self._entries[task_key]
                return False
            return True

    def invalidate(self, task_key: Hashable) -> bool:
        """Drop the task's entry (whatever its image); returns whether there was one."""
        with self._lock:
            entry = self._entries.pop(task_key, None)
            if entry is None:
                return False
            self._bytes -= entry.nbytes
            self._stats.invalidations += 1
            return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(**{**self._stats.__dict__, "entries": len(self._entries), "bytes": self._bytes})

    def keys(self) -> list[tuple[Hashable, str]]:
        """``(task key, content hash)`` of the entries, least recently used first."""
        with self._lock:
            return [(key, entry.content_hash) for key, entry in self._entries.items()]

    # ---- with the lock held -----------------------------------------------------------------

    def _current(self, task_key: Hashable, content_hash: str) -> _Entry | None:
        entry = self._entries.get(task_key)
        if entry is not None and entry.content_hash != content_hash:
            del self._entries[task_key]  # the task's image changed: its embeddings are stale
            self._bytes -= entry.nbytes
            self._stats.invalidations += 1
            return None
        return entry

    def _evict(self, keep: Hashable) -> None:
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            if oldest == keep:
                if len(self._entries) == 1:
                    return
                self._entries.move_to_end(keep)
                continue
            entry = self._entries.pop(oldest)
            self._bytes -= entry.nbytes
            self._stats.evictions += 1
