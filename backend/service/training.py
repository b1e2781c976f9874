"""Retraining on human corrections: a hook the FMbSeg side provides, run on ``START_TRAINING``.

The service does not train anything itself. A *training hook* is any callable taking a
:class:`TrainingRequest` and returning an optional JSON-able summary (e.g. the path of the new
checkpoint). Register it with ``create_app(training_hook=...)`` or ``TRAINING_HOOK=pkg.mod:func``.
The hook should write alignment checkpoints into ``request.checkpoint_dir``: the newest file there
becomes the checkpoint FMbSeg predicts with, and its name enters ``model_version``, so Label
Studio re-predicts with the new model. Status and history are reported by ``GET /metrics``.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .annotation_store import AnnotationStore
from .images import ImageSource
from .masks import polygon_to_mask, rle_to_mask
from .runtime import ModelRuntime

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingRequest:
    """What a training hook gets.

    ``annotations``: the current human annotations of the project, as stored by
    :class:`AnnotationStore` (records with ``annotation``, ``task``, ``project_id``...); turn one
    into masks with :func:`annotation_regions`. ``images``: loads the tasks' images
    (``request.images.fetcher().load(record["task"]["data"]["image"]).pixels``), or ``None``.
    """

    project_id: int | None
    label_config: str | None
    annotations: list[dict]
    model_dir: Path
    checkpoint_dir: Path
    preset: str
    event: Mapping[str, Any]
    images: ImageSource | None = None


@dataclass
class AnnotatedRegion:
    """One region of a human annotation: its mask and what the human said about it.

    ``mask``: ``(original_height, original_width)`` bool. ``labels``: the brush/polygon labels.
    ``texts``: per-region TextArea values by control name; ``choices``: per-region Choices
    (e.g. the 0-3 rating) by control name.
    """

    region_id: str
    from_name: str
    labels: list[str]
    mask: np.ndarray
    texts: dict[str, list[str]] = field(default_factory=dict)
    choices: dict[str, list[str]] = field(default_factory=dict)


def annotation_regions(record: Mapping[str, Any]) -> list[AnnotatedRegion]:
    """The brush and polygon regions of a stored annotation record, with their linked texts/choices.

    Results of one region share an ``id`` (how Label Studio links a per-region TextArea or
    Choices to a brush); results that are not brush/polygon attach to the region with their id.
    """
    results = (record.get("annotation") or {}).get("result") or []
    regions: dict[str, AnnotatedRegion] = {}
    extras: list[dict] = []
    for result in results:
        kind = str(result.get("type", "")).lower()
        value = result.get("value") or {}
        height, width = result.get("original_height"), result.get("original_width")
        if kind in ("brushlabels", "brush") and value.get("format", "rle") == "rle" and height and width:
            mask = rle_to_mask(value["rle"], int(height), int(width))
            labels = list(value.get("brushlabels") or [])
        elif kind in ("polygonlabels", "polygon") and height and width:
            mask = polygon_to_mask(value.get("points") or [], int(height), int(width))
            labels = list(value.get("polygonlabels") or [])
        else:
            extras.append(result)
            continue
        region_id = str(result.get("id"))
        if region_id in regions:  # several brush results of one region: union
            regions[region_id].mask |= mask
        else:
            regions[region_id] = AnnotatedRegion(region_id, str(result.get("from_name")), labels, mask)
    for result in extras:
        region = regions.get(str(result.get("id")))
        value = result.get("value") or {}
        if region is None:
            continue
        if "text" in value:
            region.texts[str(result.get("from_name"))] = [str(t) for t in value["text"]]
        elif "choices" in value:
            region.choices[str(result.get("from_name"))] = [str(c) for c in value["choices"]]
    return list(regions.values())


TrainingHook = Callable[[TrainingRequest], Any]


def import_hook(path: str) -> TrainingHook:
    """``"package.module:function"`` -> the callable (``ValueError`` when it cannot be found)."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"TRAINING_HOOK={path!r}: cannot import {module_name!r}: {error}") from None
    hook = getattr(module, attribute, None)
    if not callable(hook):
        raise ValueError(f"TRAINING_HOOK={path!r}: {module_name}.{attribute} is not a callable")
    return hook


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


class TrainingCoordinator:
    """Runs the training hook (from the background queue) and keeps its status."""

    def __init__(
        self,
        store: AnnotationStore,
        runtime: ModelRuntime,
        hook: TrainingHook | None = None,
        hook_path: str | None = None,
    ) -> None:
        self.store = store
        self.runtime = runtime
        # Set by the app: project id -> where that project's images come from (for the hook).
        self.image_source_for: Callable[[int | None], ImageSource | None] = lambda project_id: None
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

    def run(self, project_id: Any, label_config: str | None, event: Mapping[str, Any]) -> dict[str, Any]:
        """Run the hook now (called from the background queue); returns the status."""
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
        request = TrainingRequest(
            project_id=project,
            label_config=label_config,
            annotations=self.store.current(project),
            model_dir=self.runtime.config.model_dir,
            checkpoint_dir=self.runtime.checkpoints.directory,
            preset=self.runtime.config.model_preset,
            event=event,
            images=self.image_source_for(project),
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
