"""Reconciling the annotation store with Label Studio, so no correction is lost to a missed webhook.

Label Studio sends each webhook once and ignores the answer: an annotation saved while the backend
was down, restarting or out of disk never reaches the store. On ``START_TRAINING`` (and, with
``RECONCILE_INTERVAL``, on a timer) the backend reads the project's annotations through Label
Studio's API with the operator's key (``LABEL_STUDIO_URL`` + ``LABEL_STUDIO_API_KEY``; never a
``/setup`` hostname) and brings the store in line: versions it lacks are stored (the same
deduplicated, crash-safe writes as the webhooks), annotations Label Studio no longer has get a
tombstone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import requests

from .annotation_store import AnnotationStore
from .ls_auth import LabelStudioAuth

logger = logging.getLogger(__name__)

__all__ = ["LabelStudioAnnotations", "ReconcileSummary", "reconcile_project"]

RECONCILED_EVENT = "RECONCILED"


class ReconcileError(RuntimeError):
    """Label Studio's annotations could not be read; the store is left as it was."""


@dataclass(frozen=True)
class ReconcileSummary:
    """What one reconciliation did: annotations read from Label Studio, versions stored, tombstones."""

    project_id: int
    annotations: int
    stored: int
    deleted: int


class LabelStudioAnnotations:
    """A project's label config and annotated tasks, read through Label Studio's API."""

    def __init__(self, auth: LabelStudioAuth, session: requests.Session, timeout_s: float = 120.0) -> None:
        self.auth = auth
        self.session = session
        self.timeout_s = timeout_s

    def _get(self, path: str) -> Any:
        url = self.auth.base_url + path
        try:
            response = self.session.get(
                url, headers=self.auth.headers_for(url), timeout=self.timeout_s, allow_redirects=False
            )
        except requests.RequestException as error:
            raise ReconcileError(
                f"could not reach Label Studio for {path.split('?')[0]}: {type(error).__name__}"
            ) from None
        if response.status_code != 200:
            raise ReconcileError(f"Label Studio answered {response.status_code} for {path.split('?')[0]}")
        try:
            return response.json()
        except ValueError:
            raise ReconcileError(f"Label Studio's answer for {path.split('?')[0]} is not JSON") from None

    def label_config(self, project_id: int) -> str | None:
        project = self._get(f"/api/projects/{int(project_id)}")
        config = project.get("label_config") if isinstance(project, dict) else None
        return config if isinstance(config, str) else None

    def prediction(self, prediction_id: int) -> dict:
        """One stored prediction (its ``result`` and ``model_version``)."""
        prediction = self._get(f"/api/predictions/{int(prediction_id)}/")
        if not isinstance(prediction, dict):
            raise ReconcileError(f"prediction {int(prediction_id)}: Label Studio's answer is not an object")
        return prediction

    def annotated_tasks(self, project_id: int) -> list[dict]:
        """Every task of the project that has annotations, with them (Label Studio's JSON export)."""
        tasks = self._get(f"/api/projects/{int(project_id)}/export?exportType=JSON&download_all_tasks=false")
        if not isinstance(tasks, list):
            raise ReconcileError("Label Studio's export is not a list of tasks")
        return [task for task in tasks if isinstance(task, dict)]


def reconcile_project(store: AnnotationStore, source: LabelStudioAnnotations, project_id: int) -> ReconcileSummary:
    """Bring ``project_id``'s stored annotations in line with Label Studio's.

    Raises:
        ReconcileError: Label Studio could not be read (nothing is changed then).
    """
    label_config = source.label_config(project_id)
    tasks = source.annotated_tasks(project_id)
    pending, seen = [], set()
    for task in tasks:
        task_record = {key: task[key] for key in ("id", "data", "project") if key in task}
        for annotation in task.get("annotations") or []:
            if not isinstance(annotation, dict) or "id" not in annotation:
                continue
            annotation = {**annotation, "task": annotation.get("task", task.get("id")), "project": project_id}
            try:
                pending.append(
                    store.prepare(
                        annotation,
                        event=RECONCILED_EVENT,
                        project_id=project_id,
                        task=task_record,
                        label_config=label_config,
                    )
                )
            except ValueError as error:
                logger.warning("reconcile: project %s: annotation %s skipped: %s", project_id, annotation["id"], error)
                continue
            seen.add(int(annotation["id"]))
    stored = sum(store.commit(item).stored for item in pending)
    gone = [record["annotation_id"] for record in store.current(project_id) if record["annotation_id"] not in seen]
    for annotation_id in gone:
        store.delete(annotation_id, project_id=project_id, event=RECONCILED_EVENT)
    summary = ReconcileSummary(project_id, len(pending), stored, len(gone))
    if stored or gone:
        logger.info("reconcile: project %s: %d versions stored, %d tombstones", project_id, stored, len(gone))
    return summary
