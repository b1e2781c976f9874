"""The contract of a training hook: what it gets (:class:`TrainingRequest`) and how it is named.

A *training hook* is any callable taking a :class:`TrainingRequest` and returning an optional
JSON-able summary. It is registered with ``create_app(training_hook=...)`` or
``TRAINING_HOOK=package.module:function`` and runs next to the models (in the model process).
Everything in a request is plain data, so it crosses the pipe to the model process as is.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .images import ImageSource
from .vocabulary import ClassMaskTag

__all__ = ["TrainingHook", "TrainingRequest", "import_hook"]


@dataclass(frozen=True)
class TrainingRequest:
    """What a training hook gets.

    Attributes:
        annotations: the project's current human annotations, as stored by ``AnnotationStore``
            (records with ``annotation``, ``task``, ``project_id``...); turn one into regions
            with :func:`backend.service.training.annotation_regions`.
        class_mask_tags: the label config's class-mask tags as serving resolved them (classes
            and FMbSeg settings): train exactly what is served.
        images: loads the tasks' images (``request.images.fetcher().load(reference).pixels``),
            or ``None`` when the service has no way to fetch them.
        checkpoint_dir: where to write alignment checkpoints; the newest file there is served.
    """

    project_id: int | None
    label_config: str | None
    annotations: list[dict]
    model_dir: Path
    checkpoint_dir: Path
    preset: str
    event: Mapping[str, Any]
    images: ImageSource | None = None
    class_mask_tags: tuple[ClassMaskTag, ...] = field(default_factory=tuple)


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
