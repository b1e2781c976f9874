"""``POST /webhook``: Label Studio events, answered within its 1 s timeout.

* ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` (and bulk ``ANNOTATIONS_CREATED``): the human
  annotation is stored durably *before* answering (a few milliseconds: one fsync'd file), then
  ``fit(event, data)`` is queued.
* ``ANNOTATIONS_DELETED`` (Label Studio's name; ``ANNOTATION_DELETED`` is accepted too): a
  tombstone per annotation id.
* ``START_TRAINING``: queued; the background worker calls ``fit``, which runs the training hook.
* Anything else (``TASKS_CREATED``, ``PROJECT_UPDATED``, ...): ``200 {"status": "ignored"}``.

Every item of a bulk event is checked and serialised before any is written: one bad item is a 400
and nothing is stored. A write that fails (disk full, I/O error) is a 503
(:class:`StorageUnavailable`) and leaves no partial file; items of the same event written before
it stay, and come back as ``"duplicate"`` when the event is sent again.
"""

from __future__ import annotations

import errno
import logging
from typing import Any, Callable

from .annotation_store import AnnotationStore, PendingSave, SaveOutcome
from .feedback import AcceptanceTracker
from .jobs import BackgroundQueue
from .metrics import ServiceMetrics
from .ml_base import MLBackendBase
from .training import TrainingCoordinator

logger = logging.getLogger(__name__)

ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
DELETE_EVENTS = ("ANNOTATIONS_DELETED", "ANNOTATION_DELETED")
TRAINING_EVENT = "START_TRAINING"


class PayloadError(ValueError):
    """A request body that does not have the expected shape (answered with 400)."""


class StorageUnavailable(RuntimeError):
    """The annotation store could not write (answered with 503; nothing was acknowledged)."""


_STORAGE_ERRORS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EIO: "I/O error",
    errno.EROFS: "read-only file system",
}


def _storage_unavailable(action: str, error: OSError) -> StorageUnavailable:
    what = _STORAGE_ERRORS.get(error.errno, error.strerror or type(error).__name__)
    code = errno.errorcode.get(error.errno, str(error.errno)) if error.errno is not None else "?"
    return StorageUnavailable(
        f"{action}: the annotation store cannot write ({what}, {code}); the event was not acknowledged: "
        "send it again once the disk under MODEL_DIR is fixed (what was already written then reads as duplicate)"
    )


def _project_of(data: dict) -> tuple[int | None, str | None]:
    """``(project id, label config)`` from the webhook's ``project`` object, if any."""
    project = data.get("project")
    if isinstance(project, dict):
        project_id = project.get("id")
        label_config = project.get("label_config")
        return (
            project_id if isinstance(project_id, int) and not isinstance(project_id, bool) else None,
            label_config if isinstance(label_config, str) else None,
        )
    if isinstance(project, int) and not isinstance(project, bool):
        return project, None
    return None, None


