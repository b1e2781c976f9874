"""A small base class with the contract of label-studio-ml's ``LabelStudioMLBase``.

Why not depend on ``label-studio-ml``: its newest PyPI release (1.0.9, 2023) pins Flask 1.1.2,
werkzeug 2.0.2 and Jinja2 3.0.3 (incompatible with the Flask 3 this service runs on), imports
``redis`` and ``rq`` without declaring them, and ignores ``START_TRAINING``. What we need from it
is a contract, not code, so we keep the contract and write the dozen lines ourselves:

* ``__init__(label_config, project_id)`` parses the label config with label-studio-sdk's
  ``LabelInterface`` and calls :meth:`setup`;
* :meth:`predict` ``(tasks, context) -> ModelResponse`` with one prediction per task, in order;
* :meth:`fit` ``(event, data)`` receives Label Studio webhook events
  (``ANNOTATION_CREATED``, ``ANNOTATION_UPDATED``, ``START_TRAINING``, ...);
* :attr:`model_version` names what produced the predictions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from label_studio_sdk.label_interface import LabelInterface


@dataclass
class ModelResponse:
    """What :meth:`MLBackendBase.predict` returns.

    ``predictions``: one entry per task, in task order: a prediction dict
    ``{"result": [...], "score": float, "model_version": str}``, or ``[]`` for a task that
    gets no prediction at all. ``warnings``: problems worth telling the user (failed tasks,
    unsupported labels). ``failed_tasks``: how many tasks failed.
    """

    predictions: list[Any]
    model_version: str
    warnings: list[str] = field(default_factory=list)
    failed_tasks: int = 0


class MLBackendBase:
    """Base of the service's model classes (see the module docstring for the contract)."""

    def __init__(self, label_config: str, project_id: str | None = None) -> None:
        if not isinstance(label_config, str) or not label_config.strip():
            raise ValueError("label_config must be a non-empty XML string")
        self.label_config = label_config
        self.project_id = project_id
        self.label_interface = LabelInterface(label_config)
        self.setup()

    def setup(self) -> None:
        """Prepare per-project state (called once from ``__init__``); cheap, no model loading."""

    @property
    def model_version(self) -> str:
        return "0.0.0"

    def predict(self, tasks: list[dict], context: dict | None = None, **kwargs: Any) -> ModelResponse:
        """Predictions for ``tasks`` (Label Studio task dicts); ``context`` is set in interactive mode."""
        raise NotImplementedError(f"{type(self).__name__}.predict")

    def fit(self, event: str, data: dict, **kwargs: Any) -> dict | None:
        """Handle a Label Studio event (runs in the background queue, not in the request)."""
        return None
