"""Segmentation IoU, Segment Recall, TGQ (zero-guidance section 4.3) and FMbSeg's mIoU, by hand."""

import numpy as np
import pytest

from backend.evaluation.metrics import (
    TABLE6_SBERT_THRESHOLDS,
    TABLE7_CLIP_THRESHOLDS,
    TAU_IOU,
    ImageOverlaps,
    LabelSpace,
    MeanIoU,
    evaluate_segmentation,
    text_generation_quality,
    threshold_sweep,
)
from backend.evaluation.reassignment import Reassignment

# Pixel values 0..3; background is excluded (ignored, no test label) as in PAS-20 / PC-59.
SPACE = LabelSpace(("background", "a", "b", "c"), excluded=("background",))
A, B, C = 0, 1, 2  # evaluated class indices


def masks_from(shape, *cells):
    """(K, H, W) masks, each given as a list of (row, col)."""
    out = np.zeros((len(cells), *shape), dtype=bool)
    for k, points in enumerate(cells):
        for r, c in points:
            out[k, r, c] = True
    return out


# Image 1, ground truth (raw values; 0 = background, 255 = void):
#   1 1 2 2
#   1 1 2 2
#   3 3 0 255
GT1 = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 0, 255]])
SEGMENTS1 = masks_from(
    (3, 4),
    [(r, c) for r in range(3) for c in (0, 1)],  # s0: left half, 4 a + 2 c pixels
    [(0, 2), (0, 3)],  # s1: top of b
    [(1, 2), (1, 3), (2, 2), (2, 3)],  # s2: rest of b and two ignored pixels
)
# Image 2:
#   2 2 2
#   0 3 3
GT2 = np.array([[2, 2, 2], [0, 3, 3]])
SEGMENTS2 = masks_from((2, 3), [(0, 0), (0, 1), (0, 2)], [(1, 1), (1, 2)], [(1, 0)])


def hand_images():
    return [
        ImageOverlaps.from_masks("one.jpg", SEGMENTS1, SPACE.to_class_indices(GT1), SPACE.num_classes),
        ImageOverlaps.from_masks("two.jpg", SEGMENTS2, SPACE.to_class_indices(GT2), SPACE.num_classes),
    ]


def test_label_space_maps_values_and_ignores():
    assert SPACE.classes == ("a", "b", "c")
    np.testing.assert_array_equal(SPACE.to_class_indices(GT1), [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, -1, -1]])
    with pytest.raises(ValueError, match=r"values \[7\]"):
        SPACE.to_class_indices(np.array([[1, 7]]))
    np.testing.assert_array_equal(SPACE.to_class_indices(np.array([[1, 7, 255]]), strict=False), [[0, -1, -1]])
    with pytest.raises(ValueError, match="ignore values"):
        LabelSpace(("x", "y"), ignore_values=(1,))
    with pytest.raises(ValueError, match="not among"):
        LabelSpace(("x",), excluded=("background",))
    with pytest.raises(ValueError, match="unique"):
        LabelSpace(("x", "x"))


def test_iou_recall_by_hand():
    # labels: image 1 s0->a, s1->b, s2->b (merged with s1); image 2 s0->c (wrong), s1 unverified,
    # s2->a but it covers only a background pixel, which is ignored.
    scores = evaluate_segmentation(hand_images(), [[A, B, B], [C, -1, A]], SPACE.classes)
    # image 1: a: I=4, P=6 (s0, both c pixels too), U=6 | b: I=4, P=4 (valid), U=4 | c: I=0, U=2
    # image 2: a: nothing | b: I=0, U=3 | c: I=0, P=3, G=2, U=5
    # dataset: a 4/6, b 4/(4+3), c 0/(2+5)
    assert scores.per_class_iou == pytest.approx({"a": 4 / 6, "b": 4 / 7, "c": 0.0})
    assert scores.miou == pytest.approx((4 / 6 + 4 / 7 + 0) / 3)
    # per image: (4/6 + 1 + 0) / 3 and (0 + 0) / 2 (a has an empty union in image 2)
    assert scores.mean_image_miou == pytest.approx(((4 / 6 + 1 + 0) / 3 + 0) / 2)
    # ground-truth segments: (1,a) (1,b) (1,c) (2,b) (2,c); true positives (IoU > 0.5): (1,a) (1,b)
    assert (scores.true_positives, scores.ground_truth_segments, scores.recall) == (2, 5, pytest.approx(2 / 5))
    assert scores.num_images == 2 and scores.tau_iou == TAU_IOU == 0.5


