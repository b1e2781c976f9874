"""Upsampling and DenseCRF refinement of the segment map (zero-guidance appendix B)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.zeroguide.crf import centroid_distance_unary, densecrf_refine, upsample_label_map, upsample_nearest


@pytest.mark.parametrize(("grid", "size"), [((5, 7), (23, 31)), ((55, 55), (224, 224)), ((4, 4), (3, 9))])
def test_nearest_upsampling_matches_torch(grid, size):
    labels = np.arange(grid[0] * grid[1]).reshape(grid)
    expected = F.interpolate(torch.from_numpy(labels)[None, None].double(), size=size, mode="nearest")[0, 0]
    np.testing.assert_array_equal(upsample_label_map(labels, size), expected.long().numpy())
    stacked = upsample_nearest(np.stack([labels, -labels], axis=-1), size)
    np.testing.assert_array_equal(stacked[..., 1], -expected.long().numpy())


def test_unary_is_squared_distance_to_centroids_minus_the_pixel_maximum():
    # Three cells: labels 0, 0, 1; features already unit length.
    features = np.array([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]])
    label_map = np.array([[0, 0, 1]])
    energy = centroid_distance_unary(features, label_map)
    # c0 = (0.5, 0.5), c1 = (0.6, 0.8). Cell (1, 0): d0 = 0.5, d1 = 0.16 + 0.64 = 0.8.
    # Cell (0, 1): d0 = 0.5, d1 = 0.36 + 0.04 = 0.4. Cell (0.6, 0.8): d0 = 0.01 + 0.09 = 0.1, d1 = 0.
    expected = np.array([[[0.5 - 0.8, 0.0], [0.0, 0.4 - 0.5], [0.1 - 0.1, 0.0 - 0.1]]])
    np.testing.assert_allclose(energy, expected, atol=1e-6)
    assert energy.dtype == np.float32


def test_unary_normalises_features_like_amir_et_al():
    features = np.array([[[2.0, 0.0], [0.0, 3.0]]])
    energy = centroid_distance_unary(features, np.array([[0, 1]]))
    np.testing.assert_allclose(energy, [[[-2.0, 0.0], [0.0, -2.0]]], atol=1e-6)  # unit vectors, |e1-e2|^2 = 2
    raw = centroid_distance_unary(features, np.array([[0, 1]]), normalize_features=False)
    np.testing.assert_allclose(raw, [[[-13.0, 0.0], [0.0, -13.0]]], atol=1e-5)


def test_unary_rejects_a_label_without_cells():
    with pytest.raises(ValueError, match="own no grid cell"):
        centroid_distance_unary(np.ones((1, 2, 3)), np.array([[0, 2]]))


def two_colour_scene():
    """A 40 x 40 image, red left of column 20 and blue right of it; a 10 x 10 feature grid whose
    cluster boundary sits at grid column 4 (pixel 16), with ambiguous features near it."""
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    image[:, :20] = (200, 30, 30)
    image[:, 20:] = (30, 30, 200)
    label_map = np.zeros((10, 10), dtype=int)
    label_map[:, 4:] = 1
    features = np.zeros((10, 10, 4))
    features[..., 0] = label_map == 0
    features[..., 1] = label_map == 1
    features[:, 3, :2] = (0.6, 0.4)
    features[:, 4, :2] = (0.45, 0.55)
    features += 0.01 * np.random.default_rng(0).normal(size=features.shape)
    return image, features, label_map


def test_crf_moves_the_boundary_to_the_colour_edge_and_keeps_a_partition():
    image, features, label_map = two_colour_scene()
    before = upsample_label_map(label_map, (40, 40))
    assert np.all((before == 0).sum(axis=1) == 16)
    refined = densecrf_refine(image, features, label_map)
    assert refined.shape == (40, 40) and refined.dtype == np.int64
    assert set(np.unique(refined).tolist()) <= {0, 1}  # exactly one segment per pixel
    np.testing.assert_array_equal(refined[:, :20], 0)
    np.testing.assert_array_equal(refined[:, 20:], 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_crf_output_is_a_partition_for_random_input(seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(30, 45, 3), dtype=np.uint8)
    features = rng.normal(size=(6, 9, 8))
    label_map = np.arange(54).reshape(6, 9) % 7
    refined = densecrf_refine(image, features, label_map, iterations=3)
    assert refined.shape == (30, 45)
    assert refined.min() >= 0 and refined.max() < 7


def test_single_segment_needs_no_crf():
    refined = densecrf_refine(np.zeros((8, 8, 3), np.uint8), np.ones((2, 2, 3)), np.zeros((2, 2), int))
    np.testing.assert_array_equal(refined, np.zeros((8, 8)))


def test_crf_rejects_bad_input():
    features, label_map = np.ones((2, 2, 3)), np.array([[0, 1], [0, 1]])
    with pytest.raises(ValueError, match="uint8"):
        densecrf_refine(np.zeros((8, 8, 3), np.float32), features, label_map)
    with pytest.raises(ValueError, match="iterations"):
        densecrf_refine(np.zeros((8, 8, 3), np.uint8), features, label_map, iterations=0)
    with pytest.raises(ValueError, match="match the feature grid"):
        densecrf_refine(np.zeros((8, 8, 3), np.uint8), features, np.zeros((3, 3), int))


def test_read_only_image_is_accepted():
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    image.setflags(write=False)  # e.g. np.asarray of a PIL image
    labels = densecrf_refine(image, np.random.default_rng(0).normal(size=(4, 4, 8)), np.arange(16).reshape(4, 4) % 3)
    assert labels.shape == (16, 16)


def test_labels_come_to_full_size_along_the_images_edges():
    """A 40x64 image, black left of x = 37 and white from it; its 5x8 version (area-averaged) has
    a grey column 4 (x 32-39: 5 black and 3 white pixels, mean 96) labelled with the black side.
    Nearest upsampling puts the boundary at x = 40, where column 5 starts; following the colours,
    pixels 37-39 (white) take the white neighbour's label, 32-36 (black) the black one's: x = 37."""
    import cv2

    from backend.zeroguide.crf import upsample_labels_along_edges

    image = np.zeros((40, 64, 3), np.uint8)
    image[:, 37:] = 255
    small = cv2.resize(image, (8, 5), interpolation=cv2.INTER_AREA)
    assert small[0, 4, 0] == 96  # hand-worked: (3 * 255) / 8
    labels = (small[..., 0] > 127).astype(np.int64)  # column 4 (grey) with the black side
    nearest = upsample_label_map(labels, (40, 64))
    assert (nearest == (np.arange(64) >= 40)[None, :]).all()
    refined = upsample_labels_along_edges(labels, small, image)
    assert (refined == (np.arange(64) >= 37)[None, :]).all()
    # away from boundaries nothing changes; the same size is the identity
    flat = np.zeros((5, 8), np.int64)
    assert (upsample_labels_along_edges(flat, small, image) == 0).all()
    assert (upsample_labels_along_edges(labels, small, small) == labels).all()
