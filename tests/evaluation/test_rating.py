"""The 0-3 rating protocol: score definitions, batches, Table 2 distribution, Table 1 h >= k."""

import numpy as np
import pytest

from backend.evaluation.metrics import ImageOverlaps, LabelSpace
from backend.evaluation.rating import (
    RATERS_PER_SEGMENT,
    RATING_SCALE,
    TABLE1_MIN_SCORES,
    Rating,
    assign_batches,
    human_verified_scores,
    score_distribution,
)
from backend.evaluation.reassignment import Reassignment


def rating(segment, rater, score, batch=None, label="x", image="img.jpg"):
    record = {"image": image, "segment": segment, "text": "t", "label": label, "rater": rater, "score": score}
    if batch is not None:
        record["batch"] = batch
    return record


def test_scale_is_the_papers():
    assert [level.score for level in RATING_SCALE] == [0, 1, 2, 3]
    assert [level.name for level in RATING_SCALE] == [
        "incorrect",
        "partially correct",
        "correct but too general/specific",
        "correct",
    ]
    assert RATING_SCALE[0].definition == "The label does not describe the region."
    assert "(A)" in RATING_SCALE[2].definition and "(E)" in RATING_SCALE[1].definition
    assert "Slightly inaccurate regions are allowed." in RATING_SCALE[3].definition
    assert RATERS_PER_SEGMENT == 3 and TABLE1_MIN_SCORES == (3, 2, 1)


# Four segments; segment 3 has only two raters. Without a "batch", the n-th rating of a segment
# (in file order) belongs to batch n.
RATINGS = [
    rating(0, "r1", 3),
    rating(0, "r2", 2),
    rating(0, "r3", 3),
    rating(1, "r1", 0),
    rating(1, "r4", 1),
    rating(1, "r2", 0),
    rating(2, "r3", 2),
    rating(2, "r1", 2),
    rating(2, "r5", 1),
    rating(3, "r2", 1),
    rating(3, "r6", 3),
]


def test_distribution_is_computed_per_batch_then_averaged():
    result = score_distribution(RATINGS)
    # batch 1: 3, 0, 2, 1 -> 1/4 each; batch 2: 2, 1, 2, 3; batch 3: 3, 0, 1 (segment 3 missing)
    assert result.per_batch[0] == {0: 0.25, 1: 0.25, 2: 0.25, 3: 0.25}
    assert result.per_batch[1] == {0: 0.0, 1: 0.25, 2: 0.5, 3: 0.25}
    assert result.per_batch[2] == pytest.approx({0: 1 / 3, 1: 1 / 3, 2: 0.0, 3: 1 / 3})
    assert result.fractions == pytest.approx(
        {0: (0.25 + 0 + 1 / 3) / 3, 1: (0.25 + 0.25 + 1 / 3) / 3, 2: (0.25 + 0.5 + 0) / 3, 3: (0.25 + 0.25 + 1 / 3) / 3}
    )
    assert sum(result.fractions.values()) == pytest.approx(1.0)
    assert result.segments == 4 and result.missing_ratings == 1
    assert result.counts_per_batch[2] == {0: 1, 1: 1, 2: 0, 3: 1}


def test_an_empty_batch_is_left_out_of_the_average():
    result = score_distribution([rating(0, "r1", 3), rating(1, "r1", 0)])  # one rater per segment
    assert result.per_batch[1] is None and result.per_batch[2] is None
    assert result.fractions == {0: 0.5, 1: 0.0, 2: 0.0, 3: 0.5}


def test_explicit_batches_come_first_then_free_slots_in_order():
    batches = assign_batches([rating(0, "r1", 1), rating(0, "r2", 2, batch=1), rating(0, "r3", 3)])
    assert [batch[("img.jpg", "0")].rater for batch in batches] == ["r2", "r1", "r3"]


@pytest.mark.parametrize(
    "records, message",
    [
        ([rating(0, "r1", 1), rating(0, "r1", 2)], "twice"),
        ([rating(0, f"r{i}", 1) for i in range(4)], "more than 3"),
        ([rating(0, "r1", 1, batch=4)], "exceeds"),
        ([rating(0, "r1", 1, batch=2), rating(0, "r2", 1, batch=2)], "two ratings in batch 2"),
        ([rating(0, "r1", 4)], "0-3"),
        ([rating(0, "r1", 2.5)], "0-3"),
        ([rating(0, "r1", True)], "0-3"),
        ([{"image": "img.jpg", "segment": 0, "score": 1}], "lacks"),
    ],
)
def test_bad_ratings_are_refused(records, message):
    with pytest.raises(ValueError, match=message):
        assign_batches(records)


def test_rating_record_round_trip():
    r = Rating.from_dict(rating(7, "r1", "2", batch=3))
    assert (r.segment, r.score, r.batch) == ("7", 2, 3)
    assert Rating.from_dict(r.to_dict()) == r


# One image, classes a and b: ground truth  a a b b ; segment 0 = pixels 0-1, segment 1 = pixels 2-3.
SPACE = LabelSpace(("a", "b"))
IMAGE = ImageOverlaps.from_masks(
    "img.jpg",
    np.array([[[1, 1, 0, 0]], [[0, 0, 1, 1]]], dtype=bool),
    SPACE.to_class_indices(np.array([[0, 0, 1, 1]])),
    2,
    segment_ids=[0, 1],
)
REASSIGNED = [[Reassignment("a", 0, 0.05, "ST"), Reassignment("b", 1, 0.05, "ST")]]
HUMAN = [
    rating(0, "r1", 3, label="a"),
    rating(0, "r2", 2, label="a"),
    rating(0, "r3", 1, label="a"),
    rating(1, "r4", 1, label="b"),
    rating(1, "r5", 3, label="b"),  # no third rater
]


@pytest.mark.parametrize(
    "k, per_batch_miou",
    [
        # batch 1 scores (3, 1), batch 2 (2, 3), batch 3 (1, unrated); a verified segment gives
        # its class IoU 1, an unverified one IoU 0 for its class.
        (3, [0.5, 0.5, 0.0]),
        (2, [0.5, 1.0, 0.0]),
        (1, [1.0, 1.0, 0.5]),
    ],
)
def test_human_verification_per_batch_then_mean(k, per_batch_miou):
    result = human_verified_scores([IMAGE], REASSIGNED, HUMAN, SPACE.classes, min_score=k)
    assert [b.miou for b in result.batches] == pytest.approx(per_batch_miou)
    assert result.miou == pytest.approx(sum(per_batch_miou) / 3)
    # recall: a ground-truth segment is found exactly when its segment is verified here
    assert result.recall == pytest.approx(sum(per_batch_miou) / 3)
    assert result.unrated_segments == (0, 0, 1)
    assert result.label_mismatches == 0 and result.unknown_ratings == 0


def test_ratings_of_another_label_or_segment_do_not_verify():
    extra = [rating(1, "r6", 3, label="a"), rating(9, "r1", 3, label="a")]
    result = human_verified_scores([IMAGE], REASSIGNED, HUMAN + extra, SPACE.classes, min_score=1)
    assert [b.miou for b in result.batches] == pytest.approx([1.0, 1.0, 0.5])  # as without them
    assert result.label_mismatches == 1 and result.unknown_ratings == 1


def test_ratings_without_reassigned_label_cannot_verify():
    with pytest.raises(ValueError, match="no reassigned label"):
        human_verified_scores([IMAGE], REASSIGNED, [rating(0, "r1", 3, label=None)], SPACE.classes, 1)