def test_unverified_segments_are_unlabelled():
    scores = evaluate_segmentation(hand_images(), [[-1, -1, -1], [-1, -1, -1]], SPACE.classes)
    assert scores.per_class_iou == {"a": 0.0, "b": 0.0, "c": 0.0}
    assert scores.miou == 0.0 and scores.recall == 0.0


def test_a_class_neither_present_nor_predicted_is_left_out_of_the_mean():
    space = LabelSpace(("a", "b", "zebra"))
    gt = space.to_class_indices(np.array([[0, 0, 1, 1]]))
    image = ImageOverlaps.from_masks("x", masks_from((1, 4), [(0, 0), (0, 1), (0, 2)]), gt, 3)
    scores = evaluate_segmentation([image], [[0]], space.classes)
    # a: I=2, U=3; b: I=0, U=2; zebra: no union -> None, not a zero in the mean
    assert scores.per_class_iou == {"a": pytest.approx(2 / 3), "b": 0.0, "zebra": None}
    assert scores.miou == pytest.approx((2 / 3 + 0) / 2)


def test_recall_needs_iou_strictly_greater_than_tau():
    space = LabelSpace(("a", "b"))
    gt = space.to_class_indices(np.array([[0, 0, 0, 0, 1, 1]]))
    half = masks_from((1, 6), [(0, 0), (0, 1)])  # a: I=2, U=4 -> IoU exactly 0.5
    image = ImageOverlaps.from_masks("x", half, gt, 2)
    assert evaluate_segmentation([image], [[0]], space.classes).true_positives == 0
    more = masks_from((1, 6), [(0, 0), (0, 1), (0, 2)])  # IoU 3/4
    image = ImageOverlaps.from_masks("x", more, gt, 2)
    assert evaluate_segmentation([image], [[0]], space.classes).true_positives == 1
    assert evaluate_segmentation([image], [[0]], space.classes, tau_iou=0.75).true_positives == 0


def test_overlapping_segments_merge_as_a_union():
    space = LabelSpace(("a", "b"))
    gt = space.to_class_indices(np.array([[0, 0, 0, 1]]))
    # two overlapping segments of a (pixels 0-1 and 1-2) and one of b covering pixels 2-3
    masks = masks_from((1, 4), [(0, 0), (0, 1)], [(0, 1), (0, 2)], [(0, 2), (0, 3)])
    areas = ImageOverlaps.from_masks("x", masks, gt, 2).class_areas([0, 0, 1])
    # a: P = {0,1,2} (pixel 1 counted once), I = 3, U = 3; b: P = {2,3}, I = 1, U = 2
    np.testing.assert_array_equal(areas.intersection, [3, 1])
    np.testing.assert_array_equal(areas.predicted, [3, 2])
    np.testing.assert_array_equal(areas.union, [3, 2])