class WebhookProcessor:
    """Dispatches webhook events to the store, the background queue and the model's ``fit``."""

    def __init__(
        self,
        store: AnnotationStore,
        jobs: BackgroundQueue,
        metrics: ServiceMetrics,
        training: TrainingCoordinator,
        model_for: Callable[[str, str | None], MLBackendBase],
        acceptance: AcceptanceTracker | None = None,
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.metrics = metrics
        self.training = training
        self.model_for = model_for
        self.acceptance = acceptance

    def handle(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise PayloadError("webhook body must be a JSON object with an 'action'")
        action = data.get("action")
        if not isinstance(action, str) or not action:
            raise PayloadError("webhook body has no 'action' string")
        self.metrics.increment("webhooks", "events", action)
        if action in ANNOTATION_EVENTS:
            return self._annotations(action, data)
        if action in DELETE_EVENTS:
            return self._deleted(action, data)
        if action == TRAINING_EVENT:
            return self._training(data)
        self.metrics.increment("webhooks", "ignored")
        return {"status": "ignored", "action": action}

    def _annotations(self, action: str, data: dict) -> dict[str, Any]:
        annotations = data.get("annotation")
        tasks = data.get("task")
        if isinstance(annotations, dict):
            pairs = [(annotations, tasks if isinstance(tasks, dict) else None)]
        elif isinstance(annotations, list) and annotations:
            by_id = {t.get("id"): t for t in tasks if isinstance(t, dict)} if isinstance(tasks, list) else {}
            pairs = [(a, by_id.get(a.get("task")) if isinstance(a, dict) else None) for a in annotations]
        else:
            raise PayloadError(f"{action} needs an 'annotation' object")
        project_id, label_config = _project_of(data)
        pending = []
        for annotation, task in pairs:  # check every item before storing any
            if not isinstance(annotation, dict) or "id" not in annotation:
                raise PayloadError(f"{action}: every annotation needs an 'id'")
            try:
                pending.append(
                    self.store.prepare(
                        annotation, event=action, project_id=project_id, task=task, label_config=label_config
                    )
                )
            except ValueError as error:
                raise PayloadError(f"{action}: {error}") from None
        outcomes = []
        for item in pending:
            outcome = self._commit(action, item)
            self.metrics.increment("webhooks", "stored" if outcome.stored else "duplicates")
            outcomes.append({"annotation": outcome.annotation_id, "status": outcome.status})
            logger.info("%s: annotation %s %s", action, outcome.annotation_id, outcome.status)
        if any(o["status"] == "stored" for o in outcomes) and label_config:
            self.jobs.submit(f"fit {action}", self._fit, action, data, label_config, project_id)
        if self.acceptance is not None and label_config:
            for (annotation, _), outcome in zip(pairs, outcomes):
                if outcome["status"] == "stored" and self.acceptance.wanted(annotation):
                    self.jobs.submit(
                        f"acceptance of annotation {outcome['annotation']}",
                        self.acceptance.measure,
                        annotation,
                        project_id,
                        label_config,
                    )
        status = "stored" if any(o["status"] == "stored" for o in outcomes) else "duplicate"
        return {"status": status, "annotations": outcomes}

    def _deleted(self, action: str, data: dict) -> dict[str, Any]:
        items = data.get("annotations", data.get("annotation"))
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list) or not items:
            raise PayloadError(f"{action} needs an 'annotations' list of {{'id': ...}}")
        project_id, _ = _project_of(data)
        pending = []
        for item in items:  # check every item before storing any
            annotation_id = item.get("id") if isinstance(item, dict) else item
            try:
                pending.append(self.store.prepare_delete(annotation_id, project_id=project_id, event=action))
            except ValueError as error:
                raise PayloadError(f"{action}: {error}") from None
        outcomes = []
        for item in pending:
            outcome = self._commit(action, item)
            self.metrics.increment("webhooks", "deleted" if outcome.stored else "duplicates")
            outcomes.append(
                {"annotation": outcome.annotation_id, "status": "deleted" if outcome.stored else "duplicate"}
            )
        return {"status": "deleted", "annotations": outcomes}

    def _commit(self, action: str, item: PendingSave) -> SaveOutcome:
        try:
            return self.store.commit(item)
        except OSError as error:
            self.metrics.increment("webhooks", "storage_errors")
            logger.error("%s: storing annotation %s failed: %s", action, item.annotation_id, error)
            raise _storage_unavailable(action, error) from None

    def _training(self, data: dict) -> dict[str, Any]:
        project_id, label_config = _project_of(data)
        self.training.note_requested()
        self.jobs.submit(
            f"{TRAINING_EVENT} project {project_id}", self._fit, TRAINING_EVENT, data, label_config, project_id
        )
        status = "training queued" if self.training.has_hook else "ignored: no training hook registered"
        return {"status": status}

    def _fit(self, event: str, data: dict, label_config: str | None, project_id: int | None) -> None:
        """Background: build the project's model and hand it the event."""
        if label_config is None:
            if event == TRAINING_EVENT:
                self.training.run(project_id=project_id, label_config=None, event=data)
            return
        model = self.model_for(label_config, None if project_id is None else str(project_id))
        model.fit(event, data)
