"""Metrics of the zero-guidance protocol (section 4.3) and FMbSeg's mIoU (section 4.1).

Conventions shared by every function here:

* Ground truth is a label map of raw pixel values, ``(H, W)`` integers, read through a
  :class:`LabelSpace` that says which value is which class and which values are ignored
  (VOC's 255 boundaries; "background" when a benchmark leaves it out, as PAS-20 and PC-59 do).
* Predictions are *evaluated-class indices*: an index into ``LabelSpace.classes``, or
  ``UNLABELLED`` (-1, or anything outside ``[0, C)``) where nothing is predicted.
* IoU follows the PASCAL VOC protocol (zero-guidance reference [9]) as implemented by mmseg and
  TCL (FMbSeg's protocol): per class, intersection and union are summed over the whole dataset
  before dividing; pixels the ground truth ignores never count; the mean runs over the classes
  whose union is non-empty (present in the ground truth or predicted). Scores are fractions in
  [0, 1] (the papers print percentages); an undefined score is ``None``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from .reassignment import TAU_SBERT, Reassignment, pairwise_cosine, verify_by_threshold

__all__ = [
    "TAU_IOU",
    "UNLABELLED",
    "IGNORE_INDEX",
    "LabelSpace",
    "ClassAreas",
    "ImageOverlaps",
    "SegmentationScores",
    "evaluate_segmentation",
    "SweepPoint",
    "threshold_sweep",
    "TABLE6_SBERT_THRESHOLDS",
    "TABLE7_CLIP_THRESHOLDS",
    "TextGenerationQuality",
    "text_generation_quality",
    "MeanIoUResult",
    "MeanIoU",
    "label_map_areas",
]

TAU_IOU = 0.5  # τ_IoU, appendix C: a ground-truth segment is found when IoU > 0.5
UNLABELLED = -1  # a pixel or segment with no (verified) class
IGNORE_INDEX = 255  # VOC / mmseg "void" pixel value

# Appendix C, Table 6 (IoU_tt against τ_SBERT) and Table 7 (IoU_st against τ_CLIP).
TABLE6_SBERT_THRESHOLDS = tuple(round(0.1 * i, 2) for i in range(11))
TABLE7_CLIP_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(8))


def _as_float(value: float) -> float | None:
    """A JSON-able score: ``None`` for NaN."""
    return None if value is None or math.isnan(value) else float(value)


def _nanmean(values: Iterable[float]) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


@dataclass(frozen=True)
class LabelSpace:
    """Which ground-truth pixel value is which class, and what is not evaluated.

    Attributes:
        names: ``names[v]`` is the class of pixel value ``v`` (e.g. VOC: 0 "background" ... 20).
        ignore_values: pixel values never evaluated (VOC's 255 "void" boundaries).
        excluded: classes whose pixels are ignored and which are no test label, e.g.
            ``("background",)`` for PAS-20 / PV-20 and PC-59 (mmseg's ``reduce_zero_label``).
    """

    names: tuple[str, ...]
    ignore_values: tuple[int, ...] = (IGNORE_INDEX,)
    excluded: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "ignore_values", tuple(int(v) for v in self.ignore_values))
        object.__setattr__(self, "excluded", tuple(str(n) for n in self.excluded))
        if not self.names:
            raise ValueError("a label space needs at least one class name")
        duplicates = sorted({n for n in self.names if self.names.count(n) > 1})
        if duplicates:
            raise ValueError(f"class names must be unique; repeated: {duplicates}")
        unknown = [n for n in self.excluded if n not in self.names]
        if unknown:
            raise ValueError(f"excluded classes {unknown} are not among the class names")
        clashes = [v for v in self.ignore_values if 0 <= v < len(self.names)]
        if clashes:
            raise ValueError(
                f"ignore values {clashes} are also class pixel values (0..{len(self.names) - 1}); "
                "exclude the class by name instead"
            )
        if not self.classes:
            raise ValueError("every class is excluded: nothing left to evaluate")

    @property
    def classes(self) -> tuple[str, ...]:
        """The evaluated classes, in pixel-value order: the test labels T_s of section 4.1."""
        return tuple(n for n in self.names if n not in self.excluded)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _lookup(self) -> np.ndarray:
        """Pixel value -> evaluated-class index (or UNLABELLED) for values 0..len(names)-1."""
        index = {name: i for i, name in enumerate(self.classes)}
        return np.array([index.get(n, UNLABELLED) for n in self.names], dtype=np.int64)

    def to_class_indices(self, label_map: np.ndarray, strict: bool = True) -> np.ndarray:
        """(H, W) raw pixel values -> (H, W) int64 evaluated-class indices, -1 where ignored.

        With ``strict`` (ground truth), a value that is neither a class nor an ignore value is an
        error; without it (predicted label maps), such values mean "nothing predicted".
        """
        values = np.asarray(label_map)
        if values.ndim != 2:
            raise ValueError(f"a label map must be (H, W), got shape {values.shape}")
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"a label map must hold integers, got {values.dtype}")
        values = values.astype(np.int64)
        known = (values >= 0) & (values < len(self.names))
        if strict:
            unexpected = ~known & ~np.isin(values, self.ignore_values)
            if unexpected.any():
                bad = np.unique(values[unexpected])[:10].tolist()
                raise ValueError(
                    f"label map holds values {bad} that are neither classes (0..{len(self.names) - 1}) "
                    f"nor ignore values {list(self.ignore_values)}"
                )
        out = np.full(values.shape, UNLABELLED, dtype=np.int64)
        out[known] = self._lookup()[values[known]]
        return out

    def to_dict(self) -> dict:
        return {"names": list(self.names), "ignore_values": list(self.ignore_values), "excluded": list(self.excluded)}


@dataclass(frozen=True)
class ClassAreas:
    """Pixel counts per evaluated class, each a (C,) int64 array; they add up over images."""

    intersection: np.ndarray
    union: np.ndarray
    predicted: np.ndarray
    ground_truth: np.ndarray

    @classmethod
    def zeros(cls, num_classes: int) -> "ClassAreas":
        return cls(*(np.zeros(num_classes, dtype=np.int64) for _ in range(4)))

    @classmethod
    def from_counts(cls, intersection, predicted, ground_truth) -> "ClassAreas":
        intersection = np.asarray(intersection, dtype=np.int64)
        predicted = np.asarray(predicted, dtype=np.int64)
        ground_truth = np.asarray(ground_truth, dtype=np.int64)
        return cls(intersection, predicted + ground_truth - intersection, predicted, ground_truth)

    def __add__(self, other: "ClassAreas") -> "ClassAreas":
        return ClassAreas(
            self.intersection + other.intersection,
            self.union + other.union,
            self.predicted + other.predicted,
            self.ground_truth + other.ground_truth,
        )

    def iou(self) -> np.ndarray:
        """(C,) float: IoU_c = |P_c ∩ G_c| / |P_c ∪ G_c|, NaN where the union is empty."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.union > 0, self.intersection / np.maximum(self.union, 1), np.nan)

    def mean_iou(self) -> float:
        """Mean IoU over classes with a non-empty union (NaN if there is none)."""
        return _nanmean(self.iou().tolist())


@dataclass(frozen=True)
class ImageOverlaps:
    """One image's predicted segments against its ground truth, reduced to pixel counts.

    Pixels are grouped by (the set of predicted segments covering them, their ground-truth
    class); ignored pixels are dropped. Any labelling of the segments can then be scored
    without the masks, exactly, even when segments overlap.

    Attributes:
        image_id: the image's name (the prediction file's ``"image"``).
        segment_ids: ids of the K segments, in mask order.
        membership: (G, K) bool, which segments cover the pixels of group g.
        gt_class: (G,) int64, the evaluated ground-truth class of group g.
        pixel_count: (G,) int64, the pixels in group g.
        num_classes: C, the number of evaluated classes.
    """

    image_id: str
    segment_ids: tuple
    membership: np.ndarray
    gt_class: np.ndarray
    pixel_count: np.ndarray
    num_classes: int

    @classmethod
    def from_masks(
        cls,
        image_id: str,
        masks: np.ndarray,
        gt_classes: np.ndarray,
        num_classes: int,
        segment_ids: Sequence | None = None,
    ) -> "ImageOverlaps":
        """Args:
        masks: (K, H, W) bool, the predicted segments (K may be 0).
        gt_classes: (H, W) int, evaluated-class indices with -1 for ignored pixels
            (``LabelSpace.to_class_indices``).
        num_classes: C.
        segment_ids: K ids (default 0..K-1).
        """
        gt_classes = np.asarray(gt_classes)
        masks = np.asarray(masks, dtype=bool)
        if gt_classes.ndim != 2:
            raise ValueError(f"{image_id}: ground truth must be (H, W), got shape {gt_classes.shape}")
        if masks.ndim != 3 or masks.shape[1:] != gt_classes.shape:
            raise ValueError(
                f"{image_id}: masks must be (K, H, W) with (H, W) = ground truth {gt_classes.shape}, "
                f"got {masks.shape}"
            )
        if gt_classes.size and gt_classes.max() >= num_classes:
            raise ValueError(f"{image_id}: ground-truth class {int(gt_classes.max())} >= num_classes {num_classes}")
        k = masks.shape[0]
        segment_ids = tuple(range(k)) if segment_ids is None else tuple(segment_ids)
        if len(segment_ids) != k:
            raise ValueError(f"{image_id}: {len(segment_ids)} segment ids for {k} masks")
        if len(set(map(str, segment_ids))) != k:
            raise ValueError(f"{image_id}: segment ids must be unique, got {segment_ids}")
        valid = gt_classes.reshape(-1) >= 0
        gt = gt_classes.reshape(-1)[valid].astype(np.int64)
        covered = masks.reshape(k, gt_classes.size)[:, valid]  # (K, N)
        # Number each pixel's set of covering segments, 62 segments (bits of an int64) at a time.
        signature = np.zeros(gt.size, dtype=np.int64)
        for start in range(0, k, 62):
            chunk = covered[start : start + 62].astype(np.int64)
            bits = (np.left_shift(1, np.arange(chunk.shape[0], dtype=np.int64)) @ chunk) if chunk.size else chunk
            values, chunk_ids = np.unique(bits, return_inverse=True)
            _, signature = np.unique(signature * len(values) + chunk_ids.reshape(-1), return_inverse=True)
            signature = signature.reshape(-1).astype(np.int64)
        _, first, counts = np.unique(signature * num_classes + gt, return_index=True, return_counts=True)
        membership = covered[:, first].T  # (G, K)
        return cls(str(image_id), segment_ids, membership, gt[first], counts.astype(np.int64), int(num_classes))

    @property
    def num_segments(self) -> int:
        return len(self.segment_ids)

    def class_areas(self, segment_labels: Sequence[int]) -> ClassAreas:
        """Areas when segment k carries class ``segment_labels[k]`` (-1: unlabelled).

        Section 4.3: "segments with the same label T* are merged to form a single segment for
        the label" - a pixel is predicted as class c if any segment covering it has label c.
        """
        labels = np.asarray(segment_labels, dtype=np.int64).reshape(-1)
        if labels.size != self.num_segments:
            raise ValueError(f"{self.image_id}: {labels.size} labels for {self.num_segments} segments")
        if labels.size and labels.max() >= self.num_classes:
            raise ValueError(f"{self.image_id}: label {int(labels.max())} >= num_classes {self.num_classes}")
        one_hot = np.zeros((self.num_segments, self.num_classes), dtype=np.int64)
        labelled = np.flatnonzero(labels >= 0)
        one_hot[labelled, labels[labelled]] = 1
        predicted = (self.membership.astype(np.int64) @ one_hot) > 0  # (G, C): P_c covers group g
        groups = np.arange(self.gt_class.size)
        hit = predicted[groups, self.gt_class] if groups.size else np.zeros(0, dtype=bool)
        intersection = np.bincount(self.gt_class[hit], weights=self.pixel_count[hit], minlength=self.num_classes)
        ground_truth = np.bincount(self.gt_class, weights=self.pixel_count, minlength=self.num_classes)
        predicted_area = self.pixel_count @ predicted if groups.size else np.zeros(self.num_classes)
        return ClassAreas.from_counts(intersection, predicted_area, ground_truth)


@dataclass(frozen=True)
class SegmentationScores:
    """Segmentation IoU and Segment Recall over a dataset (section 4.3).

    Attributes:
        miou: mean over classes of IoU_c, intersection and union summed over all images
            (the PASCAL VOC protocol); ``None`` if no class occurs at all.
        per_class_iou: class -> IoU_c (``None`` for a class neither in the ground truth nor predicted).
        mean_image_miou: the other reading of "IoU for each image": each image's mean IoU over
            its classes (present in its ground truth or predicted), averaged over images.
        recall: Segment Recall = true positives / ground-truth segments.
        true_positives: ground-truth segments whose merged predicted segment of the same class
            has IoU > tau_iou.
        ground_truth_segments: (image, class) pairs present in the ground truth.
    """

    miou: float | None
    per_class_iou: dict[str, float | None]
    mean_image_miou: float | None
    recall: float | None
    true_positives: int
    ground_truth_segments: int
    num_images: int
    tau_iou: float

    def to_dict(self) -> dict:
        return {
            "miou": self.miou,
            "recall": self.recall,
            "mean_image_miou": self.mean_image_miou,
            "true_positives": self.true_positives,
            "ground_truth_segments": self.ground_truth_segments,
            "num_images": self.num_images,
            "tau_iou": self.tau_iou,
            "per_class_iou": dict(self.per_class_iou),
        }


def evaluate_segmentation(
    images: Sequence[ImageOverlaps],
    segment_labels: Sequence[Sequence[int]],
    class_names: Sequence[str],
    tau_iou: float = TAU_IOU,
) -> SegmentationScores:
    """Segmentation IoU and Segment Recall (section 4.3) for verified labels.

    Args:
        images: one :class:`ImageOverlaps` per image.
        segment_labels: per image, per segment, the verified reassigned class index, or -1 for a
            segment whose reassignment was not verified (it counts as unlabelled).
        class_names: the C evaluated classes (``LabelSpace.classes``).
        tau_iou: τ_IoU; a ground-truth segment is a true positive if IoU > τ_IoU (strictly).
    """
    if len(images) != len(segment_labels):
        raise ValueError(f"{len(images)} images but {len(segment_labels)} label lists")
    if not 0.0 <= tau_iou <= 1.0:
        raise ValueError(f"tau_iou must be in [0, 1], got {tau_iou}")
    num_classes = len(class_names)
    total = ClassAreas.zeros(num_classes)
    image_means: list[float] = []
    true_positives = ground_truth_segments = 0
    for image, labels in zip(images, segment_labels):
        if image.num_classes != num_classes:
            raise ValueError(f"{image.image_id}: built for {image.num_classes} classes, not {num_classes}")
        areas = image.class_areas(labels)
        total = total + areas
        iou = areas.iou()
        image_means.append(areas.mean_iou())
        present = areas.ground_truth > 0
        ground_truth_segments += int(present.sum())
        true_positives += int((iou[present] > tau_iou).sum())  # "IoU ... greater than τ_IoU"
    per_class = total.iou()
    return SegmentationScores(
        miou=_as_float(total.mean_iou()),
        per_class_iou={name: _as_float(v) for name, v in zip(class_names, per_class.tolist())},
        mean_image_miou=_as_float(_nanmean(image_means)),
        recall=true_positives / ground_truth_segments if ground_truth_segments else None,
        true_positives=true_positives,
        ground_truth_segments=ground_truth_segments,
        num_images=len(images),
        tau_iou=float(tau_iou),
    )


@dataclass(frozen=True)
class SweepPoint:
    """Scores at one verification threshold τ (appendix C, Tables 6-7)."""

    threshold: float
    scores: SegmentationScores

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, **self.scores.to_dict()}


def threshold_sweep(
    images: Sequence[ImageOverlaps],
    reassignments: Sequence[Sequence[Reassignment]],
    class_names: Sequence[str],
    thresholds: Sequence[float] | None = None,
    tau_iou: float = TAU_IOU,
) -> list[SweepPoint]:
    """IoU and Recall against the verification threshold (appendix C, Figs. 11-12, Tables 6-7).

    ``thresholds`` default to Table 6's τ_SBERT grid for text-to-text reassignments and Table 7's
    τ_CLIP grid for segment-to-text ones.
    """
    if thresholds is None:
        methods = {r.method for per_image in reassignments for r in per_image}
        thresholds = TABLE7_CLIP_THRESHOLDS if methods == {"ST"} else TABLE6_SBERT_THRESHOLDS
    return [
        SweepPoint(
            float(tau),
            evaluate_segmentation(images, [verify_by_threshold(r, tau) for r in reassignments], class_names, tau_iou),
        )
        for tau in thresholds
    ]


@dataclass(frozen=True)
class TextGenerationQuality:
    """Text Generation Quality (section 4.3): the true-positive rate of oracle-segment labels."""

    score: float | None
    true_positives: int
    total: int
    tau_sbert: float
    similarities: tuple[float, ...] = field(repr=False, default=())

    def to_dict(self) -> dict:
        return {
            "tgq": self.score,
            "true_positives": self.true_positives,
            "total": self.total,
            "tau_sbert": self.tau_sbert,
            "similarities": list(self.similarities),
        }


def text_generation_quality(
    ground_truth_labels: Sequence[str],
    predicted_texts: Sequence[str],
    embed_texts: Callable[[list[str]], object],
    tau_sbert: float = TAU_SBERT,
) -> TextGenerationQuality:
    """TGQ: the fraction of ground-truth segments whose predicted label is close to the truth.

    "we feed each ground-truth segment into our model and compute the cosine similarity between
    our predicted label and the ground-truth label. If the value is higher than τ_SBERT, it is
    considered a True Positive" - so a pair counts when cossim_SBERT(text, label) > τ_SBERT.

    Args:
        ground_truth_labels: N ground-truth class names, one per ground-truth segment.
        predicted_texts: the N texts the method produced for those segments.
        embed_texts: list of N strings -> (N, d) embeddings (Sentence-BERT's ``encode``).
    """
    if len(ground_truth_labels) != len(predicted_texts):
        raise ValueError(f"{len(ground_truth_labels)} ground-truth labels but {len(predicted_texts)} texts")
    if not -1.0 <= tau_sbert <= 1.0:
        raise ValueError(f"tau_sbert must be in [-1, 1], got {tau_sbert}")
    if not ground_truth_labels:
        return TextGenerationQuality(None, 0, 0, float(tau_sbert))
    similarities = pairwise_cosine(embed_texts(list(predicted_texts)), embed_texts(list(ground_truth_labels)))
    true_positives = int((similarities > tau_sbert).sum())
    return TextGenerationQuality(
        score=true_positives / len(similarities),
        true_positives=true_positives,
        total=len(similarities),
        tau_sbert=float(tau_sbert),
        similarities=tuple(float(s) for s in similarities),
    )


def label_map_areas(predicted: np.ndarray, ground_truth: np.ndarray, label_space: LabelSpace) -> ClassAreas:
    """Areas of one image for FMbSeg-style dense predictions (mmseg's ``intersect_and_union``).

    Args:
        predicted: (H, W) int, evaluated-class indices (``label_space.classes``); any value
            outside [0, C) means nothing predicted (FMbSeg's -1).
        ground_truth: (H, W) raw pixel values read through ``label_space``.
    """
    gt = label_space.to_class_indices(ground_truth)
    predicted = np.asarray(predicted)
    if predicted.shape != gt.shape:
        raise ValueError(f"prediction {predicted.shape} and ground truth {gt.shape} differ in size")
    if not np.issubdtype(predicted.dtype, np.integer):
        raise ValueError(f"a predicted label map must hold integers, got {predicted.dtype}")
    c = label_space.num_classes
    valid = gt >= 0
    gt_valid = gt[valid]
    pred_valid = predicted[valid].astype(np.int64)
    in_range = (pred_valid >= 0) & (pred_valid < c)
    intersection = np.bincount(gt_valid[in_range & (pred_valid == gt_valid)], minlength=c)
    predicted_area = np.bincount(pred_valid[in_range], minlength=c)
    ground_truth_area = np.bincount(gt_valid, minlength=c)
    return ClassAreas.from_counts(intersection, predicted_area, ground_truth_area)


@dataclass(frozen=True)
class MeanIoUResult:
    """Dataset mIoU (FMbSeg section 4.1; TCL / mmseg protocol)."""

    miou: float | None
    per_class_iou: dict[str, float | None]
    num_images: int
    label_space: LabelSpace

    def to_dict(self) -> dict:
        return {
            "miou": self.miou,
            "num_images": self.num_images,
            "classes": list(self.label_space.classes),
            "excluded": list(self.label_space.excluded),
            "ignore_values": list(self.label_space.ignore_values),
            "per_class_iou": dict(self.per_class_iou),
        }


class MeanIoU:
    """Accumulates FMbSeg's mIoU over a dataset of label maps.

    With ``LabelSpace(VOC_NAMES)`` the background is a class (PV-21); with
    ``excluded=("background",)`` its pixels are ignored and it is no class (PV-20).
    """

    def __init__(self, label_space: LabelSpace):
        self.label_space = label_space
        self.areas = ClassAreas.zeros(label_space.num_classes)
        self.num_images = 0

    def update(self, predicted: np.ndarray, ground_truth: np.ndarray) -> ClassAreas:
        """Add one image; returns its own areas."""
        areas = label_map_areas(predicted, ground_truth, self.label_space)
        self.areas = self.areas + areas
        self.num_images += 1
        return areas

    def result(self) -> MeanIoUResult:
        iou = self.areas.iou()
        return MeanIoUResult(
            miou=_as_float(self.areas.mean_iou()),
            per_class_iou={n: _as_float(v) for n, v in zip(self.label_space.classes, iou.tolist())},
            num_images=self.num_images,
            label_space=self.label_space,
        )