def reference_scores(masks_per_image, gts, labels_per_image, num_classes, tau):
    """A plain loop over classes and pixels: merge masks by label, count I and U."""
    inter = np.zeros(num_classes)
    union = np.zeros(num_classes)
    tp = total = 0
    for masks, gt, labels in zip(masks_per_image, gts, labels_per_image):
        valid = gt >= 0
        for c in range(num_classes):
            merged = np.zeros(gt.shape, dtype=bool)
            for mask, label in zip(masks, labels):
                if label == c:
                    merged |= mask
            i = np.sum(merged & (gt == c) & valid)
            u = np.sum((merged | (gt == c)) & valid)
            inter[c] += i
            union[c] += u
            if np.sum((gt == c) & valid):
                total += 1
                tp += i / u > tau
    ious = [i / u for i, u in zip(inter, union) if u > 0]
    return np.mean(ious), tp / total


def test_against_a_loop_reference_on_random_overlapping_segments():
    rng = np.random.default_rng(0)
    num_classes = 4
    all_masks, gts, labels, images = [], [], [], []
    for n in range(6):
        h, w, k = rng.integers(5, 12), rng.integers(5, 12), rng.integers(0, 12)
        gt = rng.integers(-1, num_classes, size=(h, w))
        masks = rng.random((k, h, w)) < 0.3
        lab = rng.integers(-1, num_classes, size=k)
        all_masks.append(masks), gts.append(gt), labels.append(lab)
        images.append(ImageOverlaps.from_masks(f"{n}", masks, gt, num_classes))
    miou, recall = reference_scores(all_masks, gts, labels, num_classes, 0.2)
    scores = evaluate_segmentation(images, labels, list("wxyz"), tau_iou=0.2)
    assert scores.miou == pytest.approx(miou)
    assert scores.recall == pytest.approx(recall)


def test_more_than_62_segments_and_no_segments():
    gt = np.zeros((1, 70), dtype=int)
    masks = np.eye(70, dtype=bool)[:, None, :]  # 70 one-pixel segments: more than one int64 of bits
    masks[69, 0, 0] = True  # the last one also covers pixel 0
    image = ImageOverlaps.from_masks("x", masks, gt, 1)
    labels = [0 if k in (0, 9, 63) else -1 for k in range(70)]
    areas = image.class_areas(labels)
    assert areas.intersection[0] == 3 and areas.union[0] == 70
    assert image.class_areas([0 if k == 69 else -1 for k in range(70)]).intersection[0] == 2
    empty = ImageOverlaps.from_masks("y", np.zeros((0, 1, 70), bool), gt, 1)
    assert evaluate_segmentation([empty], [[]], ["a"]).per_class_iou == {"a": 0.0}


def test_bad_shapes_are_reported():
    with pytest.raises(ValueError, match="masks must be"):
        ImageOverlaps.from_masks("x", np.zeros((1, 2, 2), bool), np.zeros((3, 3), int), 1)
    image = ImageOverlaps.from_masks("x", np.zeros((2, 2, 2), bool), np.zeros((2, 2), int), 1)
    with pytest.raises(ValueError, match="1 labels for 2 segments"):
        image.class_areas([0])
    with pytest.raises(ValueError, match="2 images but 1"):
        evaluate_segmentation([image, image], [[0, 0]], ["a"])


def test_sweep_equals_hand_verified_labels():
    reassignments = [
        [Reassignment("a", A, 0.9, "TT"), Reassignment("b", B, 0.6, "TT"), Reassignment("b", B, 0.3, "TT")],
        [Reassignment("c", C, 0.5, "TT"), Reassignment("c", C, 0.2, "TT"), Reassignment("a", A, 0.95, "TT")],
    ]
    points = threshold_sweep(hand_images(), reassignments, SPACE.classes, [0.0, 0.5, 1.0])
    by_hand = {  # similarity >= τ keeps the label
        0.0: [[A, B, B], [C, C, A]],
        0.5: [[A, B, -1], [C, -1, A]],
        1.0: [[-1, -1, -1], [-1, -1, -1]],
    }
    for point in points:
        expected = evaluate_segmentation(hand_images(), by_hand[point.threshold], SPACE.classes)
        assert point.scores == expected
    # at 0.5, b keeps only s1: I=2, U=4 in image 1 and U=3 in image 2
    assert points[1].scores.per_class_iou["b"] == pytest.approx(2 / 7)
    assert [p.threshold for p in threshold_sweep(hand_images(), reassignments, SPACE.classes)] == list(
        TABLE6_SBERT_THRESHOLDS
    )


