"""The most informative tasks first: how much the two methods disagree on a task, as its score.

Label Studio's Data Manager sorts tasks by their prediction's score, and its active-learning
ordering takes the lowest first (the least confident). A task where zero-guidance names segments
that no class mask covers, or names them with texts CLIP finds unlikely, is one where the class
list or the models fall short: the annotators' time does most there. With a free-text tag and a
class-mask tag on one image, the prediction's score is therefore its *agreement*:

* **unmatched**: the area share of the free-text segments whose best IoU with a class mask is
  below ``MATCH_IOU`` (a named thing the class list does not cover, or covers elsewhere);
* **uncertain text**: 1 minus the mean CLIP text score of the free-text segments (the regions'
  ``score``: section 3.3's cosine similarity, clipped to [0, 1]);
* **stage 1 vs 2** (``INFORMATIVENESS_STAGE1=1``, with a trained alignment module: FMbSeg also
  runs Stage 1, SAM, seconds a task on a CPU): 1 minus the share of the pixels both label that
  Stage 1's pseudo-labels and the served Stage 2 prediction give the same class;
* ``disagreement`` = the mean of the terms present; score = 1 - disagreement, in [0, 1].

Without any term (no free-text segments, no Stage 1 run) the score stays the mean of the
regions' scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MATCH_IOU", "disagreement"]

MATCH_IOU = 0.5  # a segment and a class mask this similar name the same thing


def disagreement(
    segments: Sequence[tuple[np.ndarray, float | None]],
    class_masks: Sequence[np.ndarray] | None,
    stage1_agreement: float | None = None,
) -> float | None:
    """How much the methods disagree on one image (module docstring), ``None`` without any term.

    Args:
        segments: the free-text segments: ``(mask, text score or None)``.
        class_masks: the class masks of the image; ``None`` when no class-mask tag ran (the
            unmatched term is then left out).
        stage1_agreement: FMbSeg's Stage 1 vs Stage 2 agreement, when it was measured.
    """
    terms = [] if stage1_agreement is None else [1.0 - float(np.clip(stage1_agreement, 0.0, 1.0))]
    if not segments:
        return float(np.mean(terms)) if terms else None
    if class_masks is not None:
        areas = np.array([mask.sum() for mask, _ in segments], dtype=np.float64)
        unmatched = np.zeros(len(segments), dtype=bool)
        for index, (mask, _) in enumerate(segments):
            best = 0.0
            for other in class_masks:
                union = np.logical_or(mask, other).sum()
                if union:
                    best = max(best, np.logical_and(mask, other).sum() / union)
            unmatched[index] = best < MATCH_IOU
        terms.append(float(areas[unmatched].sum() / areas.sum()) if areas.sum() else 0.0)
    scores = [score for _, score in segments if score is not None]
    if scores:
        terms.append(1.0 - float(np.mean(np.clip(scores, 0.0, 1.0))))
    return float(np.mean(terms)) if terms else None
