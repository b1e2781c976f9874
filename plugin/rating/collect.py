"""Collecting a rating project's annotations as the rating records of ``backend.evaluation``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from backend.evaluation.rating import RATERS_PER_SEGMENT
from plugin.connection import LabelStudioConnection
from plugin.errors import PluginError
from plugin.rating.config import LINK_KEYS, RATING_CONTROL, SCORES, TEXT_KEY
from plugin.rating.lookup import get_project


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
