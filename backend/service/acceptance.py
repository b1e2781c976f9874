"""How much annotators change the pre-labels: per method and label, served prediction against submission.

One task's *acceptance* compares the prediction an annotation started from (Label Studio's
``parent_prediction``) with the submitted annotation, region by region. Label Studio keeps a
predicted region's id when the annotator keeps, repaints, moves or relabels it, and gives a region
drawn anew a new id, so regions are matched by id:

* **unchanged**: the same id, the same labels, the same texts, mask IoU >= ``UNCHANGED_IOU``;
* **edited**: the same id, anything of that changed;
* **deleted**: a predicted id the annotation lacks;
* **added**: an annotated id the prediction lacks.

A predicted region counts under its predicted label (and the method of its tag); an added one under
its annotated label. Per label, **IoU** is |P ∩ A| / |P ∪ A| of the union P of the predicted
regions with that label and the union A of the annotated ones, intersections and unions summed
over tasks before dividing (the dataset IoU). **Text edits**: of the predicted regions with a text
that the annotation kept, how many texts were changed, with the pairs (before, after).

Torch-free: the service's HTTP process and ``plugin/`` (``python -m plugin report``) both use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .regions import Region, regions_from_results

__all__ = ["UNCHANGED_IOU", "LabelCounts", "TaskAcceptance", "AcceptanceSummary", "task_acceptance"]

UNCHANGED_IOU = 0.999  # a mask this close to the predicted one is the predicted one (re-encoding noise)
MAX_TEXT_EDITS = 20  # (before, after) pairs kept per task


@dataclass
class LabelCounts:
    """Region outcomes and overlap of one (method, label)."""

    unchanged: int = 0
    edited: int = 0
    deleted: int = 0
    added: int = 0
    intersection: int = 0  # pixels
    union: int = 0
    texts: int = 0  # predicted texts of kept regions
    texts_edited: int = 0

    def __iadd__(self, other: "LabelCounts") -> "LabelCounts":
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)
        return self

    @property
    def predicted(self) -> int:
        return self.unchanged + self.edited + self.deleted

    def shares(self) -> dict[str, float | None]:
        """Of the predicted regions, the share unchanged, edited and deleted."""
        total = self.predicted
        return {name: (getattr(self, name) / total if total else None) for name in ("unchanged", "edited", "deleted")}

    @property
    def iou(self) -> float | None:
        return self.intersection / self.union if self.union else None


@dataclass
class TaskAcceptance:
    """The acceptance of one annotation: ``counts[method][label]``, text edits, the model version."""

    counts: dict[str, dict[str, LabelCounts]] = field(default_factory=dict)
    text_edits: list[tuple[str, str]] = field(default_factory=list)
    model_version: str | None = None

    def at(self, method: str, label: str) -> LabelCounts:
        return self.counts.setdefault(method, {}).setdefault(label, LabelCounts())

    def to_dict(self) -> dict:
        return {
            "model_version": self.model_version,
            "counts": {m: {label: asdict(c) for label, c in by.items()} for m, by in self.counts.items()},
            "text_edits": [list(pair) for pair in self.text_edits],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "TaskAcceptance":
        counts = {
            str(method): {str(label): LabelCounts(**values) for label, values in by.items()}
            for method, by in (data.get("counts") or {}).items()
        }
        edits = [(str(a), str(b)) for a, b in data.get("text_edits") or []]
        return cls(counts, edits, data.get("model_version"))


def _texts(region: Region) -> list[str]:
    return [text for control in sorted(region.texts) for text in region.texts[control]]


def task_acceptance(
    predicted: Sequence[Mapping],
    annotated: Sequence[Mapping],
    methods: Mapping[str, str],
    model_version: str | None = None,
    categories: Mapping[str, str] | None = None,
) -> TaskAcceptance:
    """The acceptance of one annotation (module docstring).

    Args:
        predicted, annotated: the prediction's and the annotation's Label Studio results.
        methods: shape tag name -> method (``"zero-guidance"``, ``"classes"``); other tags are not counted.
        categories: tag name -> the one label its regions count under, for a zero-guidance tag whose
            labels are a colour palette (backend/service/palette.py): a segment recoloured is not edited.
    """
    categories = categories or {}

    def _label(region: Region) -> str:
        if region.control in categories:
            return categories[region.control]
        return region.labels[0] if region.labels else ""

    shape_controls = set(methods)
    before = {r.id: r for r in regions_from_results(predicted, shape_controls)}
    after = {r.id: r for r in regions_from_results(annotated, shape_controls)}
    outcome = TaskAcceptance(model_version=model_version)
    for region_id, region in before.items():
        counts = outcome.at(methods[region.control], _label(region))
        kept = after.get(region_id)
        if kept is None:
            counts.deleted += 1
            continue
        inter = int(np.logical_and(region.mask, kept.mask).sum()) if region.mask.shape == kept.mask.shape else 0
        union = int(np.logical_or(region.mask, kept.mask).sum()) if region.mask.shape == kept.mask.shape else 1
        same_mask = union == 0 or inter / union >= UNCHANGED_IOU
        old_texts, new_texts = _texts(region), _texts(kept)
        if old_texts:
            counts.texts += 1
            if new_texts != old_texts:
                counts.texts_edited += 1
                if len(outcome.text_edits) < MAX_TEXT_EDITS:
                    outcome.text_edits.append(("; ".join(old_texts), "; ".join(new_texts)))
        same_labels = kept.labels == region.labels or (region.control in categories and kept.control == region.control)
        if same_mask and same_labels and new_texts == old_texts:
            counts.unchanged += 1
        else:
            counts.edited += 1
    for region_id, region in after.items():
        if region_id not in before:
            outcome.at(methods[region.control], _label(region)).added += 1
    # per (method, label): IoU of the predicted and the annotated pixels with that label
    for method in set(methods.values()):
        labels = {_label(r) for r in before.values() if methods[r.control] == method}
        labels |= {_label(r) for r in after.values() if methods[r.control] == method}
        for label in labels:
            masks_before = [r.mask for r in before.values() if methods[r.control] == method and _label(r) == label]
            masks_after = [r.mask for r in after.values() if methods[r.control] == method and _label(r) == label]
            shape = (masks_before or masks_after)[0].shape
            p = np.logical_or.reduce(masks_before) if masks_before else np.zeros(shape, bool)
            a = np.logical_or.reduce(masks_after) if masks_after else np.zeros(shape, bool)
            if p.shape != a.shape:
                continue
            counts = outcome.at(method, label)
            counts.intersection += int(np.logical_and(p, a).sum())
            counts.union += int(np.logical_or(p, a).sum())
    return outcome


@dataclass
class AcceptanceSummary:
    """Acceptance over many annotations: per method and label, and per model version."""

    tasks: int = 0
    counts: dict[str, dict[str, LabelCounts]] = field(default_factory=dict)
    by_version: dict[str, LabelCounts] = field(default_factory=dict)
    text_edits: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def of(cls, tasks: Sequence[TaskAcceptance]) -> "AcceptanceSummary":
        summary = cls()
        for task in tasks:
            summary.tasks += 1
            version = summary.by_version.setdefault(task.model_version or "(unknown)", LabelCounts())
            for method, by_label in task.counts.items():
                for label, counts in by_label.items():
                    summary.counts.setdefault(method, {}).setdefault(label, LabelCounts())
                    summary.counts[method][label] += counts
                    version += counts
            summary.text_edits.extend(task.text_edits[: max(0, 50 - len(summary.text_edits))])
        return summary

    def to_dict(self) -> dict:
        def figures(counts: LabelCounts) -> dict:
            return {**asdict(counts), "iou": counts.iou, **{f"{k}_share": v for k, v in counts.shares().items()}}

        return {
            "tasks": self.tasks,
            "methods": {m: {label: figures(c) for label, c in sorted(by.items())} for m, by in self.counts.items()},
            "model_versions": {version: figures(c) for version, c in self.by_version.items()},
            "text_edits": [list(pair) for pair in self.text_edits],
        }
