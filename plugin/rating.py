"""The Label Studio side of the 0-3 rating protocol (zero-guidance sections 4.2, 5.2, appendix F).

The paper's user study showed each predicted segment "in the form of a highlighted region,
overlaid on an input image, and its predicted text label" to three distinct evaluators, who
rated "how well the label describes the segment on a scale of 0-3" (appendix F, Fig. 21: the
input image for reference and the segmented image with a green highlighted region side by side,
the label below, radio buttons 0-3).

Here that becomes a dedicated *rating project*:

- one task per predicted zero-guidance segment of a *source project* (a brush region of a
  stored prediction that has a text in a per-region TextArea);
- the task's image is one PNG rendered here, input image | segmented image (`rating_image`),
  uploaded like any image; the predicted text is in the task data and shown under the image;
- the label config (`rating_label_config`) holds the paper's instruction (``RATING_INSTRUCTION``)
  and one ``<Choice>`` per score whose hint is the appendix F definition (``RATING_SCALE``);
- the project asks for ``raters`` (3) annotations per task from distinct annotators:
  ``maximum_annotations=3`` with ``overlap_cohort_percentage=100`` (every task in the overlap
  cohort). Label Studio's labelling stream never gives a user a task they already annotated,
  and marks a task done once it holds ``maximum_annotations`` annotations.

`collect_ratings` turns the rating project's annotations back into the rating records that
``backend.evaluation.parse_ratings`` reads (``label`` is ``None``: the raters saw the predicted
text, as in the section 5.2 user study / Table 2).

Task data of a rating task (the link back to the source)::

    {"image": "/data/upload/12/0a1b2c3d-segment-7-5f0c....png",  # the rendered PNG
     "text": "a yellow disc",                                     # the predicted text T_i
     "source_project": 3, "source_task": 7, "region": "pred1",   # where the segment comes from
     "source_image": "/data/upload/3/9f8e7d6c-shapes.png",
     "image_name": "7-shapes.png",    # the name `python -m plugin export` gives that image
     "prediction": 41, "model_version": "zeroguide-tiny-..."}
"""

from __future__ import annotations

import hashlib
import html
import io
import tempfile
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image, ImageOps

from backend.evaluation.rating import RATERS_PER_SEGMENT, RATING_INSTRUCTION, RATING_SCALE
from plugin.connection import LabelStudioConnection
from plugin.dataset import image_file_name
from plugin.errors import PluginError
from plugin.importing import stored_upload_name, uploaded_file_name
from plugin.project import find_or_create_project
from plugin.regions import Region, regions_from_result
from plugin.schema import LabelingSchema

# Names in the rating project's label config (and so in its task data and results).
IMAGE_KEY = "image"  # <Image value="$image">: the rendered input | segmented PNG
TEXT_KEY = "text"  # <Header value="$text">: the predicted text
RATING_CONTROL = "rating"  # <Choices name="rating">: the 0-3 score
# Task data keys that link a rating task back to its segment.
LINK_KEYS = ("source_project", "source_task", "region")
SCORES = tuple(level.score for level in RATING_SCALE)

# Appendix F / Fig. 21: "a segmented image with a green highlighted region".
HIGHLIGHT_RGB = (0, 255, 0)
HIGHLIGHT_ALPHA = 0.5  # share of green in the region's pixels (not given in the paper)
OUTLINE_FRACTION = 1 / 200  # outline width as a share of the shorter image side, at least 1 px
PANEL_GAP_PX = 8  # white gap between the two panels
UPLOAD_BATCH = 20  # rendered PNGs per upload request


def default_title(source_project_id: int) -> str:
    """The rating project's title (Label Studio allows 50 characters)."""
    return f"Rating of project {source_project_id}"


