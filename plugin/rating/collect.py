"""Collecting the rating projects' annotations as the rating records of ``backend.evaluation``.

Two layouts are read:

- **rater batch projects** (what ``rate setup`` makes): N projects, each holding every segment
  once with the task data ``rater_batch`` b and ``rater_batches`` N; a rating in project b is
  batch b;
- **one shared project** (what ``rate setup`` made before): every task asks for N annotations;
  the b-th rating of a task (by annotation id) is batch b.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from backend.evaluation.rating import RATERS_PER_SEGMENT
from plugin.connection import LabelStudioConnection, as_dict
from plugin.errors import PluginError
from plugin.rating.config import (
    BATCH_KEY,
    BATCHES_KEY,
    LINK_KEYS,
    RATING_CONTROL,
    SCORES,
    TEXT_KEY,
    is_rating_config,
)
from plugin.rating.lookup import get_project

SegmentKey = tuple[int, str]  # (source task, region)


@dataclass(frozen=True)
class CollectedRatings:
    """The ratings of rating projects, as ``parse_ratings`` records.

    Attributes:
        records: ``{"image", "segment", "text", "label": None, "rater", "score", "batch",
            "source_project", "source_task", "rating_task", "annotation"}`` per kept rating.
        tasks: rating tasks read.
        raters_per_segment: ratings kept per segment at most (the batches).
        segments: the rated segments' keys ``(source task, region)``, sorted.
        unrated_segments: segments without any kept rating.
        incomplete_segments: segments with some but fewer than ``raters_per_segment`` ratings.
        open_tasks: ids of rating tasks that hold fewer kept ratings than they ask for (one in a
            batch project, ``raters_per_segment`` in a shared project): the work left.
        notes: one line per annotation left out (skipped, no score, a rater's older
            annotation, a rating beyond what the task asks for, a rater's second rating of a
            segment in another batch).
    """

    records: list[dict]
    tasks: int
    raters_per_segment: int
    segments: list[SegmentKey]
    unrated_segments: list[SegmentKey]
    incomplete_segments: list[SegmentKey]
    open_tasks: list[int]
    notes: list[str]

    @property
    def raters(self) -> list[str]:
        """Distinct rater ids, sorted."""
        return sorted({record["rater"] for record in self.records}, key=lambda rater: (len(rater), rater))


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


def _task_data(task: Mapping) -> dict:
    data = task.get("data") or {}
    missing = [key for key in (*LINK_KEYS, TEXT_KEY, "image_name") if key not in data]
    if missing:
        raise PluginError(
            f"task {task['id']} has no {missing} in its data: it was not made by `python -m plugin rate setup`"
        )
    return data


def _task_ratings(task: Mapping, rating_control: str, notes: list[str]) -> list[tuple[str, dict, int]]:
    """``[(rater, annotation, score)]`` of a task by annotation id: skipped annotations and
    annotations without a score left out, of one rater's annotations only the newest."""
    newest_by_rater: dict[str, tuple[dict, int]] = {}
    for annotation in sorted((as_dict(a) for a in task.get("annotations") or []), key=lambda a: a["id"]):
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
    return [(rater, annotation, score) for rater, (annotation, score) in kept]


def _record(task: Mapping, data: Mapping, rater: str, annotation: Mapping, score: int, batch: int) -> dict:
    return {
        "image": str(data["image_name"]),
        "segment": str(data["region"]),
        "text": str(data[TEXT_KEY]),
        # the reassigned label T_i* that was rated (section 4.2), or None: the predicted text was (5.2)
        "label": data.get("label"),
        "rater": rater,
        "score": score,
        "batch": batch,
        "source_project": data["source_project"],
        "source_task": data["source_task"],
        "rating_task": task["id"],
        "annotation": annotation["id"],
    }


def _segment_key(data: Mapping) -> SegmentKey:
    return (int(data["source_task"]), str(data["region"]))


def _collected(
    records: list[dict], tasks: int, raters_per_segment: int, segments: set[SegmentKey], open_tasks, notes
) -> CollectedRatings:
    counts: dict[SegmentKey, int] = {key: 0 for key in segments}
    for record in records:
        counts[(int(record["source_task"]), record["segment"])] += 1
    ordered = sorted(segments)
    return CollectedRatings(
        records=records,
        tasks=tasks,
        raters_per_segment=raters_per_segment,
        segments=ordered,
        unrated_segments=[key for key in ordered if counts[key] == 0],
        incomplete_segments=[key for key in ordered if 0 < counts[key] < raters_per_segment],
        open_tasks=sorted(open_tasks),
        notes=notes,
    )


