"""Retraining on human corrections: a hook the FMbSeg side provides, run on ``START_TRAINING``.

The service does not train anything itself. A *training hook* (``backend.service.hooks``) is any
callable taking a :class:`TrainingRequest` and returning an optional JSON-able summary (e.g. the
path of the new checkpoint). Register it with ``create_app(training_hook=...)`` or
``TRAINING_HOOK=pkg.mod:func``.
The hook should write alignment checkpoints into ``request.checkpoint_dir``: the newest file there
becomes the checkpoint FMbSeg predicts with, and its name enters ``model_version``, so Label
Studio re-predicts with the new model. Status and history are reported by ``GET /metrics``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from typing import Any, Callable, Mapping, Sequence

from .annotation_store import AnnotationStore
from .hooks import TrainingHook, TrainingRequest, import_hook
from .images import ImageSource
from .reconcile import ReconcileSummary
from .regions import Region, regions_from_results
from .runtime import Runtime
from .vocabulary import ClassMaskTag

__all__ = ["TrainingCoordinator", "TrainingHook", "TrainingRequest", "annotation_regions", "import_hook"]

logger = logging.getLogger(__name__)


def annotation_regions(record: Mapping[str, Any]) -> list[Region]:
    """The brush and polygon regions of a stored annotation record, with their linked texts/choices
    (the project's one decoder, :func:`backend.service.regions.regions_from_results`)."""
    return regions_from_results((record.get("annotation") or {}).get("result") or [])


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


class TrainingCoordinator:
    """Runs the training hook (from the background queue) and keeps its status."""

    def __init__(
        self,
        store: AnnotationStore,
        runtime: Runtime,
        hook: TrainingHook | None = None,
        hook_path: str | None = None,
    ) -> None:
        self.store = store
        self.runtime = runtime
        # Set by the app: project id -> where that project's images come from (for the hook).
        self.image_source_for: Callable[[int | None], ImageSource | None] = lambda project_id: None
        # Set by the app when the operator configured Label Studio: bring the store in line with
        # Label Studio's annotations before training (corrections whose webhook was missed).
        self.reconcile: Callable[[int], ReconcileSummary] | None = None
        self._hook = hook
        self._hook_path = hook_path
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {
            "state": "idle",
            "requested": 0,
            "runs": 0,
            "failures": 0,
            "last_started_at": None,
            "last_finished_at": None,
            "last_duration_s": None,
            "last_error": None,
            "last_result": None,
            "last_reconcile": None,
        }

    def register(self, hook: TrainingHook) -> None:
        """Set the training hook (replaces any earlier one)."""
        if not callable(hook):
            raise ValueError(f"training hook must be callable, got {hook!r}")
        with self._lock:
            self._hook = hook

    @property
    def has_hook(self) -> bool:
        return self._hook is not None or self._hook_path is not None

    def _hook_reference(self) -> TrainingHook | str | None:
        """The registered callable, else the ``TRAINING_HOOK`` path (imported where it runs)."""
        with self._lock:
            return self._hook if self._hook is not None else self._hook_path

    def note_requested(self) -> None:
        with self._lock:
            self._status["requested"] += 1
            if self._status["state"] in ("idle", "succeeded", "failed", "skipped: no training hook registered"):
                self._status["state"] = "queued"

    def run(
        self,
        project_id: Any,
        label_config: str | None,
        event: Mapping[str, Any],
        class_mask_tags: Sequence[ClassMaskTag] = (),
    ) -> dict[str, Any]:
        """Run the hook now (called from the background queue); returns the status.

        ``class_mask_tags``: the label config's class-mask tags as serving resolved them.
        """
        hook = self._hook_reference()
        if hook is None:
            logger.warning("START_TRAINING received but no training hook is registered (TRAINING_HOOK)")
            with self._lock:
                self._status["state"] = "skipped: no training hook registered"
                return dict(self._status)
        try:
            project = int(project_id) if project_id is not None else None
        except (TypeError, ValueError):
            project = None
        self._reconcile_before_training(project)
        request = TrainingRequest(
            project_id=project,
            label_config=label_config,
            annotations=self.store.current(project),
            model_dir=self.runtime.config.model_dir,
            checkpoint_dir=self.runtime.checkpoints.directory,
            preset=self.runtime.config.model_preset,
            event=event,
            images=self.image_source_for(project),
            class_mask_tags=tuple(class_mask_tags),
        )
        started = time.monotonic()
        with self._lock:
            self._status.update(state="running", last_started_at=_now())
        logger.info("training started: project %s, %d annotations", project, len(request.annotations))
        try:
            result = self.runtime.run_training(hook, request)
        except Exception as error:
            logger.exception("training hook failed")
            return self._finish_failed(f"{type(error).__name__}: {error}", started)
        self.runtime.forget_facades()  # the next prediction loads the newest checkpoint
        with self._lock:
            self._status.update(
                state="succeeded",
                runs=self._status["runs"] + 1,
                last_finished_at=_now(),
                last_duration_s=round(time.monotonic() - started, 3),
                last_error=None,
                last_result=_jsonable(result),
            )
            logger.info("training finished in %.1f s", self._status["last_duration_s"])
            return dict(self._status)

    def _reconcile_before_training(self, project: int | None) -> None:
        """Store the corrections Label Studio has and the store lacks; a failure is reported, not fatal."""
        if self.reconcile is None or project is None:
            return
        try:
            summary = self.reconcile(project)
        except Exception as error:  # Label Studio unreachable: train on what is stored
            logger.warning("reconciling project %s with Label Studio failed: %s", project, error)
            with self._lock:
                self._status["last_reconcile"] = {"project": project, "error": f"{type(error).__name__}: {error}"}
            return
        with self._lock:
            self._status["last_reconcile"] = dataclasses.asdict(summary)

    def _finish_failed(self, message: str, started: float) -> dict[str, Any]:
        with self._lock:
            self._status.update(
                state="failed",
                runs=self._status["runs"] + 1,
                failures=self._status["failures"] + 1,
                last_finished_at=_now(),
                last_duration_s=round(time.monotonic() - started, 3),
                last_error=message,
            )
            return dict(self._status)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {**self._status, "hook_registered": self.has_hook}


def _jsonable(value: Any) -> Any:
    """A JSON-friendly copy of a hook's return value (paths and other objects as strings)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)
