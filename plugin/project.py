"""Projects, ML backend connections and prediction requests, each safe to repeat.

Label Studio details these functions rely on (measured with 1.23.2):

- ``POST /api/ml`` checks the backend at once (``GET /health``, ``POST /setup``) and also
  registers a webhook to ``<url>/webhook``; connecting the same URL twice would send every
  event twice, so an existing connection with the same URL is reused.
- The "Retrieve predictions" action sends all selected tasks to ``/predict`` in ONE
  request, synchronously, and gives up after ``ML_TIMEOUT_PREDICT`` (100 s). It answers 200
  even when the backend failed, and skips tasks that already have a prediction from the
  backend's current ``model_version``. So we send small batches and count afterwards.
"""

from __future__ import annotations

import base64

from dataclasses import dataclass
from typing import Sequence
from urllib.parse import urlsplit

from label_studio_sdk.core.api_error import ApiError

from plugin.connection import LabelStudioConnection, error_text
from plugin.errors import PluginError

RETRIEVE_PREDICTIONS_ACTION = "retrieve_tasks_predictions"


@dataclass(frozen=True)
class BackendSettings:
    """How Label Studio should reach the ML backend.

    Attributes:
        url: the backend's URL *as seen from Label Studio* (in docker compose the service
            name, e.g. ``http://backend:9090``).
        title: name shown in the project's Model settings.
        basic_auth_user: user for HTTP basic auth in front of the backend, or None.
        basic_auth_password: its password (both or neither).
        is_interactive: let the editor send interactive (click) requests to the backend.
    """

    url: str
    title: str = "Segmentation pre-labelling"
    basic_auth_user: str | None = None
    basic_auth_password: str | None = None
    is_interactive: bool = False

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PluginError(f"--backend-url {self.url!r} is not an http(s) URL")
        if (self.basic_auth_user is None) != (self.basic_auth_password is None):
            raise PluginError("basic auth needs both a user and a password")


def _same_url(first: str, second: str) -> bool:
    return first.rstrip("/") == second.rstrip("/")


def _normalized(config: str) -> str:
    return "".join(config.split())


@dataclass(frozen=True)
class ProjectHandle:
    """A project found or created by `find_or_create_project`.

    Attributes:
        id: project id.
        created: True when this call created it.
        label_config: the project's label config as Label Studio holds it.
    """

    id: int
    created: bool
    label_config: str


def find_or_create_project(
    connection: LabelStudioConnection, title: str, label_config: str, description: str = ""
) -> ProjectHandle:
    """Return the project titled exactly ``title``, creating it from ``label_config`` if absent.

    An existing project keeps its label config (changing it under existing annotations can
    fail or lose data); the caller can compare ``handle.label_config`` with its own.
    """
    if len(title.strip()) < 3:
        raise PluginError(f"--title {title!r}: Label Studio needs at least 3 characters")
    candidates = connection.call(list, connection.call(connection.client.projects.list, title=title))
    same_title = sorted((project for project in candidates if project.title == title), key=lambda p: p.id)
    if same_title:
        project = connection.call(connection.client.projects.get, same_title[0].id)
        return ProjectHandle(id=project.id, created=False, label_config=project.label_config or "")
    try:
        project = connection.client.projects.create(title=title, label_config=label_config, description=description)
    except ApiError as error:
        if error.status_code == 400:
            raise PluginError(f"Label Studio refused the project: {error_text(error.body)}") from error
        raise connection.explain(error) from error
    return ProjectHandle(id=project.id, created=True, label_config=project.label_config or label_config)


def config_differs(handle: ProjectHandle, label_config: str) -> bool:
    """True when the project's label config is not ``label_config`` (whitespace ignored)."""
    return _normalized(handle.label_config) != _normalized(label_config)


