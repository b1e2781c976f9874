"""The types that cross the service boundary: numpy arrays and plain values."""

import numpy as np
import pytest

from backend.fmbseg.results import ClassMaskPrediction, LabelledMask


def test_prediction_fields_are_plain():
    prediction = ClassMaskPrediction(np.array([[0, 2], [-1, 2]], np.int32), ("cat", "dog", "sky"), "stage1", "v", 1)
    assert prediction.label_map.dtype == np.int64 and prediction.classes == ["cat", "dog", "sky"]
    assert prediction.random_weights is True
    assert list(prediction.class_masks) == ["cat", "sky"]  # dog covers no pixel
    assert prediction.class_masks["sky"].tolist() == [[False, True], [False, True]]
    with pytest.raises(ValueError, match=r"\(H, W\) int"):
        ClassMaskPrediction(np.zeros((2, 2), np.float32), ["cat"], "stage1", "v", False)
    with pytest.raises(ValueError, match="source"):
        ClassMaskPrediction(np.zeros((2, 2), int), ["cat"], "stage3", "v", False)


def test_labelled_mask_is_a_2d_bool_array():
    mask = LabelledMask(np.array([[0, 255]], np.uint8), "cat", "1.2")
    assert mask.mask.dtype == bool and mask.mask.tolist() == [[False, True]] and mask.source == "1.2"
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        LabelledMask(np.zeros((1, 2, 2), bool), "cat")
    with pytest.raises(ValueError, match="source"):
        LabelledMask(np.zeros((2, 2), bool), "cat", "stage1")
