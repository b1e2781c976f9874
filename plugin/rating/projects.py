"""Creating and filling the rating project: one task per segment, ``raters`` annotations each."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from backend.evaluation.rating import RATERS_PER_SEGMENT
from plugin.connection import LabelStudioConnection
from plugin.errors import PluginError
from plugin.importing import stored_upload_name, uploaded_file_name
from plugin.project import find_or_create_project
from plugin.rating.config import (
    IMAGE_KEY,
    LINK_KEYS,
    RATING_CONTROL,
    is_rating_config,
    rating_instruction_html,
    rating_label_config,
)
from plugin.rating.render import decode_image, rating_image
from plugin.rating.segments import RatingSegment, predicted_segments

UPLOAD_BATCH = 20  # rendered PNGs per upload request


def default_title(source_project_id: int) -> str:
    """The rating project's title (Label Studio allows 50 characters)."""
    return f"Rating of project {source_project_id}"


@dataclass(frozen=True)
class RatingSetup:
    """What `prepare_rating_project` did.

    Attributes:
        project_id: the rating project.
        created: whether it was created now.
        source_project_id: the project whose predictions are rated.
        raters: annotations asked per task (``maximum_annotations``).
        segments: segments of the source found (tasks the rating project should hold).
        created_task_ids: rating tasks created now.
        existing_tasks: segments that already had a rating task.
        regions_without_text: predicted regions skipped (no text or empty mask).
    """

    project_id: int
    created: bool
    source_project_id: int
    raters: int
    segments: int
    created_task_ids: list[int]
    existing_tasks: int
    regions_without_text: int

    def to_dict(self) -> dict:
        return {
            "project_id": self.project_id,
            "created": self.created,
            "source_project_id": self.source_project_id,
            "raters": self.raters,
            "segments": self.segments,
            "created_task_ids": self.created_task_ids,
            "existing_tasks": self.existing_tasks,
            "regions_without_text": self.regions_without_text,
        }


def configure_overlap(connection: LabelStudioConnection, project_id: int, raters: int) -> None:
    """Ask for ``raters`` annotations of every task from distinct annotators, and show the instruction.

    ``maximum_annotations`` is the task's overlap (Label Studio: "number of distinct annotators that
    processed the current task"); ``overlap_cohort_percentage=100`` puts every task in the cohort
    that gets that overlap (below 100 %, the other tasks get overlap 1). Skipping is switched off
    and a rating is required: the paper's raters answered every question.
    """
    project = connection.call(
        connection.client.projects.update,
        project_id,
        maximum_annotations=raters,
        overlap_cohort_percentage=100,
        expert_instruction=rating_instruction_html(),
        show_instruction=True,
        show_skip_button=False,
        enable_empty_annotation=False,
    )
    answered = (getattr(project, "maximum_annotations", None), getattr(project, "overlap_cohort_percentage", None))
    if answered != (raters, 100):
        raise PluginError(
            f"project {project_id}: asked for maximum_annotations={raters} and overlap_cohort_percentage=100, "
            f"Label Studio answered {answered}"
        )


@dataclass(frozen=True)
class ExistingRatingTasks:
    """The tasks a rating project already holds.

    Attributes:
        linked: segment keys ``(source task, region)`` that have a complete task.
        unlinked: ``{upload name: (task id, image URL)}`` of tasks uploaded by an interrupted
            run before their data was written.
    """

    linked: frozenset[tuple[int, str]]
    unlinked: dict[str, tuple[int, str]]


def existing_rating_tasks(
    connection: LabelStudioConnection, project_id: int, source_project_id: int
) -> ExistingRatingTasks:
    """Read the rating project's tasks; refuse a project that rates another source project."""
    pager = connection.call(connection.client.tasks.list, project=project_id, page_size=500)
    linked: set[tuple[int, str]] = set()
    unlinked: dict[str, tuple[int, str]] = {}
    for task in connection.call(list, pager):
        data = task.data or {}
        if all(key in data for key in LINK_KEYS):
            if int(data["source_project"]) != source_project_id:
                raise PluginError(
                    f"project {project_id} already rates project {data['source_project']}, not "
                    f"{source_project_id}: choose another --title"
                )
            linked.add((int(data["source_task"]), str(data["region"])))
        else:
            image_url = str(data.get(IMAGE_KEY, ""))
            name = uploaded_file_name(image_url)
            if name:
                unlinked[name] = (task.id, image_url)
    return ExistingRatingTasks(linked=frozenset(linked), unlinked=unlinked)