def connect_backend(connection: LabelStudioConnection, project_id: int, backend: BackendSettings):
    """Connect the ML backend to the project unless a backend with that URL already is.

    Returns:
        (ml_backend, created): the SDK's ``MlBackend`` record and whether it is new.
    """
    for existing in connection.call(connection.client.ml.list, project=project_id):
        if _same_url(existing.url, backend.url):
            return existing, False
    auth = {}
    if backend.basic_auth_user is not None:
        auth = dict(
            auth_method="BASIC_AUTH",
            basic_auth_user=backend.basic_auth_user,
            basic_auth_pass=backend.basic_auth_password,
        )
    try:
        created = connection.client.ml.create(
            url=backend.url,
            project=project_id,
            title=backend.title,
            is_interactive=backend.is_interactive,
            **auth,
        )
    except ApiError as error:
        if error.status_code == 400:
            raise PluginError(
                f"Label Studio could not connect the ML backend at {backend.url}: {error_text(error.body)} "
                "The URL must be reachable FROM Label Studio (e.g. http://backend:9090 inside "
                "docker compose), the backend must answer GET /health, and basic auth must match."
            ) from error
        raise connection.explain(error) from error
    if backend.basic_auth_user is not None:
        authenticate_backend_webhook(connection, project_id, backend)
    return created, True


def authenticate_backend_webhook(connection: LabelStudioConnection, project_id: int, backend: BackendSettings) -> int:
    """Give the webhook Label Studio made for the backend (``<url>/webhook``) the basic-auth header.

    Label Studio 1.23 sends ``/predict`` with the ML backend's basic auth but the webhook it
    creates for the same backend without it: behind basic auth every human correction would be
    refused (401). Returns how many webhooks were updated.
    """
    token = base64.b64encode(f"{backend.basic_auth_user}:{backend.basic_auth_password}".encode()).decode()
    target = backend.url.rstrip("/") + "/webhook"
    updated = 0
    for webhook in connection.call(connection.client.webhooks.list, project=str(project_id)):
        if _same_url(webhook.url or "", target):
            headers = {**dict(webhook.headers or {}), "Authorization": f"Basic {token}"}
            connection.call(connection.client.webhooks.update, webhook.id, headers=headers)
            updated += 1
    return updated


def request_predictions(
    connection: LabelStudioConnection, project_id: int, task_ids: Sequence[int], batch_size: int = 4
) -> None:
    """Run the "Retrieve predictions" action on ``task_ids``, ``batch_size`` tasks at a time.

    Each batch is one synchronous ``/predict`` call made by Label Studio, which gives up
    after ``ML_TIMEOUT_PREDICT`` seconds: keep batches small for slow models.
    """
    if batch_size < 1:
        raise PluginError(f"--batch-size must be at least 1, got {batch_size}")
    ids = list(task_ids)
    for start in range(0, len(ids), batch_size):
        connection.call(
            connection.client.actions.create,
            id=RETRIEVE_PREDICTIONS_ACTION,
            project=project_id,
            selected_items={"all": False, "included": ids[start : start + batch_size]},
        )


def backend_status(connection: LabelStudioConnection, backend_id: int) -> str:
    """The backend's state as Label Studio sees it, with its last error if any."""
    backend = connection.call(connection.client.ml.get, backend_id)
    status = f"{backend.readable_state} (model_version={backend.model_version!r})"
    if backend.error_message:
        status += f"; last error: {backend.error_message.strip()[:800]}"
    return status


def predicted_region_counts(connection: LabelStudioConnection, project_id: int) -> dict[int, int]:
    """``{task id: number of result items}`` of the newest prediction of each predicted task.

    A prediction with 0 items is what our backend stores for a task it failed on
    (``FAILED_TASK_REPLY=empty``), so callers report those.
    """
    newest: dict[int, tuple[int, int]] = {}
    for prediction in connection.call(connection.client.predictions.list, project=project_id):
        previous = newest.get(prediction.task)
        if previous is None or prediction.id > previous[0]:
            newest[prediction.task] = (prediction.id, len(prediction.result or []))
    return {task_id: count for task_id, (_, count) in newest.items()}
