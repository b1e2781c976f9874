"""Creating and filling the rating projects: one project per rater batch, each with every segment once."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from PIL import Image

from backend.evaluation.rating import RATERS_PER_SEGMENT
from plugin.connection import LabelStudioConnection
from plugin.errors import PluginError
from plugin.importing import stored_upload_name, uploaded_file_name
from plugin.project import find_or_create_project
from plugin.rating.config import (
    BATCH_KEY,
    BATCHES_KEY,
    IMAGE_KEY,
    LINK_KEYS,
    RATING_CONTROL,
    configured_tasks,
    is_rating_config,
    rating_instruction_html,
    rating_label_config,
)
from plugin.rating.render import decode_image, rating_image
from plugin.rating.reassigned import with_reassigned_labels
from plugin.rating.segments import RatingSegment, predicted_segments

UPLOAD_BATCH = 20  # rendered PNGs per upload request
TITLE_LIMIT = 50  # characters Label Studio allows in a project title


def default_title(source_project_id: int, reassigned: bool = False) -> str:
    """The rating projects' common title (each adds its batch, `batch_title`)."""
    if reassigned:
        return f"Rating of labels of project {source_project_id}"
    return f"Rating of project {source_project_id}"


def batch_title(title: str, batch: int, batches: int) -> str:
    """The title of rater batch ``batch`` of ``batches``: ``<title> (rater batch b/N)``."""
    return f"{title} (rater batch {batch}/{batches})"


@dataclass(frozen=True)
class BatchProject:
    """One rater batch's project, as `prepare_rating_projects` left it.

    Attributes:
        batch: 1..N.
        project_id, title: the project.
        created: whether it was created now.
        created_task_ids: rating tasks created now.
        existing_tasks: segments that already had a task in it.
    """

    batch: int
    project_id: int
    title: str
    created: bool
    created_task_ids: list[int]
    existing_tasks: int

    def to_dict(self) -> dict:
        return {
            "batch": self.batch,
            "project_id": self.project_id,
            "title": self.title,
            "created": self.created,
            "created_task_ids": self.created_task_ids,
            "existing_tasks": self.existing_tasks,
        }


@dataclass(frozen=True)
class RatingSetup:
    """What `prepare_rating_projects` did.

    Attributes:
        source_project_id: the project whose predictions are rated.
        raters: rater batches (projects), so ratings per segment.
        segments: segments of the source found (tasks each project should hold).
        regions_without_text: predicted regions skipped (no text or empty mask).
        projects: the batch projects, batch 1 first.
    """

    source_project_id: int
    raters: int
    segments: int
    regions_without_text: int
    projects: list[BatchProject]

    @property
    def project_ids(self) -> list[int]:
        return [project.project_id for project in self.projects]

    def to_dict(self) -> dict:
        return {
            "source_project_id": self.source_project_id,
            "raters": self.raters,
            "segments": self.segments,
            "regions_without_text": self.regions_without_text,
            "project_ids": self.project_ids,
            "projects": [project.to_dict() for project in self.projects],
        }


def configure_batch_project(connection: LabelStudioConnection, project_id: int) -> None:
    """One annotation per task, no instruction modal, no skipping.

    ``maximum_annotations=1`` with ``overlap_cohort_percentage=100``: each task of a batch project
    is rated once (by the batch's rater). ``show_instruction=false``: Label Studio would otherwise
    open the instructions as a modal on every "Label All Tasks"; the instruction is in the label
    config, on screen with every task (`state_task_count` writes it, and ``expert_instruction``
    behind the editor's "Instructions" button). Skipping is switched off and a rating is
    required: the paper's raters answered every question. Set before any upload: Label Studio
    gives imported tasks the project's ``maximum_annotations`` as their overlap.
    """
    project = connection.call(
        connection.client.projects.update,
        project_id,
        maximum_annotations=1,
        overlap_cohort_percentage=100,
        show_instruction=False,
        show_skip_button=False,
        enable_empty_annotation=False,
    )
    answered = (getattr(project, "maximum_annotations", None), getattr(project, "overlap_cohort_percentage", None))
    if answered != (1, 100):
        raise PluginError(
            f"project {project_id}: asked for maximum_annotations=1 and overlap_cohort_percentage=100, "
            f"Label Studio answered {answered}"
        )


