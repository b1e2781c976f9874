"""Acceptance of pre-labels: region outcomes, IoU per label and text edits, worked out by hand."""

import numpy as np
import pytest

from backend.service.acceptance import AcceptanceSummary, TaskAcceptance, task_acceptance
from tests.plugin.test_export_formats import brush, per_region  # Label Studio results, encoded by the SDK

METHODS = {"segment": "zero-guidance", "class_mask": "classes"}


def text(region_id, value):
    return per_region(region_id, "caption", "textarea", [value])


def area(rows=slice(None), cols=slice(None)):
    mask = np.zeros((4, 4), bool)
    mask[rows, cols] = True
    return mask


PREDICTED = [
    brush("z1", "segment", "segment", area(slice(0, 2))),  # rows 0-1, 8 px
    text("z1", "a cat"),
    brush("z2", "segment", "segment", area(slice(2, 4))),  # rows 2-3, 8 px
    text("z2", "grass"),
    brush("c1", "class_mask", "cat", area(slice(0, 2), slice(0, 2))),  # 4 px
    brush("c2", "class_mask", "dog", area(slice(3, 4))),  # row 3, 4 px
]
ANNOTATED = [
    brush("z1", "segment", "segment", area(slice(0, 2))),  # kept as it was
    text("z1", "a cat"),
    brush("z2", "segment", "segment", area(slice(2, 4))),
    text("z2", "a lawn"),  # the text corrected
    brush("c1", "class_mask", "cat", area(slice(0, 2), slice(0, 3))),  # repainted wider: 6 px
    # c2 deleted
    brush("n1", "class_mask", "dog", area(slice(2, 3), slice(0, 2))),  # drawn anew: 2 px
]


def test_one_task_by_hand():
    task = task_acceptance(PREDICTED, ANNOTATED, METHODS, model_version="v1")
    segment = task.counts["zero-guidance"]["segment"]
    # z1 unchanged, z2 edited (its text); the predicted and annotated pixels are the same 16
    assert (segment.unchanged, segment.edited, segment.deleted, segment.added) == (1, 1, 0, 0)
    assert (segment.intersection, segment.union, segment.iou) == (16, 16, 1.0)
    assert (segment.texts, segment.texts_edited) == (2, 1) and task.text_edits == [("grass", "a lawn")]
    cat = task.counts["classes"]["cat"]
    assert (cat.unchanged, cat.edited, cat.deleted, cat.added) == (0, 1, 0, 0)
    assert cat.iou == pytest.approx(4 / 6)  # 4 predicted pixels inside 6 annotated
    dog = task.counts["classes"]["dog"]
    assert (dog.unchanged, dog.edited, dog.deleted, dog.added) == (0, 0, 1, 1)
    assert (dog.intersection, dog.union) == (0, 6)  # row 3 (4 px) against half of row 2 (2 px)
    assert segment.shares() == {"unchanged": 0.5, "edited": 0.5, "deleted": 0.0}
    assert TaskAcceptance.from_dict(task.to_dict()) == task


def test_summary_sums_pixels_before_dividing_and_splits_model_versions():
    first = task_acceptance(PREDICTED, ANNOTATED, METHODS, model_version="v1")
    accepted = task_acceptance(PREDICTED, PREDICTED, METHODS, model_version="v2")  # taken as served
    summary = AcceptanceSummary.of([first, accepted])
    cat = summary.counts["classes"]["cat"]
    assert cat.iou == pytest.approx((4 + 4) / (6 + 4))  # summed, not the mean of 2/3 and 1
    figures = summary.to_dict()
    assert figures["tasks"] == 2
    assert figures["model_versions"]["v2"]["unchanged_share"] == 1.0  # all 4 predicted regions kept
    assert figures["model_versions"]["v1"]["unchanged_share"] == pytest.approx(1 / 4)  # z1 of z1, z2, c1, c2
    assert figures["methods"]["classes"]["dog"]["deleted_share"] == pytest.approx(1 / 2)
    assert figures["text_edits"] == [["grass", "a lawn"]]


def test_other_tags_and_an_empty_annotation():
    task = task_acceptance(PREDICTED, [], {"segment": "zero-guidance"})
    assert list(task.counts) == ["zero-guidance"]  # class_mask is not counted when not asked for
    segment = task.counts["zero-guidance"]["segment"]
    assert (segment.deleted, segment.intersection, segment.union, segment.texts) == (2, 0, 16, 0)


def test_the_tracker_parses_a_kept_result_once_and_again_when_it_changes(tmp_path, monkeypatch):
    from backend.service import feedback
    from backend.service.feedback import AcceptanceTracker
    from backend.service.metrics import ServiceMetrics

    tracker = AcceptanceTracker(tmp_path, lambda: None, ServiceMetrics())
    methods = {"segment": "zero-guidance", "class_mask": "classes"}
    tracker._write(1, 10, task_acceptance(PREDICTED, ANNOTATED, methods, model_version="v1"))
    tracker._write(1, 11, task_acceptance(PREDICTED, PREDICTED, methods, model_version="v1"))
    parsed = []
    original = feedback.TaskAcceptance.from_dict
    monkeypatch.setattr(
        feedback.TaskAcceptance, "from_dict", staticmethod(lambda data: parsed.append(data) or original(data))
    )

    first = tracker.summary()
    assert first["1"]["tasks"] == 2 and len(parsed) == 2
    assert tracker.summary() == first and len(parsed) == 2  # nothing changed: nothing read again

    # annotation 11 updated to the edited version: that file alone is read again
    tracker._write(1, 11, task_acceptance(PREDICTED, ANNOTATED, methods, model_version="v2"))
    changed = tracker.summary()
    assert len(parsed) == 3 and set(changed["1"]["model_versions"]) == {"v1", "v2"}

    # a file gone is gone from the summary; a corrupt one is skipped
    (tmp_path / "project-1" / "annotation-10.json").unlink()
    (tmp_path / "project-1" / "annotation-12.json").write_text("{not json")
    assert tracker.summary()["1"]["tasks"] == 1