def test_default_sweep_grids_are_the_papers_tables():
    assert TABLE6_SBERT_THRESHOLDS == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    assert TABLE7_CLIP_THRESHOLDS == (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35)


def test_tgq_counts_similarity_strictly_above_tau():
    vectors = {"gt": [1.0, 0.0], "same": [2.0, 0.0], "half": [0.5, 0.75**0.5], "off": [0.0, 1.0]}

    def encode(texts):
        return np.array([vectors[t] for t in texts])

    result = text_generation_quality(["gt", "gt", "gt"], ["same", "half", "off"], encode)
    # similarities 1.0, exactly 0.5 (not > τ_SBERT), 0.0
    assert result.similarities == (1.0, 0.5, 0.0)
    assert (result.true_positives, result.total, result.score) == (1, 3, pytest.approx(1 / 3))
    assert text_generation_quality(["gt"], ["half"], encode, tau_sbert=0.49).score == 1.0
    assert text_generation_quality([], [], encode).score is None
    with pytest.raises(ValueError, match="2 ground-truth labels but 1"):
        text_generation_quality(["gt", "gt"], ["same"], encode)


def test_tgq_with_real_sbert(sbert):
    result = text_generation_quality(["cat", "cat", "dog"], ["kitten", "car", "puppy"], sbert.encode)
    assert [s > 0.5 for s in result.similarities] == [True, False, True]
    assert result.score == pytest.approx(2 / 3)


# FMbSeg mIoU. Raw ground truth (0 background, 1 cat, 2 dog, 3 bird, 255 void):
#   0 0 1 1
#   0 1 1 255
#   2 2 0 0
FM_GT = np.array([[0, 0, 1, 1], [0, 1, 1, 255], [2, 2, 0, 0]])
# Prediction in raw values (-1: nothing predicted)
FM_PRED = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [2, 0, 0, -1]])
FM_NAMES = ("background", "cat", "dog", "bird")


def test_fmbseg_miou_with_background_class():
    space = LabelSpace(FM_NAMES)
    meter = MeanIoU(space)
    meter.update(FM_PRED, FM_GT)  # with background, class indices equal raw values
    meter.update(np.zeros((2, 2), int), np.zeros((2, 2), int))  # all background, all right
    result = meter.result()
    # image 1: bg G=5 P=5 I=3 -> U=7; cat G=4 P=4 (the void pixel does not count) I=3 -> U=5; dog G=2 P=1 I=1 -> U=2
    # image 2: bg I=4, U=4 -> bg 7/11 overall; bird never occurs -> None, outside the mean
    assert result.per_class_iou == {
        "background": pytest.approx(7 / 11),
        "cat": pytest.approx(3 / 5),
        "dog": pytest.approx(1 / 2),
        "bird": None,
    }
    assert result.miou == pytest.approx((7 / 11 + 3 / 5 + 1 / 2) / 3)
    assert result.num_images == 2


def test_fmbseg_miou_without_background():
    space = LabelSpace(FM_NAMES, excluded=("background",))
    assert space.classes == ("cat", "dog", "bird")
    predicted = space.to_class_indices(np.where(FM_PRED < 0, 255, FM_PRED), strict=False)  # bg -> nothing
    meter = MeanIoU(space)
    meter.update(predicted, FM_GT)
    # background pixels are ignored: cat G=4, P=3 (pixel (1,1) predicted bg), I=3 -> 3/4; dog 1/2
    assert meter.result().miou == pytest.approx((3 / 4 + 1 / 2) / 2)
    with pytest.raises(ValueError, match="differ in size"):
        meter.update(predicted[:2], FM_GT)
