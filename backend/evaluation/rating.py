"""The 0-3 human rating protocol (zero-guidance sections 4.2 and 5.2, appendix F).

Each segment is rated by three distinct raters. Appendix F: "We calculated the scores for each
of the three batches separately then reported the average." Here batch b holds the b-th rating
of every segment (the record's ``batch`` field, or else the order in which the segment's
ratings appear); every score (Table 2's distribution, Table 1's IoU and Recall at h ≥ k) is
computed per batch and then averaged over the batches that hold any rating.

A segment with fewer than three ratings is simply absent from the batches it lacks: it does not
count in their score distribution, and in their IoU/Recall its reassignment is unverified
(unlabelled), as every unrated segment is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from .metrics import TAU_IOU, ImageOverlaps, SegmentationScores, evaluate_segmentation
from .reassignment import Reassignment, verify_by_scores

__all__ = [
    "RatingLevel",
    "RATING_SCALE",
    "RATING_INSTRUCTION",
    "RATERS_PER_SEGMENT",
    "TABLE1_MIN_SCORES",
    "Rating",
    "parse_ratings",
    "assign_batches",
    "ScoreDistribution",
    "score_distribution",
    "HumanVerifiedScores",
    "human_verified_scores",
]

RATERS_PER_SEGMENT = 3  # appendix F: "each evaluated by three different evaluators"
TABLE1_MIN_SCORES = (3, 2, 1)  # Table 1's human thresholds: h=3, h≥2, h≥1


@dataclass(frozen=True)
class RatingLevel:
    """One point of the 0-3 scale: short name (section 4.2) and definition (appendix F, Fig. 21)."""

    score: int
    name: str
    definition: str


RATING_SCALE: tuple[RatingLevel, ...] = (
    RatingLevel(0, "incorrect", "The label does not describe the region."),
    RatingLevel(
        1,
        "partially correct",
        "The label is partially correct but contains wrong details (D), or correctly describes the "
        "majority of region that contains multiple objects or has inaccurate boundaries (E).",
    ),
    RatingLevel(
        2,
        "correct but too general/specific",
        "The label is technically correct but is too generic for the specific region (A), only "
        "describes the action, shape, or color without mentioning the kind of object (B), or is a "
        "reasonable description but not entirely intuitive or natural (C).",
    ),
    RatingLevel(
        3,
        "correct",
        "The label correctly describes the region as an object or object part with or without "
        "detailed attributes. Slightly inaccurate regions are allowed.",
    ),
)

# Appendix F, Figure 21: the instruction shown before the 30 questions of a task.
RATING_INSTRUCTION = (
    "You will be solving 30 independent questions. In each question, you will be shown 1) an input "
    "image (only for reference), 2) a segmented image with a green highlighted region, and 3) a text "
    "label. Your task is to rate how well the label describes the highlighted region in the "
    "segmented image. Please ignore any typos in the labels and rate each label on a scale of 0-3."
)

SCORES = tuple(level.score for level in RATING_SCALE)


@dataclass(frozen=True)
class Rating:
    """One rater's score for one segment.

    Attributes:
        image: the image's name, as in the prediction file's ``"image"``.
        segment: the segment's id (the prediction file's segment ``"id"``), as a string.
        text: the predicted text T_i.
        label: the reassigned label T_i* that was rated (section 4.2), or ``None`` when the
            rater saw the predicted text only (the user study of section 5.2, Table 2).
        rater: the rater's id.
        score: 0-3 (:data:`RATING_SCALE`).
        batch: 1..3, which of the three ratings of the segment this is (``None``: by order).
    """

    image: str
    segment: str
    text: str
    label: str | None
    rater: str
    score: int
    batch: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.image, self.segment)

    @classmethod
    def from_dict(cls, record: Mapping) -> "Rating":
        """From ``{"image", "segment", "text", "label", "rater", "score", "batch"?}``."""
        missing = [k for k in ("image", "segment", "rater", "score") if record.get(k) is None]
        if missing:
            raise ValueError(f"rating record lacks {missing}: {dict(record)}")
        score = record["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float, str)):
            raise ValueError(f"rating score must be an integer 0-3, got {score!r}")
        try:
            score_int = int(score)
        except ValueError:
            raise ValueError(f"rating score must be an integer 0-3, got {score!r}") from None
        if score_int != float(score) or score_int not in SCORES:
            raise ValueError(f"rating score must be an integer 0-3, got {score!r}")
        batch = record.get("batch")
        if batch is not None and (isinstance(batch, bool) or int(batch) != batch or int(batch) < 1):
            raise ValueError(f"rating batch must be a positive integer, got {batch!r}")
        label = record.get("label")
        return cls(
            image=str(record["image"]),
            segment=str(record["segment"]),
            text=str(record.get("text") or ""),
            label=None if label is None else str(label),
            rater=str(record["rater"]),
            score=score_int,
            batch=None if batch is None else int(batch),
        )

    def to_dict(self) -> dict:
        return {
            "image": self.image,
            "segment": self.segment,
            "text": self.text,
            "label": self.label,
            "rater": self.rater,
            "score": self.score,
            "batch": self.batch,
        }


def parse_ratings(records: Iterable[Mapping | Rating]) -> list[Rating]:
    """Validate rating records (dicts or :class:`Rating`)."""
    return [r if isinstance(r, Rating) else Rating.from_dict(r) for r in records]


def assign_batches(
    ratings: Iterable[Rating | Mapping], raters_per_segment: int = RATERS_PER_SEGMENT
) -> tuple[dict[tuple[str, str], Rating], ...]:
    """Split ratings into ``raters_per_segment`` batches, each with at most one rating per segment.

    Ratings with a ``batch`` go to that batch; the others fill each segment's free batches in
    the order they appear. Errors: a batch out of range, two ratings of a segment in one batch,
    one rater rating a segment twice, more ratings of a segment than batches.
    """
    if raters_per_segment < 1:
        raise ValueError(f"raters_per_segment must be at least 1, got {raters_per_segment}")
    ratings = parse_ratings(ratings)
    batches: tuple[dict[tuple[str, str], Rating], ...] = tuple({} for _ in range(raters_per_segment))
    raters: dict[tuple[str, str], set[str]] = {}
    for rating in ratings:
        seen = raters.setdefault(rating.key, set())
        if rating.rater in seen:
            raise ValueError(f"rater {rating.rater!r} rated segment {rating.key} twice")
        seen.add(rating.rater)
        if len(seen) > raters_per_segment:
            raise ValueError(f"segment {rating.key} has more than {raters_per_segment} ratings")
    for rating in (r for r in ratings if r.batch is not None):
        if rating.batch > raters_per_segment:
            raise ValueError(f"rating batch {rating.batch} exceeds raters_per_segment={raters_per_segment}")
        batch = batches[rating.batch - 1]
        if rating.key in batch:
            raise ValueError(f"segment {rating.key} has two ratings in batch {rating.batch}")
        batch[rating.key] = rating
    for rating in (r for r in ratings if r.batch is None):
        free = next(b for b in batches if rating.key not in b)  # exists: at most raters_per_segment ratings
        free[rating.key] = rating
    return batches


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


@dataclass(frozen=True)
class ScoreDistribution:
    """Table 2: the share of labels rated 0, 1, 2 and 3.

    Attributes:
        fractions: score -> fraction of labels, averaged over the batches that hold ratings.
        per_batch: per batch, score -> fraction of that batch's rated labels (``None``: empty batch).
        counts_per_batch: per batch, score -> number of labels.
        segments: distinct rated segments.
        missing_ratings: segment-batch slots without a rating (segments with fewer raters).
    """

    fractions: dict[int, float | None]
    per_batch: tuple[dict[int, float] | None, ...]
    counts_per_batch: tuple[dict[int, int], ...]
    segments: int
    missing_ratings: int

    def to_dict(self) -> dict:
        return {
            "fractions": {str(k): v for k, v in self.fractions.items()},
            "per_batch": [None if b is None else {str(k): v for k, v in b.items()} for b in self.per_batch],
            "counts_per_batch": [{str(k): v for k, v in b.items()} for b in self.counts_per_batch],
            "segments": self.segments,
            "missing_ratings": self.missing_ratings,
            "scale": {str(level.score): level.name for level in RATING_SCALE},
        }


def score_distribution(
    ratings: Iterable[Rating | Mapping], raters_per_segment: int = RATERS_PER_SEGMENT
) -> ScoreDistribution:
    """Table 2: per batch, the fraction of labels at each score; then the mean over batches."""
    batches = assign_batches(ratings, raters_per_segment)
    counts = tuple({s: sum(1 for r in batch.values() if r.score == s) for s in SCORES} for batch in batches)
    per_batch = tuple({s: c[s] / len(batch) for s in SCORES} if batch else None for c, batch in zip(counts, batches))
    segments = set().union(*(batch.keys() for batch in batches))
    return ScoreDistribution(
        fractions={s: _mean([b[s] for b in per_batch if b is not None]) for s in SCORES},
        per_batch=per_batch,
        counts_per_batch=counts,
        segments=len(segments),
        missing_ratings=sum(len(segments) - len(batch) for batch in batches),
    )


@dataclass(frozen=True)
class HumanVerifiedScores:
    """Table 1 at one human threshold: IoU and Recall when reassignments rated h ≥ k count.

    Attributes:
        min_score: k.
        miou, recall, mean_image_miou: means over the batches that hold ratings.
        batches: the per-batch scores (``None`` for a batch with no rating at all).
        unrated_segments: per batch, predicted segments without a rating in it.
        label_mismatches: ratings of a segment whose rated label differs from its reassignment
            (they were made for another reassignment and are ignored).
        unknown_ratings: ratings of segments that are not among the predictions (ignored).
    """

    min_score: int
    miou: float | None
    recall: float | None
    mean_image_miou: float | None
    batches: tuple[SegmentationScores | None, ...]
    unrated_segments: tuple[int, ...]
    label_mismatches: int
    unknown_ratings: int
    tau_iou: float = field(default=TAU_IOU)

    def to_dict(self) -> dict:
        return {
            "min_score": self.min_score,
            "miou": self.miou,
            "recall": self.recall,
            "mean_image_miou": self.mean_image_miou,
            "unrated_segments": list(self.unrated_segments),
            "label_mismatches": self.label_mismatches,
            "unknown_ratings": self.unknown_ratings,
            "tau_iou": self.tau_iou,
            "batches": [None if b is None else b.to_dict() for b in self.batches],
        }


def human_verified_scores(
    images: Sequence[ImageOverlaps],
    reassignments: Sequence[Sequence[Reassignment]],
    ratings: Iterable[Rating | Mapping],
    class_names: Sequence[str],
    min_score: int,
    tau_iou: float = TAU_IOU,
    raters_per_segment: int = RATERS_PER_SEGMENT,
) -> HumanVerifiedScores:
    """IoU and Segment Recall with human verification h ≥ k (section 4.2, Table 1).

    In batch b, segment i keeps its reassigned label if batch b's rating of (image, segment) is
    for that same label and scores at least ``min_score``; otherwise it is unlabelled.

    Args:
        images: one :class:`ImageOverlaps` per image.
        reassignments: per image, one :class:`Reassignment` per segment (``images[i].segment_ids`` order).
        ratings: ratings of the reassigned labels (each must carry ``label``).
        class_names: the evaluated classes.
        min_score: k (Table 1: 3, 2 or 1).
    """
    if len(images) != len(reassignments):
        raise ValueError(f"{len(images)} images but {len(reassignments)} reassignment lists")
    ratings = parse_ratings(ratings)
    unlabelled = [r for r in ratings if r.label is None]
    if unlabelled:
        raise ValueError(
            f"{len(unlabelled)} ratings carry no reassigned label (e.g. {unlabelled[0].key}): "
            "ratings of predicted texts cannot verify reassignments"
        )
    batches = assign_batches(ratings, raters_per_segment)
    known: dict[tuple[str, str], Reassignment] = {}
    for image, per_image in zip(images, reassignments):
        if len(per_image) != image.num_segments:
            raise ValueError(f"{image.image_id}: {len(per_image)} reassignments for {image.num_segments} segments")
        known.update({(image.image_id, str(s)): r for s, r in zip(image.segment_ids, per_image)})
    scores: list[SegmentationScores | None] = []
    unrated: list[int] = []
    for batch in batches:
        if not batch:
            scores.append(None)
            unrated.append(len(known))
            continue
        labels = []
        for image, per_image in zip(images, reassignments):
            ratings_here = [batch.get((image.image_id, str(s))) for s in image.segment_ids]
            h = [
                r.score if r is not None and r.label == reassignment.label else None
                for r, reassignment in zip(ratings_here, per_image)
            ]
            labels.append(verify_by_scores(per_image, h, min_score))
        unrated.append(sum(1 for key in known if key not in batch))
        scores.append(evaluate_segmentation(images, labels, class_names, tau_iou))
    present = [s for s in scores if s is not None]
    return HumanVerifiedScores(
        min_score=int(min_score),
        miou=_mean([s.miou for s in present]),
        recall=_mean([s.recall for s in present]),
        mean_image_miou=_mean([s.mean_image_miou for s in present]),
        batches=tuple(scores),
        unrated_segments=tuple(unrated),
        label_mismatches=sum(1 for r in ratings if r.key in known and r.label != known[r.key].label),
        unknown_ratings=sum(1 for r in ratings if r.key not in known),
        tau_iou=float(tau_iou),
    )