def ratings_from_tasks(
    tasks: Iterable[Mapping], raters_per_segment: int = RATERS_PER_SEGMENT, rating_control: str = RATING_CONTROL
) -> CollectedRatings:
    """Rating records from the tasks of one shared rating project (``{"id", "data", "annotations"}`` each).

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
    open_tasks: list[int] = []
    segments: set[SegmentKey] = set()
    count = 0
    for task in sorted(tasks, key=lambda task: task["id"]):
        count += 1
        data = _task_data(task)
        segments.add(_segment_key(data))
        kept = _task_ratings(task, rating_control, notes)
        for rater, annotation, _ in kept[raters_per_segment:]:
            notes.append(
                f"task {task['id']}: annotation {annotation['id']} by rater {rater} left out "
                f"(more than {raters_per_segment} ratings; the first by id are kept)"
            )
        kept = kept[:raters_per_segment]
        if len(kept) < raters_per_segment:
            open_tasks.append(task["id"])
        for batch, (rater, annotation, score) in enumerate(kept, start=1):
            records.append(_record(task, data, rater, annotation, score, batch))
    return _collected(records, count, raters_per_segment, segments, open_tasks, notes)


def ratings_from_batch_tasks(
    tasks: Iterable[Mapping], raters_per_segment: int, rating_control: str = RATING_CONTROL
) -> CollectedRatings:
    """Rating records from the tasks of rater batch projects (task data with ``rater_batch``).

    A task of batch b gives at most one rating, of batch b: per task, skipped annotations and
    annotations without a score are left out and of one rater's annotations only the newest
    counts (as in `ratings_from_tasks`); batch by batch, the first remaining annotation (by id)
    whose rater has not rated that segment in an earlier batch is kept. A segment's ratings so
    come from distinct raters, as `backend.evaluation.rating.assign_batches` requires.

    Raises:
        PluginError: a task without the link keys or with a batch outside 1..``raters_per_segment``;
            two tasks of one segment in one batch.
    """
    if raters_per_segment < 1:
        raise PluginError(f"raters per segment must be at least 1, got {raters_per_segment}")
    prepared = []
    for task in tasks:
        data = _task_data(task)
        batch = data.get(BATCH_KEY)
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= raters_per_segment:
            raise PluginError(f"task {task['id']}: {BATCH_KEY} {batch!r} is not a batch from 1 to {raters_per_segment}")
        prepared.append((batch, task["id"], task, data))
    records: list[dict] = []
    notes: list[str] = []
    open_tasks: list[int] = []
    raters_of: dict[SegmentKey, dict[str, int]] = {}  # segment -> {rater: batch}
    seen: dict[tuple[SegmentKey, int], int] = {}  # (segment, batch) -> task id
    for batch, task_id, task, data in sorted(prepared, key=lambda item: item[:2]):
        key = _segment_key(data)
        if (key, batch) in seen:
            raise PluginError(
                f"tasks {seen[key, batch]} and {task_id} both hold task {key[0]}, region {key[1]!r} in rater batch "
                f"{batch}: collect each batch's project once"
            )
        seen[key, batch] = task_id
        earlier = raters_of.setdefault(key, {})
        kept = None
        for rater, annotation, score in _task_ratings(task, rating_control, notes):
            if kept is not None:
                notes.append(
                    f"task {task_id}: annotation {annotation['id']} by rater {rater} left out "
                    "(a batch project's task holds one rating; the first by id is kept)"
                )
            elif rater in earlier:
                notes.append(
                    f"task {task_id}: annotation {annotation['id']} left out: rater {rater} already rated this "
                    f"segment in batch {earlier[rater]} (each segment needs distinct raters)"
                )
            else:
                kept = (rater, annotation, score)
        if kept is None:
            open_tasks.append(task_id)
            continue
        rater, annotation, score = kept
        earlier[rater] = batch
        records.append(_record(task, data, rater, annotation, score, batch))
    records.sort(key=lambda record: (int(record["source_task"]), record["segment"], record["batch"]))
    return _collected(records, len(prepared), raters_per_segment, set(raters_of), open_tasks, notes)


def _read_tasks(connection: LabelStudioConnection, project_id: int) -> list[dict]:
    pager = connection.call(connection.client.tasks.list, project=project_id, fields="all", page_size=100)
    tasks = [
        {"id": task.id, "data": task.data or {}, "annotations": [as_dict(a) for a in task.annotations or []]}
        for task in connection.call(list, pager)
    ]
    if not tasks:
        raise PluginError(f"project {project_id} has no tasks: run `python -m plugin rate setup` first")
    return tasks


def _project_batch(project_id: int, tasks: Sequence[Mapping]) -> tuple[int, int, int] | None:
    """``(source project, batch, batches)`` shared by a batch project's tasks; None for a shared project."""
    found = {
        (data.get("source_project"), data.get(BATCH_KEY), data.get(BATCHES_KEY))
        for data in ((task.get("data") or {}) for task in tasks)
    }
    if all(batch is None for _, batch, _ in found):
        return None
    if len(found) != 1:
        raise PluginError(
            f"project {project_id}: its tasks disagree on (source project, {BATCH_KEY}, {BATCHES_KEY}): "
            f"{sorted(found, key=str)}"
        )
    ((source, batch, batches),) = found
    return source, batch, batches