def state_task_count(connection: LabelStudioConnection, project_id: int, label_config: str, tasks: int) -> None:
    """Make the project's instruction state its ``tasks`` tasks: the label config (rewritten only
    when it states another number) and ``expert_instruction``."""
    update: dict = {"expert_instruction": rating_instruction_html(tasks)}
    if configured_tasks(label_config) != tasks:
        update["label_config"] = rating_label_config(tasks)
    connection.call(connection.client.projects.update, project_id, **update)


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
    connection: LabelStudioConnection,
    project_id: int,
    source_project_id: int,
    batch: int | None = None,
    reassigned: bool | None = None,
) -> ExistingRatingTasks:
    """Read the rating project's tasks; refuse a project that rates another source project,
    (``batch`` given) holds another rater batch, or (``reassigned`` given) rates the other kind
    of text (predicted texts or reassigned labels)."""
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
            if batch is not None and data.get(BATCH_KEY) != batch:
                raise PluginError(
                    f"project {project_id} holds tasks of rater batch {data.get(BATCH_KEY)}, not {batch}: "
                    "choose another --title"
                )
            if reassigned is not None and (data.get("label") is not None) != reassigned:
                kind = "reassigned labels" if data.get("label") is not None else "predicted texts"
                raise PluginError(f"project {project_id} rates {kind}: choose another --title")
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


def _fill_project(
    connection: LabelStudioConnection,
    project_id: int,
    segments: Sequence[RatingSegment],
    source_project_id: int,
    batch: int,
    batches: int,
    rendered: dict[str, Path],
    render,
    upload_batch: int,
) -> tuple[list[int], int, int]:
    """Upload and link the segments ``project_id`` lacks.

    Returns:
        ``(created task ids, segments that had a task, rating tasks the project holds now)``.

    ``rendered`` maps a segment's file name to its PNG once `render` has drawn it (shared by the
    batch projects: each segment is drawn once).
    """
    reassigned = any(segment.label is not None for segment in segments)
    existing = existing_rating_tasks(connection, project_id, source_project_id, batch, reassigned)
    holds = len(existing.linked | {segment.key for segment in segments})
    pending = [segment for segment in segments if segment.key not in existing.linked]
    to_upload = [segment for segment in pending if stored_upload_name(segment.file_name) not in existing.unlinked]
    if to_upload:
        render(to_upload)
        for start in range(0, len(to_upload), upload_batch):
            chunk = to_upload[start : start + upload_batch]
            connection.upload_files(project_id, [rendered[segment.file_name] for segment in chunk])
        existing = existing_rating_tasks(connection, project_id, source_project_id, batch, reassigned)
    created: list[int] = []
    for segment in pending:
        found = existing.unlinked.get(stored_upload_name(segment.file_name))
        if found is None:
            raise PluginError(
                f"uploaded {segment.file_name} for task {segment.source_task}, region {segment.region}, "
                f"but project {project_id} has no task with that image"
            )
        task_id, image_url = found
        data = {**segment.task_data(image_url), BATCH_KEY: batch, BATCHES_KEY: batches}
        connection.call(connection.client.tasks.update, str(task_id), data=data)
        created.append(task_id)
    return sorted(created), len(segments) - len(pending), holds


