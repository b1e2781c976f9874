"""What the pre-labelling job needs from Label Studio's API, with the operator's key.

* the project (its label config): ``GET /api/projects/<id>``;
* its tasks in pages, each with the model versions of the predictions it holds:
  ``GET /api/tasks?project=<id>&page=N&page_size=M&include=id,data,predictions_model_versions``
  with a Data Manager query that orders by id and makes Label Studio compute
  ``predictions_model_versions`` (a filter on that column with no value filters nothing but
  annotates it; without one the column comes back empty);
* one task's predictions when that column is not conclusive: ``GET /api/predictions/?task=<id>``;
* the bulk import of predictions: ``POST /api/projects/<id>/import/predictions`` with a list of
  ``{"task", "result", "score", "model_version"}`` (Label Studio answers ``{"created": N}``).

Authentication is :class:`~backend.service.ls_auth.LabelStudioAuth` (legacy token or personal access
token, refreshed on 401), and the key goes only to ``LABEL_STUDIO_URL``'s origin: requests never
follow redirects. Transient failures (no connection, 502/503/504) are retried a few times.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import requests

from ..service.ls_auth import LabelStudioAuth, LabelStudioAuthError

logger = logging.getLogger(__name__)

# Label Studio's Data Manager cuts the column at this many characters (CHAR_LIMITS).
VERSIONS_COLUMN_LIMIT = 500
TRANSIENT_STATUSES = (502, 503, 504)
# Filters nothing, but makes the Data Manager compute predictions_model_versions for every task.
ANNOTATE_VERSIONS_QUERY = {
    "filters": {
        "conjunction": "and",
        "items": [
            {
                "filter": "filter:tasks:predictions_model_versions",
                "operator": "not_contains",
                "type": "List",
                "value": [],
            }
        ],
    },
    "ordering": ["tasks:id"],
}


class LabelStudioError(RuntimeError):
    """Label Studio could not be reached or refused a request (the message says which)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ListedTask:
    """One task as listed: its id, its data, and the model versions of its predictions
    (``None`` when the listing could not tell, e.g. a column cut at Label Studio's limit)."""

    id: int
    data: dict
    versions: frozenset[str] | None

    def as_task(self, project_id: int) -> dict:
        """The task dict the backend's ``predict_task`` takes (what ``/predict`` receives)."""
        return {"id": self.id, "data": self.data, "project": project_id}


@dataclass(frozen=True)
class TaskPage:
    total: int  # tasks in the project
    tasks: list[ListedTask]


def parse_versions(column: Any) -> frozenset[str] | None:
    """Label Studio's ``predictions_model_versions`` column -> the set of versions.

    SQLite gives ``"v1,v2"``, PostgreSQL ``"v1, v2"``; ``""`` is none. A column at the length limit
    may be cut: ``None`` (ask for the task's predictions instead).
    """
    if column is None or column == "":
        return frozenset()
    if isinstance(column, list):
        return frozenset(str(v).strip() for v in column if v is not None and str(v).strip())
    if not isinstance(column, str) or len(column) >= VERSIONS_COLUMN_LIMIT:
        return None
    return frozenset(part.strip() for part in column.split(",") if part.strip())


