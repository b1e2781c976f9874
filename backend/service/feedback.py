"""Acceptance of the served pre-labels, measured from the annotations Label Studio sends.

For each annotation stored by the webhook (created or updated) that started from a prediction
(Label Studio's ``parent_prediction``), a background job reads that prediction through Label
Studio's API (``GET /api/predictions/<id>/``, with the operator's ``LABEL_STUDIO_URL`` and
``LABEL_STUDIO_API_KEY``), compares it with the annotation (``backend.service.acceptance``) and
keeps the result in ``MODEL_DIR/acceptance/project-<id>/annotation-<id>.json`` (rewritten when the
annotation is updated). ``GET /metrics`` shows the per-project summary under ``acceptance``.

Without Label Studio credentials nothing is measured (``acceptance_jobs.unavailable`` counts the
annotations); a prediction that cannot be read is counted under ``acceptance_jobs.errors``, and
one that belongs to another task than the annotation (a webhook body is anyone's to send) under
``acceptance_jobs.mismatched``, unread.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from label_studio_sdk.label_interface import LabelInterface

from .acceptance import AcceptanceSummary, TaskAcceptance, task_acceptance
from .adapters.base import LabelConfigError, control_mode, is_smart_tool, segment_category
from .metrics import ServiceMetrics
from .reconcile import LabelStudioAnnotations, ReconcileError

logger = logging.getLogger(__name__)

SHAPE_TAGS = ("BrushLabels", "PolygonLabels")


def shape_methods(label_config: str) -> tuple[dict[str, str], dict[str, str]]:
    """``(tag -> method, zero-guidance tag -> its category)`` of a label config's pre-labelled tags."""
    interface = LabelInterface(label_config)
    methods, categories = {}, {}
    for control in interface.controls:
        if control.tag not in SHAPE_TAGS or is_smart_tool(control):
            continue
        try:
            methods[control.name] = control_mode(control, interface)
        except LabelConfigError:
            continue
        category = segment_category(control, interface)
        if category is not None:
            categories[control.name] = category
    return methods, categories


class AcceptanceTracker:
    """Measures each annotation's acceptance in the background and sums them for ``/metrics``."""

    def __init__(
        self, root: Path, source: Callable[[], LabelStudioAnnotations | None], metrics: ServiceMetrics
    ) -> None:
        self.root = root
        self.source = source
        self.metrics = metrics
        # path -> ((mtime_ns, size), parsed result): /metrics re-reads only the files that changed
        self._parsed: dict[Path, tuple[tuple[int, int], TaskAcceptance]] = {}
        self._parsed_lock = threading.Lock()

    def wanted(self, annotation: dict) -> bool:
        """Whether an annotation started from a prediction (there is something to compare)."""
        parent = annotation.get("parent_prediction")
        return isinstance(parent, int) and not isinstance(parent, bool) and parent > 0

    def measure(self, annotation: dict, project_id: int | None, label_config: str) -> TaskAcceptance | None:
        """Background job: compare the annotation with its prediction and keep the result."""
        if project_id is None or not self.wanted(annotation):
            return None
        source = self.source()
        if source is None:
            self.metrics.increment("acceptance_jobs", "unavailable")
            return None
        try:
            prediction = source.prediction(int(annotation["parent_prediction"]))
            if prediction.get("task") != annotation.get("task"):
                # a webhook body is anyone's: never read a prediction of another task into /metrics
                self.metrics.increment("acceptance_jobs", "mismatched")
                logger.warning(
                    "acceptance of annotation %s: its parent prediction belongs to task %r, not %r",
                    annotation.get("id"),
                    prediction.get("task"),
                    annotation.get("task"),
                )
                return None
            methods, categories = shape_methods(label_config)
            result = task_acceptance(
                prediction.get("result") or [],
                annotation.get("result") or [],
                methods,
                model_version=prediction.get("model_version"),
                categories=categories,
            )
        except (ReconcileError, ValueError, TypeError, KeyError) as error:
            self.metrics.increment("acceptance_jobs", "errors")
            logger.warning("acceptance of annotation %s: %s", annotation.get("id"), error)
            return None
        self._write(int(project_id), int(annotation["id"]), result)
        self.metrics.increment("acceptance_jobs", "measured")
        return result

    def _write(self, project_id: int, annotation_id: int, result: TaskAcceptance) -> None:
        folder = self.root / f"project-{project_id}"
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as handle:
            json.dump(result.to_dict(), handle)
        os.replace(handle.name, folder / f"annotation-{annotation_id}.json")

    def summary(self) -> dict[str, Any]:
        """``{project id: AcceptanceSummary.to_dict()}`` of everything measured so far.

        Each file is parsed once: later calls stat it and read it again only when it changed
        (``/metrics`` is anyone's to request, and a project gathers one file per annotation).
        """
        projects: dict[str, Any] = {}
        if not self.root.is_dir():
            return projects
        with self._parsed_lock:
            seen: set[Path] = set()
            for folder in sorted(self.root.glob("project-*")):
                tasks = []
                for path in sorted(folder.glob("annotation-*.json")):
                    seen.add(path)
                    result = self._read(path)
                    if result is not None:
                        tasks.append(result)
                projects[folder.name.removeprefix("project-")] = AcceptanceSummary.of(tasks).to_dict()
            for gone in self._parsed.keys() - seen:
                del self._parsed[gone]
        return projects

    def _read(self, path: Path) -> TaskAcceptance | None:
        """The result kept in ``path``, parsed again only if its mtime or size changed (None: unreadable)."""
        try:
            status = path.stat()
            stamp = (status.st_mtime_ns, status.st_size)
            cached = self._parsed.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            result = TaskAcceptance.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            self._parsed.pop(path, None)
            return None
        self._parsed[path] = (stamp, result)
        return result