def prepare_rating_projects(
    connection: LabelStudioConnection,
    source_project_id: int,
    raters: int = RATERS_PER_SEGMENT,
    title: str | None = None,
    text_control: str | None = None,
    upload_batch: int = UPLOAD_BATCH,
    reassigned: Mapping[tuple[str, str], str] | None = None,
) -> RatingSetup:
    """Create (or complete) one rating project per rater batch for a source project's segments.

    Label Studio's community edition shows every project, task and annotation of the
    organisation to every member: three raters working in one project with overlap 3 can see
    each other's scores in the Data Manager. So each of the ``raters`` batches (appendix F's
    three batches) gets its own project, ``<title> (rater batch b/N)``, holding every segment
    once with overlap 1, and each rater works in one of them.

    1. read the source's segments (`predicted_segments`);
    2. per batch, find the project titled `batch_title` or create it with `rating_label_config`,
       and set it up (`configure_batch_project`);
    3. render each segment a project lacks (`rating_image`, once for all projects) and upload
       the PNGs, ``upload_batch`` per request: Label Studio makes one task per file;
    4. write each new task's data (`RatingSegment.task_data` plus ``rater_batch``, ``rater_batches``);
    5. state the project's number of tasks in its instruction (`state_task_count`).

    Safe to repeat: segments that already have a task are skipped, and tasks uploaded by an
    interrupted run (step 3 done, step 4 not) get their data without a second upload.

    ``reassigned``: ``{(image name, region id): T_i*}`` (`plugin.rating.reassigned`): each segment
    is rated with its reassigned label instead of its predicted text (section 4.2), in projects
    titled "Rating of labels of project N (rater batch b/N)" by default.

    Raises:
        PluginError: see `predicted_segments`; ``raters < 1``; a title too long for Label
            Studio; a project of a batch title that is not a rating project, or rates another
            project or batch.
    """
    if raters < 1:
        raise PluginError(f"--raters must be at least 1, got {raters}")
    if upload_batch < 1:
        raise PluginError(f"upload batch must be at least 1, got {upload_batch}")
    title = title or default_title(source_project_id, reassigned is not None)
    longest = batch_title(title, raters, raters)
    if len(longest) > TITLE_LIMIT:
        raise PluginError(f"--title {title!r}: {longest!r} is longer than Label Studio's {TITLE_LIMIT} characters")
    source = predicted_segments(connection, source_project_id, text_control)
    segments = source.segments
    if reassigned is not None:
        segments = with_reassigned_labels(segments, reassigned)
    count = len(segments)

    with tempfile.TemporaryDirectory(prefix="rating-") as folder:
        rendered: dict[str, Path] = {}

        def render(wanted: Sequence[RatingSegment]) -> None:
            missing = [segment for segment in wanted if segment.file_name not in rendered]
            for segment, picture in _segment_images(connection, missing):
                path = Path(folder) / segment.file_name
                Image.fromarray(picture).save(path)
                rendered[segment.file_name] = path

        projects: list[BatchProject] = []
        for batch in range(1, raters + 1):
            name = batch_title(title, batch, raters)
            handle = find_or_create_project(
                connection,
                name,
                rating_label_config(count),
                description=(
                    f"Rater batch {batch} of {raters}: 0-3 rating of the "
                    f"{'reassigned labels' if reassigned is not None else 'predicted texts'} of the segments of "
                    f"project {source_project_id} (zero-guidance section 4.2, appendix F). One rater rates this "
                    "project; the other raters use the other batches' projects."
                ),
            )
            if not handle.created and not is_rating_config(handle.label_config):
                raise PluginError(
                    f"project {handle.id} ({name!r}) exists and is not a rating project (its label config is "
                    f'not one <Image name="{IMAGE_KEY}"> rated by one <Choices name="{RATING_CONTROL}">): '
                    "choose another --title"
                )
            configure_batch_project(connection, handle.id)
            created, existing, holds = _fill_project(
                connection, handle.id, segments, source_project_id, batch, raters, rendered, render, upload_batch
            )
            state_task_count(connection, handle.id, handle.label_config, holds)
            projects.append(
                BatchProject(
                    batch=batch,
                    project_id=handle.id,
                    title=name,
                    created=handle.created,
                    created_task_ids=created,
                    existing_tasks=existing,
                )
            )
    return RatingSetup(
        source_project_id=source_project_id,
        raters=raters,
        segments=count,
        regions_without_text=source.regions_without_text,
        projects=projects,
    )