# ----------------------------------------------------------------------------- label config
def rating_label_config() -> str:
    """The rating project's label config (Fig. 21 as Label Studio tags).

    Instruction, score definitions (visible, highest first as in Fig. 21), the rendered image,
    the predicted text, and ``<Choices name="rating">`` with one radio button per score whose
    ``hint`` (tooltip) is the score's name and appendix F definition. A rating is required.
    """
    view = ElementTree.Element("View")

    def header(parent: ElementTree.Element, value: str, size: int) -> None:
        ElementTree.SubElement(parent, "Header", value=value, size=str(size))

    header(view, "Rate how well the label describes the highlighted region", 4)
    header(view, RATING_INSTRUCTION, 6)
    definitions = ElementTree.SubElement(view, "View")
    for level in sorted(RATING_SCALE, key=lambda level: -level.score):
        header(definitions, f"Score {level.score} ({level.name}): {level.definition}", 6)
    header(view, "Left: input image (only for reference). Right: segmented image with the green highlighted region.", 6)
    ElementTree.SubElement(view, "Image", name=IMAGE_KEY, value=f"${IMAGE_KEY}", zoom="true", zoomControl="true")
    header(view, "Label:", 5)
    header(view, f"${TEXT_KEY}", 3)
    header(view, "Incorrect ← → Correct", 6)
    choices = ElementTree.SubElement(
        view,
        "Choices",
        name=RATING_CONTROL,
        toName=IMAGE_KEY,
        choice="single-radio",
        showInline="true",
        required="true",
    )
    for level in RATING_SCALE:
        ElementTree.SubElement(choices, "Choice", value=str(level.score), hint=f"{level.name}: {level.definition}")
    ElementTree.indent(view)
    return ElementTree.tostring(view, encoding="unicode")


def rating_instruction_html() -> str:
    """The project's instruction page (shown before labelling): Fig. 21's text and definitions."""
    items = "".join(
        f"<li><b>Score {level.score} ({html.escape(level.name)})</b>: {html.escape(level.definition)}</li>"
        for level in sorted(RATING_SCALE, key=lambda level: -level.score)
    )
    return f"<p>{html.escape(RATING_INSTRUCTION)}</p><ul>{items}</ul>"


# ------------------------------------------------------------------------------- rendering
def _erode(mask: np.ndarray) -> np.ndarray:
    """One step of 4-neighbour binary erosion; pixels outside the image count as background."""
    padded = np.pad(mask, 1, constant_values=False)
    return (
        padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    )


def segment_outline(mask: np.ndarray, width: int) -> np.ndarray:
    """``(H, W)`` bool: the pixels of ``mask`` within ``width`` erosion steps of its border."""
    inner = mask
    for _ in range(width):
        inner = _erode(inner)
    return mask & ~inner