class LabelStudioClient:
    """The few Label Studio API calls of the job (see the module docstring)."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        session: requests.Session | None = None,
        timeout_s: float = 120.0,
        attempts: int = 4,
        backoff_s: float = 1.0,
    ) -> None:
        self.session = session or requests.Session()
        self.auth = LabelStudioAuth(url, api_key, session=self.session)
        self.base_url = self.auth.base_url
        self.timeout_s = timeout_s
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s

    def __repr__(self) -> str:
        return f"LabelStudioClient({self.base_url!r})"

    # ---- transport ------------------------------------------------------------------------

    def request(
        self, method: str, path: str, *, params: dict | None = None, body: Any = None, retry: bool = True
    ) -> Any:
        """``method path`` as JSON; with ``retry``, retried on no connection and 502/503/504; once
        more after a 401 with a refreshed token (a refused request changed nothing). Raises
        :class:`LabelStudioError`."""
        url = self.base_url + path
        attempts = self.attempts if retry else 1
        attempt = 0
        refreshed = False
        while True:
            attempt += 1
            try:
                headers = self.auth.headers_for(url)
            except LabelStudioAuthError as error:
                raise LabelStudioError(str(error)) from None
            try:
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    json=body,
                    headers=headers,
                    timeout=self.timeout_s,
                    allow_redirects=False,
                )
            except requests.RequestException as error:
                if attempt >= attempts:
                    raise LabelStudioError(
                        f"could not reach Label Studio at {self.base_url} for {method} {path}: {type(error).__name__}"
                    ) from None
                self._pause(attempt)
                continue
            if response.status_code == 401 and not refreshed and self.auth.invalidate():
                refreshed = True
                attempt -= 1  # the refused request does not count
                continue
            if response.status_code in TRANSIENT_STATUSES and attempt < attempts:
                self._pause(attempt)
                continue
            if response.status_code >= 300:
                detail = response.text[:300].replace("\n", " ")
                raise LabelStudioError(
                    f"Label Studio answered {response.status_code} to {method} {path}: {detail}",
                    status=response.status_code,
                )
            try:
                return response.json()
            except ValueError:
                raise LabelStudioError(f"Label Studio's answer to {method} {path} is not JSON") from None

    def _pause(self, attempt: int) -> None:
        time.sleep(min(30.0, self.backoff_s * 2 ** (attempt - 1)))

    # ---- calls ----------------------------------------------------------------------------

    def project(self, project_id: int) -> dict:
        project = self.request("GET", f"/api/projects/{int(project_id)}")
        if not isinstance(project, dict) or not isinstance(project.get("label_config"), str):
            raise LabelStudioError(f"project {project_id} has no label config")
        return project

    def task_pages(self, project_id: int, page_size: int = 500) -> Iterator[TaskPage]:
        """Every task of the project, ``page_size`` at a time, in id order."""
        page = 1
        seen = 0
        while True:
            params = {
                "project": int(project_id),
                "page": page,
                "page_size": int(page_size),
                "include": "id,data,predictions_model_versions",
                "query": json.dumps(ANNOTATE_VERSIONS_QUERY),
            }
            try:
                answer = self.request("GET", "/api/tasks", params=params)
            except LabelStudioError as error:
                if error.status == 404 and page > 1:  # "Invalid page.": past the last one
                    return
                raise
            if not isinstance(answer, dict) or not isinstance(answer.get("tasks"), list):
                raise LabelStudioError("Label Studio's task list has no 'tasks'")
            tasks = [self._listed(item) for item in answer["tasks"] if isinstance(item, dict)]
            total = int(answer.get("total") or 0)
            yield TaskPage(total=total, tasks=tasks)
            seen += len(answer["tasks"])
            if not answer["tasks"] or seen >= total:
                return
            page += 1

    def tasks_by_id(self, project_id: int, task_ids: Sequence[int]) -> Iterator[ListedTask]:
        """The named tasks (``--tasks``), each checked to belong to the project."""
        for task_id in task_ids:
            task = self.request("GET", f"/api/tasks/{int(task_id)}")
            if not isinstance(task, dict) or int(task.get("project") or -1) != int(project_id):
                raise LabelStudioError(f"task {task_id} is not a task of project {project_id}")
            predictions = task.get("predictions") or []
            versions = frozenset(str(p.get("model_version")) for p in predictions if isinstance(p, dict))
            yield ListedTask(id=int(task["id"]), data=task.get("data") or {}, versions=versions)

    def prediction_versions(self, task_id: int) -> frozenset[str]:
        """The model versions of the predictions task ``task_id`` holds."""
        answer = self.request("GET", "/api/predictions/", params={"task": int(task_id)})
        items = answer.get("results", []) if isinstance(answer, dict) else answer
        return frozenset(str(p.get("model_version")) for p in items or [] if isinstance(p, dict))

    def import_predictions(self, project_id: int, predictions: list[dict]) -> int:
        """Bulk-import ``predictions`` (each with ``task`` and ``model_version``); how many were created."""
        if not predictions:
            return 0
        # Not retried here: a request that timed out may have been stored; the job checks first.
        answer = self.request(
            "POST", f"/api/projects/{int(project_id)}/import/predictions", body=predictions, retry=False
        )
        created = answer.get("created") if isinstance(answer, dict) else None
        return int(created) if isinstance(created, int) else len(predictions)

    @staticmethod
    def _listed(item: dict) -> ListedTask:
        return ListedTask(
            id=int(item["id"]),
            data=item.get("data") if isinstance(item.get("data"), dict) else {},
            versions=parse_versions(item.get("predictions_model_versions")),
        )
