"""Counters reported by ``GET /metrics`` (thread-safe, JSON-able)."""

from __future__ import annotations

import copy
import threading
import time
from typing import Any


class ServiceMetrics:
    """Nested counters: ``increment("predict", "tasks", by=3)``, ``record("unsupported_labels", ...)``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = time.time()
        self._data: dict[str, Any] = {
            "predict": {"requests": 0, "tasks": 0, "tasks_failed": 0, "results": 0, "seconds": 0.0},
            "setup": {"requests": 0},
            "webhooks": {"events": {}, "stored": 0, "duplicates": 0, "deleted": 0, "ignored": 0},
            "unsupported_labels": {},
            "errors": {},
        }

    def increment(self, *path: str, by: float = 1) -> None:
        with self._lock:
            node = self._data
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = node.get(path[-1], 0) + by

    def record(self, *path: str, value: Any) -> None:
        """Set a leaf value (e.g. why a label is unsupported)."""
        with self._lock:
            node = self._data
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            data = copy.deepcopy(self._data)
        data["predict"]["seconds"] = round(data["predict"]["seconds"], 3)
        data["uptime_s"] = round(time.time() - self._started, 1)
        return data