def rating_projects_of(connection: LabelStudioConnection, source_project_id: int) -> list[tuple[int, str]]:
    """``[(id, title)]`` of the rating projects ``rate setup`` made for a source project: projects
    with a rating label config whose first task rates that project."""
    found = []
    for project in connection.call(list, connection.call(connection.client.projects.list)):
        if project.id == source_project_id or not is_rating_config(project.label_config or ""):
            continue
        pager = connection.call(connection.client.tasks.list, project=project.id, fields="all", page_size=1)
        first = next(iter(connection.call(list, pager)), None)
        data = (first.data or {}) if first is not None else {}
        if str(data.get("source_project")) == str(source_project_id):
            found.append((project.id, project.title))
    return sorted(found)


def _not_a_rating_project(connection: LabelStudioConnection, project_id: int) -> str:
    """What to say when ``collect`` is given a project that is not a rating project."""
    said = f"project {project_id} is not a rating project (its label config is not the 0-3 rating one)"
    rating = rating_projects_of(connection, project_id)
    if not rating:
        return (
            f"{said}, and no rating project rates it yet: run `python -m plugin rate setup --project {project_id}` "
            "first, then collect the projects it names"
        )
    listed = ", ".join(f"{rid} ({title!r})" for rid, title in rating)
    ids = " ".join(str(rid) for rid, _ in rating)
    return f"{said}; its rating projects are {listed}: python -m plugin rate collect --project {ids} --out ..."


def collect_ratings(
    connection: LabelStudioConnection, project_ids: int | Sequence[int], raters_per_segment: int | None = None
) -> CollectedRatings:
    """Read rating projects' annotations as rating records.

    Args:
        project_ids: the rater batch projects of one source project (any order), or one shared
            rating project.
        raters_per_segment: ratings kept per segment. Batch projects: their number of batches
            (given, it must be that). A shared project: default its ``maximum_annotations``.

    Raises:
        PluginError: an unknown project or one without tasks; a shared project among others;
            batch projects of different source projects or batch counts, or two of one batch.
    """
    ids = [project_ids] if isinstance(project_ids, int) else list(project_ids)
    if not ids or len(set(ids)) != len(ids):
        raise PluginError(f"give each rating project once, got {ids}")
    projects = {project_id: get_project(connection, project_id) for project_id in ids}
    tasks = {project_id: _read_tasks(connection, project_id) for project_id in ids}
    for project_id in ids:
        if not is_rating_config(projects[project_id].label_config or ""):
            raise PluginError(_not_a_rating_project(connection, project_id))
    batches = {project_id: _project_batch(project_id, tasks[project_id]) for project_id in ids}
    if all(found is None for found in batches.values()):
        if len(ids) > 1:
            raise PluginError(
                f"projects {ids} are shared rating projects (no {BATCH_KEY} in their tasks): collect one at a time"
            )
        (project_id,) = ids
        if raters_per_segment is None:
            raters_per_segment = int(getattr(projects[project_id], "maximum_annotations", None) or RATERS_PER_SEGMENT)
        return ratings_from_tasks(tasks[project_id], raters_per_segment)
    shared = [project_id for project_id, found in batches.items() if found is None]
    if shared:
        raise PluginError(f"project(s) {shared} are shared rating projects, the others rater batch projects")
    sources = {found[0] for found in batches.values()}
    counts = {found[2] for found in batches.values()}
    if len(sources) != 1 or len(counts) != 1:
        raise PluginError(
            "the projects are batches of different rating set-ups: "
            + ", ".join(f"{pid}: source {s}, batch {b}/{n}" for pid, (s, b, n) in batches.items())
        )
    by_batch: dict[int, int] = {}
    for project_id, (_, batch, _) in batches.items():
        if batch in by_batch:
            raise PluginError(f"projects {by_batch[batch]} and {project_id} both hold rater batch {batch}")
        by_batch[batch] = project_id
    (count,) = counts
    if raters_per_segment is not None and raters_per_segment != count:
        raise PluginError(f"--raters {raters_per_segment}: the rater batch projects make {count} batches")
    collected = ratings_from_batch_tasks([task for project_id in ids for task in tasks[project_id]], count)
    missing = [batch for batch in range(1, count + 1) if batch not in by_batch]
    if missing:
        collected.notes.append(f"rater batch(es) {missing} of {count} not collected: their projects were not given")
    return collected
