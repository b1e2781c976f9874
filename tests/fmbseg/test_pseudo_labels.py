"""FMbSeg Stage 1 on hand-made features and on the tiny preset."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.fmbseg.pseudo_labels import (
    PseudoLabeler,
    PseudoLabels,
    PseudoMask,
    detect_present_classes,
    label_masks_by_mean_feature,
    top_patch_centers,
)
from backend.fmbseg.settings import FMbSegSettings


def test_presence_needs_more_than_t_crops():
    text = torch.eye(3)
    # 5 crops: class 0 wins 2, class 1 wins 1, class 2 wins 2
    crops = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0, 1], [0.2, 0, 0.8]])
    present, votes = detect_present_classes(crops, text, min_crops=1)
    assert votes.tolist() == [2, 1, 2]
    assert present == [0, 2]
    assert detect_present_classes(crops, text, min_crops=0)[0] == [0, 1, 2]


def test_top_patch_centres_map_to_the_target_image():
    similarity = torch.zeros(4, 4)
    similarity[0, 0] = 3.0
    similarity[2, 3] = 2.0
    points = top_patch_centers(similarity, 2, target_size=(400, 800))
    # patch (row 0, col 0): centre (0.5 * 800/4, 0.5 * 400/4); patch (2, 3): (3.5 * 200, 2.5 * 100)
    assert np.allclose(points, [[100.0, 50.0], [700.0, 250.0]])


def test_masks_labelled_by_their_mean_patch_feature():
    text = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    patches = torch.zeros(4, 4, 3)
    patches[:, :2] = F.normalize(torch.tensor([0.9, 0.1, 0.0]), dim=0)  # left half ~ class 0
    patches[:, 2:] = F.normalize(torch.tensor([0.0, 0.2, 0.8]), dim=0)  # right half ~ class 2
    masks = np.zeros((2, 16, 16), dtype=bool)
    masks[0, :, :6] = True
    masks[1, :, 10:] = True
    labels, scores = label_masks_by_mean_feature(masks, patches, text)
    assert labels.tolist() == [0, 2]
    expected = F.normalize(torch.tensor([0.0, 0.2, 0.8]), dim=0)[2]
    assert scores[1] == pytest.approx(float(expected), abs=1e-5)


def test_label_map_puts_stage_11_on_top():
    a = np.zeros((4, 4), bool)
    a[:, :3] = True
    b = np.zeros((4, 4), bool)
    b[:, 2:] = True
    labels = PseudoLabels(
        (4, 4), ["cat", "dog"], ["cat", "dog"], {}, [PseudoMask(b, "dog", "1.1", 0.9), PseudoMask(a, "cat", "1.2", 0.3)]
    )
    expected = np.array([[0, 0, 1, 1]] * 4)
    assert np.array_equal(labels.label_map(), expected)


@pytest.fixture(scope="module")
def labeler(tiny_models):
    settings = FMbSegSettings.for_preset(tiny_models.method_overrides("fmbseg"), presence_min_crops=0)
    return PseudoLabeler(tiny_models, settings)


@pytest.fixture(scope="module")
def image():
    rng = np.random.RandomState(2)
    return (rng.rand(60, 80, 3) * 255).astype(np.uint8)


def test_stage1_on_tiny_is_well_formed(labeler, image, tmp_path):
    classes = ["cat", "dog", "sky"]
    result = labeler(image, classes)
    assert result.present and set(result.present) <= set(classes)
    assert sum(result.crop_votes.values()) == 4  # 128 / 64 -> 2x2 crops
    sources = {m.source for m in result.masks}
    assert sources <= {"1.1", "1.2"} and "1.1" in sources
    for pseudo in result.masks:
        assert pseudo.mask.shape == image.shape[:2] and pseudo.mask.dtype == bool
        assert pseudo.class_name in result.present
        if pseudo.source == "1.1":
            assert pseudo.points.shape == (5, 2)
            assert (pseudo.points[:, 0] <= 80).all() and (pseudo.points[:, 1] <= 60).all()
    label_map = result.label_map()
    assert label_map.shape == image.shape[:2] and label_map.max() < len(classes)
    loaded = PseudoLabels.load(result.save(tmp_path, "img"))
    assert np.array_equal(loaded.label_map(), label_map) and loaded.present == result.present


def test_semi_supervised_variant_uses_the_image_labels(labeler, image):
    result = labeler(image, ["cat", "dog", "sky"], image_labels=["sky"], stages=("1.1",))
    assert result.present == ["sky"]
    assert [m.class_name for m in result.masks] == ["sky"]
    with pytest.raises(ValueError, match="not in the class list"):
        labeler(image, ["cat"], image_labels=["horse"])
    with pytest.raises(ValueError, match="empty"):
        labeler(image, [])


def test_settings_defaults_and_validation():
    s = FMbSegSettings()
    assert (s.clip_image_size, s.presence_min_crops, s.points_per_class, s.sam_image_size) == (1344, 1, 5, 518)
    assert (s.sam_pred_iou_thresh, s.stage12_fraction, s.dinov2_image_size) == (0.97, 0.75, 518)
    with pytest.raises(ValueError, match="prompt_template"):
        FMbSegSettings(prompt_template="a photo")
    with pytest.raises(ValueError, match="stage12_fraction"):
        FMbSegSettings(stage12_fraction=1.5)