def highlight_segment(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The segmented image: ``mask`` tinted green, its border drawn in solid green.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        mask: ``(H, W)`` bool.

    Returns:
        ``(H, W, 3)`` uint8: outside the mask the image unchanged; inside
        ``(1 - α) * pixel + α * green`` rounded half up, with α = ``HIGHLIGHT_ALPHA``; the outline
        (``OUTLINE_FRACTION`` of the shorter side, at least 1 px) pure green.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match image {image.shape[:2]}")
    mask = mask.astype(bool)
    green = np.asarray(HIGHLIGHT_RGB, dtype=np.float64)
    out = image.copy()
    blended = (1.0 - HIGHLIGHT_ALPHA) * image[mask].astype(np.float64) + HIGHLIGHT_ALPHA * green
    out[mask] = np.floor(blended + 0.5).astype(np.uint8)  # rounded half up
    width = max(1, round(min(mask.shape) * OUTLINE_FRACTION))
    out[segment_outline(mask, width)] = HIGHLIGHT_RGB
    return out


def rating_image(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fig. 21's two panels side by side: input image | white gap | segmented image.

    Returns:
        ``(H, 2W + PANEL_GAP_PX, 3)`` uint8.
    """
    height, width = image.shape[:2]
    canvas = np.full((height, 2 * width + PANEL_GAP_PX, 3), 255, dtype=np.uint8)
    canvas[:, :width] = image
    canvas[:, width + PANEL_GAP_PX :] = highlight_segment(image, mask)
    return canvas


def decode_image(data: bytes, where: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB from image file bytes, EXIF orientation applied (as browsers show it)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.uint8).copy()
    except (OSError, Image.DecompressionBombError, ValueError) as error:
        raise PluginError(f"{where}: not a readable image ({error})") from error


# -------------------------------------------------------------------------------- segments
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


def get_project(connection: LabelStudioConnection, project_id: int):
    """The SDK project record; a clear `PluginError` when there is no such project."""
    try:
        return connection.call(connection.client.projects.get, project_id)
    except PluginError as error:
        if isinstance(error.__cause__, ApiError) and error.__cause__.status_code == 404:
            raise PluginError(
                f"there is no project {project_id} at {connection.settings.url} (or this key cannot see it): "
                f"check the id in the project's URL, {connection.settings.url}/projects/<id>/"
            ) from error
        raise


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


# --------------------------------------------------------------------------- rating project
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


def is_rating_config(label_config: str) -> bool:
    """True for a rating project's config: ``<Image name="image" value="$image">`` and, as its only
    control, a whole-task (not per-region) ``<Choices name="rating">`` on that image."""
    try:
        interface = LabelInterface(label_config)
    except Exception:  # lxml / the SDK raise several types for bad XML
        return False
    images = [tag for tag in interface.objects if tag.tag == "Image"]
    controls = list(interface.controls)
    return (
        len(images) == 1
        and (images[0].name, images[0].value) == (IMAGE_KEY, f"${IMAGE_KEY}")
        and len(controls) == 1
        and (controls[0].tag, controls[0].name) == ("Choices", RATING_CONTROL)
        and controls[0].attr.get("perRegion", "false").lower() != "true"
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


# -------------------------------------------------------------------------------- collecting
@dataclass(frozen=True)
class CollectedRatings:
    """The ratings of a rating project, as ``parse_ratings`` records.

    Attributes:
        records: ``{"image", "segment", "text", "label": None, "rater", "score", "batch",
            "source_project", "source_task", "rating_task", "annotation"}`` per kept rating.
        tasks: rating tasks read.
        raters_per_segment: ratings kept per task at most (the batches).
        unrated_tasks: ids of tasks without any kept rating.
        incomplete_tasks: ids of tasks with fewer than ``raters_per_segment`` ratings.
        notes: one line per annotation left out (skipped, no score, a rater's older
            annotation, a rating beyond ``raters_per_segment``).
    """

    records: list[dict]
    tasks: int
    raters_per_segment: int
    unrated_tasks: list[int]
    incomplete_tasks: list[int]
    notes: list[str]

    @property
    def raters(self) -> list[str]:
        """Distinct rater ids, sorted."""
        return sorted({record["rater"] for record in self.records}, key=lambda rater: (len(rater), rater))


def _as_dict(item) -> dict:
    return dict(item) if isinstance(item, Mapping) else item.model_dump()


def score_of(result: Sequence[Mapping], rating_control: str = RATING_CONTROL) -> int | None:
    """The 0-3 score chosen in ``rating_control``, or None when there is none (or not exactly one)."""
    chosen = [
        choice
        for item in result
        if item.get("from_name") == rating_control and item.get("type") == "choices"
        for choice in (item.get("value") or {}).get("choices") or []
    ]
    if len(chosen) != 1:
        return None
    try:
        score = int(str(chosen[0]).strip())
    except ValueError:
        return None
    return score if score in SCORES else None


def _rater_id(completed_by) -> str | None:
    if isinstance(completed_by, Mapping):
        completed_by = completed_by.get("id")
    return None if completed_by is None else str(completed_by)


def ratings_from_tasks(
    tasks: Iterable[Mapping], raters_per_segment: int = RATERS_PER_SEGMENT, rating_control: str = RATING_CONTROL
) -> CollectedRatings:
    """Rating records from rating tasks (``{"id", "data", "annotations"}`` each).

    Per task: cancelled (skipped) annotations and annotations without a score are left out; of
    one rater's annotations only the newest (highest id) counts; the rest are ordered by id and
    the first ``raters_per_segment`` kept, the b-th being batch b (appendix F's three batches).

    Raises:
        PluginError: a task whose data lacks the link keys (not made by ``rate setup``).
    """
    if raters_per_segment < 1:
        raise PluginError(f"raters per segment must be at least 1, got {raters_per_segment}")
    records: list[dict] = []
    notes: list[str] = []
    unrated: list[int] = []
    incomplete: list[int] = []
    count = 0
    for task in sorted(tasks, key=lambda task: task["id"]):
        count += 1
        data = task.get("data") or {}
        missing = [key for key in (*LINK_KEYS, TEXT_KEY, "image_name") if key not in data]
        if missing:
            raise PluginError(
                f"task {task['id']} has no {missing} in its data: it was not made by `python -m plugin rate setup`"
            )
        newest_by_rater: dict[str, tuple[dict, int]] = {}
        for annotation in sorted((_as_dict(a) for a in task.get("annotations") or []), key=lambda a: a["id"]):
            if annotation.get("was_cancelled"):
                notes.append(f"task {task['id']}: annotation {annotation['id']} was skipped")
                continue
            score = score_of(annotation.get("result") or [], rating_control)
            rater = _rater_id(annotation.get("completed_by"))
            if score is None or rater is None:
                notes.append(f"task {task['id']}: annotation {annotation['id']} has no 0-3 {rating_control!r} choice")
                continue
            if rater in newest_by_rater:
                older = newest_by_rater[rater][0]["id"]
                notes.append(
                    f"task {task['id']}: rater {rater} rated twice; annotation {annotation['id']} replaces {older}"
                )
            newest_by_rater[rater] = (annotation, score)
        kept = sorted(newest_by_rater.items(), key=lambda item: item[1][0]["id"])
        for rater, (annotation, _) in kept[raters_per_segment:]:
            notes.append(
                f"task {task['id']}: annotation {annotation['id']} by rater {rater} left out "
                f"(more than {raters_per_segment} ratings; the first by id are kept)"
            )
        kept = kept[:raters_per_segment]
        if not kept:
            unrated.append(task["id"])
        elif len(kept) < raters_per_segment:
            incomplete.append(task["id"])
        for batch, (rater, (annotation, score)) in enumerate(kept, start=1):
            records.append(
                {
                    "image": str(data["image_name"]),
                    "segment": str(data["region"]),
                    "text": str(data[TEXT_KEY]),
                    "label": None,  # the predicted text was rated (section 5.2), not a reassigned label
                    "rater": rater,
                    "score": score,
                    "batch": batch,
                    "source_project": data["source_project"],
                    "source_task": data["source_task"],
                    "rating_task": task["id"],
                    "annotation": annotation["id"],
                }
            )
    return CollectedRatings(
        records=records,
        tasks=count,
        raters_per_segment=raters_per_segment,
        unrated_tasks=unrated,
        incomplete_tasks=incomplete,
        notes=notes,
    )


def collect_ratings(
    connection: LabelStudioConnection, project_id: int, raters_per_segment: int | None = None
) -> CollectedRatings:
    """Read a rating project's annotations as rating records.

    Args:
        raters_per_segment: ratings kept per segment; default: the project's ``maximum_annotations``.
    """
    project = get_project(connection, project_id)
    if raters_per_segment is None:
        raters_per_segment = int(getattr(project, "maximum_annotations", None) or RATERS_PER_SEGMENT)
    pager = connection.call(connection.client.tasks.list, project=project_id, fields="all", page_size=100)
    tasks = [
        {"id": task.id, "data": task.data or {}, "annotations": [_as_dict(a) for a in task.annotations or []]}
        for task in connection.call(list, pager)
    ]
    if not tasks:
        raise PluginError(f"project {project_id} has no tasks: run `python -m plugin rate setup` first")
    return ratings_from_tasks(tasks, raters_per_segment)