def _segment_images(connection: LabelStudioConnection, segments: Sequence[RatingSegment]):
    """Yield ``(segment, rendered (H, 2W + gap, 3) uint8)``, downloading each source image once
    (segments come grouped by task)."""
    current_source, current_image = None, None
    for segment in segments:
        if segment.source_image != current_source:
            where = f"task {segment.source_task} image {segment.source_image}"
            current_source = segment.source_image
            current_image = decode_image(connection.download(segment.source_image), where)
        if current_image.shape[:2] != segment.mask.shape:
            raise PluginError(
                f"task {segment.source_task}, region {segment.region}: mask {segment.mask.shape[1]}x"
                f"{segment.mask.shape[0]} but image {current_image.shape[1]}x{current_image.shape[0]}"
            )
        yield segment, rating_image(current_image, segment.mask)


def prepare_rating_project(
    connection: LabelStudioConnection,
    source_project_id: int,
    raters: int = RATERS_PER_SEGMENT,
    title: str | None = None,
    text_control: str | None = None,
    upload_batch: int = UPLOAD_BATCH,
) -> RatingSetup:
    """Create (or complete) the rating project of a source project's predicted segments.

    1. read the source's segments (`predicted_segments`);
    2. find the project titled ``title`` (default ``Rating of project <id>``) or create it
       with `rating_label_config`, then set its overlap (`configure_overlap`);
    3. render each segment without a task (`rating_image`) and upload the PNGs,
       ``upload_batch`` per request: Label Studio makes one task per file;
    4. write each new task's data (`RatingSegment.task_data`).

    Safe to repeat: segments that already have a task are skipped, and tasks uploaded by an
    interrupted run (step 3 done, step 4 not) get their data without a second upload.

    Raises:
        PluginError: see `predicted_segments`; ``raters < 1``; a project of that title that is
            not a rating project, or rates another project.
    """
    if raters < 1:
        raise PluginError(f"--raters must be at least 1, got {raters}")
    if upload_batch < 1:
        raise PluginError(f"upload batch must be at least 1, got {upload_batch}")
    source = predicted_segments(connection, source_project_id, text_control)
    title = title or default_title(source_project_id)
    handle = find_or_create_project(
        connection,
        title,
        rating_label_config(),
        description=f"0-3 rating of the predicted segments of project {source_project_id} (zero-guidance appendix F)",
    )
    if not handle.created and not is_rating_config(handle.label_config):
        raise PluginError(
            f"project {handle.id} ({title!r}) exists and is not a rating project (its label config is not "
            f'one <Image name="{IMAGE_KEY}"> rated by one <Choices name="{RATING_CONTROL}">): choose another --title'
        )
    configure_overlap(connection, handle.id, raters)

    existing = existing_rating_tasks(connection, handle.id, source_project_id)
    pending = [segment for segment in source.segments if segment.key not in existing.linked]
    to_render = [segment for segment in pending if stored_upload_name(segment.file_name) not in existing.unlinked]
    if to_render:
        with tempfile.TemporaryDirectory(prefix="rating-") as folder:
            batch: list[Path] = []
            for segment, picture in _segment_images(connection, to_render):
                path = Path(folder) / segment.file_name
                Image.fromarray(picture).save(path)
                batch.append(path)
                if len(batch) == upload_batch:
                    connection.upload_files(handle.id, batch)
                    batch = []
            if batch:
                connection.upload_files(handle.id, batch)
        existing = existing_rating_tasks(connection, handle.id, source_project_id)
    created: list[int] = []
    for segment in pending:
        found = existing.unlinked.get(stored_upload_name(segment.file_name))
        if found is None:
            raise PluginError(
                f"uploaded {segment.file_name} for task {segment.source_task}, region {segment.region}, "
                f"but project {handle.id} has no task with that image"
            )
        task_id, image_url = found
        connection.call(connection.client.tasks.update, str(task_id), data=segment.task_data(image_url))
        created.append(task_id)
    return RatingSetup(
        project_id=handle.id,
        created=handle.created,
        source_project_id=source_project_id,
        raters=raters,
        segments=len(source.segments),
        created_task_ids=sorted(created),
        existing_tasks=len(source.segments) - len(pending),
        regions_without_text=source.regions_without_text,
    )
