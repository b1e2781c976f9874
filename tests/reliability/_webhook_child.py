"""The child process of the SIGKILL test: recovers the store, then handles webhook events one by
one and reports each acknowledgement (sent only after ``handle`` returned, i.e. after fsync)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.service.annotation_store import AnnotationStore
from backend.service.metrics import ServiceMetrics
from backend.service.webhooks import WebhookProcessor


class _NoJobs:
    def submit(self, *args: Any, **kwargs: Any) -> None:
        pass


def serve(root: str, posts: list[tuple[int, dict]], connection) -> None:
    store = AnnotationStore(Path(root))
    removed = store.recover()  # what the service does at start-up
    processor = WebhookProcessor(store, _NoJobs(), ServiceMetrics(), training=None, model_for=None)
    connection.send(("ready", removed))
    for index, body in posts:
        reply = processor.handle(body)
        connection.send(("ack", index, reply))
    connection.send(("done",))
