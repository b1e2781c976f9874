"""Score thresholds per label, learnt from what annotators kept and deleted.

A pre-labelled region the annotator deleted was not worth showing. For each label, the predicted
regions that carry a score (free-text segments: their CLIP text score; class masks when the method
gives one) are split into *kept* (the annotation still has the region id) and *deleted*. The
threshold t is the one that best separates them: it maximises the regions shown that were kept
plus the regions hidden that were deleted,

    t* = argmax_t  #{s >= t, kept} + #{s < t, deleted}

over t in {0} and the observed scores; on a tie the lowest t (show more). A label needs
``MIN_REGIONS`` scored regions to get one. The thresholds go into the label config as each
``<Label model_score_threshold="t">`` (for a zero-guidance tag, whose labels are a colour
palette, on the tag), which the backend reads per label.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from backend.service.regions import regions_from_results
from plugin.schema import config_tree

__all__ = ["MIN_REGIONS", "ScoredOutcome", "best_threshold", "scored_outcomes", "apply_thresholds"]

MIN_REGIONS = 5


@dataclass(frozen=True)
class ScoredOutcome:
    """A predicted region's tag, label, score, and whether the annotator kept it."""

    control: str
    label: str
    score: float
    kept: bool


def best_threshold(outcomes: Sequence[tuple[float, bool]]) -> tuple[float, int]:
    """``(t*, regions it classifies right)`` for ``(score, kept)`` pairs (module docstring)."""
    if not outcomes:
        raise ValueError("no scored regions")
    best, right = 0.0, -1
    for threshold in sorted({0.0, *(score for score, _ in outcomes)}):
        correct = sum(1 for score, kept in outcomes if (score >= threshold) == kept)
        if correct > right:
            best, right = threshold, correct
    return best, right


def scored_outcomes(
    predicted: Sequence[Mapping], annotated: Sequence[Mapping], categories: Mapping[str, str], controls: set[str]
) -> list[ScoredOutcome]:
    """The scored predicted regions of one annotation, kept or deleted."""
    kept_ids = {str(item.get("id")) for item in annotated}
    scores = {
        str(item.get("id")): float(item["score"])
        for item in predicted
        if item.get("from_name") in controls and isinstance(item.get("score"), (int, float))
    }
    outcomes = []
    for region in regions_from_results(predicted, controls, ()):
        if region.id not in scores:
            continue
        label = categories.get(region.control) or (region.labels[0] if region.labels else "")
        outcomes.append(ScoredOutcome(region.control, label, scores[region.id], region.id in kept_ids))
    return outcomes


def apply_thresholds(label_config: str, thresholds: Mapping[tuple[str, str], float], palettes: set[str]) -> str:
    """The label config with ``model_score_threshold`` set: on the ``<Label>`` of each (tag, label),
    or on the tag itself for the tags in ``palettes`` (zero-guidance: every label one category)."""
    root = config_tree(label_config)
    tags = {element.get("name"): element for element in root.iter() if element.get("name")}
    for (control, label), threshold in thresholds.items():
        tag = tags.get(control)
        if tag is None:
            continue
        value = f"{threshold:.4g}"
        if control in palettes:
            tag.set("model_score_threshold", value)
            continue
        for element in tag.iter("Label"):
            if element.get("value") == label:
                element.set("model_score_threshold", value)
    return ElementTree.tostring(root, encoding="unicode")
