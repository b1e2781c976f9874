"""The predicted zero-guidance segments of a source project: brush regions with a text.

Task data of the rating task made for a segment (the link back to the source)::

    {"image": "/data/upload/12/0a1b2c3d-segment-7-5f0c....png",  # the rendered PNG
     "text": "a yellow disc",                                     # the predicted text T_i
     "source_project": 3, "source_task": 7, "region": "pred1",   # where the segment comes from
     "source_image": "/data/upload/3/9f8e7d6c-shapes.png",
     "image_name": "7-shapes.png",    # the name `python -m plugin export` gives that image
     "prediction": 41, "model_version": "zeroguide-tiny-...",
     "label": null, "predicted_text": null}  # rating reassigned labels: "text" = "label" = T_i*
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from plugin.connection import LabelStudioConnection
from plugin.dataset import image_file_name
from plugin.errors import PluginError
from plugin.rating.config import IMAGE_KEY, TEXT_KEY
from plugin.rating.lookup import get_project
from plugin.regions import Region, regions_from_result
from plugin.schema import LabelingSchema


@dataclass
class RatingSegment:
    """One predicted segment to be rated.

    Attributes:
        source_project, source_task: where it was predicted.
        region: the prediction's region id (shared by its brush and text results).
        text: the predicted text T_i.
        source_image: the source task's image reference.
        image_name: ``<task id>-<file name>``, the name ``plugin export`` gives that image.
        prediction: id of the prediction holding the region.
        model_version: that prediction's model version.
        mask: ``(H, W)`` bool at the image's resolution.
        label: the reassigned test label T_i* shown and rated instead of the predicted text
            (section 4.2, ``rate setup --target reassigned``); ``None``: the text T_i is rated.
        predicted_text: with a ``label``, the predicted text it replaced.
    """

    source_project: int
    source_task: int
    region: str
    text: str
    source_image: str
    image_name: str
    prediction: int
    model_version: str | None
    mask: np.ndarray = field(repr=False)
    label: str | None = None
    predicted_text: str | None = None

    def relabelled(self, label: str) -> "RatingSegment":
        """This segment with the reassigned label T_i* to rate in place of its text."""
        return dataclasses.replace(self, text=label, label=label, predicted_text=self.text)

    @property
    def key(self) -> tuple[int, str]:
        return (self.source_task, self.region)

    @property
    def file_name(self) -> str:
        """Name of the rendered PNG: task id plus a digest of the region id (ids may hold any character)."""
        digest = hashlib.sha1(f"{self.source_project}/{self.source_task}/{self.region}".encode()).hexdigest()[:12]
        return f"segment-{self.source_task}-{digest}.png"

    def task_data(self, image_url: str) -> dict:
        """The rating task's data (see the module docstring)."""
        return {
            IMAGE_KEY: image_url,
            TEXT_KEY: self.text,
            "source_project": self.source_project,
            "source_task": self.source_task,
            "region": self.region,
            "source_image": self.source_image,
            "image_name": self.image_name,
            "prediction": self.prediction,
            "model_version": self.model_version,
            "label": self.label,
            "predicted_text": self.predicted_text,
        }


@dataclass(frozen=True)
class SourceSegments:
    """The segments of a source project that `prepare_rating_project` turns into tasks.

    Attributes:
        segments: brush regions with a text, in task then region order.
        predicted_tasks: tasks with at least one prediction.
        tasks: all tasks of the project.
        regions_without_text: predicted brush regions skipped because they have no text
            (e.g. FMbSeg class masks) or an empty mask.
    """

    segments: list[RatingSegment]
    predicted_tasks: int
    tasks: int
    regions_without_text: int


def newest_predictions(predictions: Iterable) -> dict[int, object]:
    """``{task id: the prediction with the highest id}``."""
    newest: dict[int, object] = {}
    for prediction in predictions:
        previous = newest.get(prediction.task)
        if previous is None or prediction.id > previous.id:
            newest[prediction.task] = prediction
    return newest


def region_text(region: Region, text_controls: Sequence[str]) -> str:
    """The first non-empty text of the region in ``text_controls`` order, or ``""``."""
    for control in text_controls:
        for text in region.texts.get(control, []):
            if str(text).strip():
                return str(text).strip()
    return ""


def predicted_segments(
    connection: LabelStudioConnection, project_id: int, text_control: str | None = None
) -> SourceSegments:
    """The predicted zero-guidance segments of a project: brush regions that have a text.

    Only the newest prediction of each task is read (what Label Studio shows by default).

    Args:
        text_control: the per-region TextArea holding the text; default: every per-region
            TextArea of the label config, first non-empty wins.

    Raises:
        PluginError: unknown project, a label config without Image/BrushLabels, no prediction
            at all, or no predicted region with a text.
    """
    project = get_project(connection, project_id)
    schema = LabelingSchema.from_config(project.label_config or "")
    if text_control is not None and text_control not in schema.text_controls:
        raise PluginError(
            f"--text-control {text_control!r}: project {project_id} has no per-region TextArea of that name "
            f"(it has {list(schema.text_controls)})"
        )
    text_controls = (text_control,) if text_control else schema.text_controls
    pager = connection.call(connection.client.tasks.list, project=project_id, page_size=500)
    tasks = {task.id: task for task in connection.call(list, pager)}
    predictions = newest_predictions(connection.call(connection.client.predictions.list, project=project_id))
    if not predictions:
        raise PluginError(
            f"project {project_id} has no predictions: pre-label it first (python -m plugin setup "
            "--backend-url ..., or 'Retrieve predictions' in Label Studio's Data Manager)"
        )
    segments: list[RatingSegment] = []
    without_text = 0
    for task_id in sorted(predictions):
        prediction = predictions[task_id]
        task = tasks.get(task_id)
        if task is None:  # a prediction of a task deleted since
            continue
        source_image = str((task.data or {}).get(schema.image_key, ""))
        for region in regions_from_result(prediction.result or [], schema):
            text = region_text(region, text_controls)
            if not text or not region.mask.any():
                without_text += 1
                continue
            segments.append(
                RatingSegment(
                    source_project=project_id,
                    source_task=task_id,
                    region=region.id,
                    text=text,
                    source_image=source_image,
                    image_name=image_file_name(task_id, source_image),
                    prediction=prediction.id,
                    model_version=getattr(prediction, "model_version", None),
                    mask=region.mask,
                )
            )
    if not segments:
        raise PluginError(
            f"project {project_id}: none of the {without_text} predicted region(s) has a text in a per-region "
            f"TextArea ({', '.join(text_controls) or 'the label config has none'}); only zero-guidance "
            "segments (brush + text) can be rated"
        )
    return SourceSegments(
        segments=segments, predicted_tasks=len(predictions), tasks=len(tasks), regions_without_text=without_text
    )
