"""The types that cross the service boundary: numpy and plain values, importable without torch."""

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.fmbseg.results import ClassMaskPrediction, LabelledMask

REPO = Path(__file__).resolve().parents[2]


def _without_torch(code: str, stdin: bytes = b"") -> None:
    """Run ``code`` in a fresh interpreter, then fail if it imported torch."""
    check = f"{code}\nimport sys\nassert 'torch' not in sys.modules, 'torch was imported'"
    done = subprocess.run([sys.executable, "-c", check], cwd=REPO, input=stdin, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()


def test_results_import_without_torch():
    _without_torch("import backend.fmbseg.results")


def test_the_package_imports_lazily():
    _without_torch("import backend.fmbseg\nfrom backend.fmbseg import ClassMaskPrediction, LabelledMask")


def test_a_pickled_prediction_loads_without_torch():
    prediction = ClassMaskPrediction(np.array([[0, 1], [-1, 1]]), ["cat", "dog"], "stage2-base", "v1", False)
    _without_torch(
        "import pickle, sys\n"
        "prediction = pickle.load(sys.stdin.buffer)\n"
        "assert sorted(prediction.class_masks) == ['cat', 'dog'] and prediction.label_map.dtype.kind == 'i'",
        stdin=pickle.dumps(prediction),
    )


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
