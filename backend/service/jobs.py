"""A single background worker thread for webhook follow-up work (``fit``, training).

Label Studio gives ``/webhook`` one second; anything slower than storing the annotation goes
here. One thread runs jobs in submission order, so training runs never overlap.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

logger = logging.getLogger(__name__)


class BackgroundQueue:
    """FIFO of jobs run by one daemon thread (started on the first submit)."""

    def __init__(self, name: str = "background-jobs") -> None:
        self.name = name
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self.done = 0
        self.failed = 0
        self.last_error: str | None = None

    def submit(self, description: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self._pending += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        self._jobs.put((description, function, args, kwargs))

    def _run(self) -> None:
        while True:
            description, function, args, kwargs = self._jobs.get()
            started = time.monotonic()
            try:
                function(*args, **kwargs)
            except Exception as error:  # a failed job is logged and counted, the worker lives on
                logger.exception("background job %r failed", description)
                with self._lock:
                    self.failed += 1
                    self.last_error = f"{description}: {type(error).__name__}: {error}"
            else:
                logger.info("background job %r done in %.2f s", description, time.monotonic() - started)
                with self._lock:
                    self.done += 1
            finally:
                with self._lock:
                    self._pending -= 1
                    self._idle.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until no job is pending (``True``) or ``timeout_s`` passes (``False``)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"pending": self._pending, "done": self.done, "failed": self.failed, "last_error": self.last_error}
