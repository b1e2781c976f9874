"""Base and refined Stage-2 prediction on hand-worked cases."""

import numpy as np
import pytest
import torch

from backend.fmbseg.alignment import build_alignment_module
from backend.fmbseg.inference import (
    align_patch_grid,
    base_label_map,
    dense_class_scores,
    label_masks_by_majority,
    overlay_mask_labels,
    patch_class_scores,
    refined_label_map,
)


def test_patch_class_scores_are_cosine_similarities():
    generator = torch.Generator().manual_seed(0)
    patches = torch.randn(3, 4, 5, generator=generator)
    texts = torch.randn(2, 5, generator=generator)
    scores = patch_class_scores(patches, texts)
    assert scores.shape == (2, 3, 4)
    for k in range(2):
        for r in range(3):
            for c in range(4):
                expected = torch.dot(patches[r, c], texts[k]) / (patches[r, c].norm() * texts[k].norm())
                assert scores[k, r, c].item() == pytest.approx(expected.item(), abs=1e-6)


def test_bilinear_upsampling_hand_worked():
    # 1x2 grid, classes e1 and e2; patch 0 = e1, patch 1 = e2 -> class-0 scores [1, 0], class-1 [0, 1].
    patches = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    texts = torch.eye(2)
    dense = dense_class_scores(patches, texts, (1, 4))
    # align_corners=False, scale 1/2: output x samples source (x + 0.5) / 2 - 0.5 = -0.25 (clamped
    # to 0), 0.25, 0.75, 1.25 (clamped to 1): [a, 0.75a + 0.25b, 0.25a + 0.75b, b]
    torch.testing.assert_close(dense[0, 0], torch.tensor([1.0, 0.75, 0.25, 0.0]))
    torch.testing.assert_close(dense[1, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    assert base_label_map(patches, texts, (1, 4)).tolist() == [[0, 0, 1, 1]]
    # same size: no interpolation
    torch.testing.assert_close(dense_class_scores(patches, texts, (1, 2)), patch_class_scores(patches, texts))


@pytest.mark.parametrize("chunk", [1, 11 * 31 * 3, 2**22])  # 1 row, 3 rows, all rows
def test_banded_argmax_equals_full_argmax(chunk):
    generator = torch.Generator().manual_seed(1)
    patches = torch.randn(5, 7, 8, generator=generator)
    texts = torch.randn(11, 8, generator=generator)
    labels = base_label_map(patches, texts, (23, 31), chunk_elements=chunk)
    assert labels.shape == (23, 31) and labels.dtype == np.int64
    dense = dense_class_scores(patches, texts, (23, 31))
    reference = dense.argmax(dim=0).numpy()
    # the separable matmul and F.interpolate round differently (~1e-7): labels may differ only
    # where the two best classes are that close
    top2 = dense.topk(2, dim=0).values
    near_tie = (top2[0] - top2[1] < 1e-5).numpy()
    assert np.array_equal(labels[~near_tie], reference[~near_tie])
    assert (labels != reference).sum() <= near_tie.sum()


def test_ties_go_to_the_lower_class():
    patches = torch.tensor([[[1.0, 0.0]]])
    texts = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])  # classes 1 and 2 tie
    assert np.unique(base_label_map(patches, texts, (2, 2), chunk_elements=1)).tolist() == [1]


def _box(shape, rows, cols):
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def _hand_worked_base():
    return np.array(
        [
            [0, 0, 0, 1, 1, 2],
            [0, 0, 1, 1, 1, 2],
            [0, 2, 2, 1, 2, 2],
            [0, 2, 2, 1, 2, 1],
        ]
    )


def test_refined_overlay_hand_worked():
    base = _hand_worked_base()
    shape = base.shape
    masks = np.stack(
        [
            _box(shape, (2, 4), (1, 3)),  # 0 "B": 4 px, all 2 -> 2; lies inside A
            _box(shape, (0, 2), (2, 5)),  # 1 "C": 6 px, five 1s one 0 -> 1; overlaps A
            _box(shape, (0, 4), (0, 3)),  # 2 "A": 12 px, six 0s one 1 four 2s -> 0
            _box(shape, (2, 4), (3, 5)),  # 3 "E": 4 px, two 1s two 2s -> tie -> 1
            _box(shape, (0, 3), (5, 6)),  # 4 "D": 3 px, all 2 -> 2; (3, 5) stays uncovered
            np.zeros(shape, dtype=bool),  # 5 empty -> -1, skipped
        ]
    )
    assert label_masks_by_majority(base, masks).tolist() == [2, 1, 0, 1, 2, -1]
    # painting order by area: A (12), C (6), B (4, index 0), E (4, index 3), D (3)
    expected = np.array(
        [
            [0, 0, 1, 1, 1, 2],
            [0, 0, 1, 1, 1, 2],
            [0, 2, 2, 1, 1, 2],
            [0, 2, 2, 1, 1, 1],
        ]
    )
    refined = refined_label_map(base, masks)
    assert refined.dtype == np.int64
    np.testing.assert_array_equal(refined, expected)
    np.testing.assert_array_equal(base, _hand_worked_base())  # the input is not modified
    # torch inputs give the same answer
    np.testing.assert_array_equal(refined_label_map(torch.from_numpy(base), torch.from_numpy(masks)), expected)


def test_majority_ignores_unlabelled_pixels():
    base = np.array([[-1, -1, 1, -1]])
    masks = np.array([[[True, True, True, False]], [[True, True, False, False]]])
    assert label_masks_by_majority(base, masks).tolist() == [1, -1]
    out = overlay_mask_labels(base, masks, np.array([1, -1]))
    assert out.tolist() == [[1, 1, 1, -1]]


def test_no_masks_returns_the_base_map():
    base = np.array([[0, 1], [2, 0]])
    out = refined_label_map(base, np.zeros((0, 2, 2), dtype=bool))
    np.testing.assert_array_equal(out, base)


def test_align_patch_grid_shape_and_norm():
    module = build_alignment_module("transformer", in_dim=16, out_dim=8, seed=0)
    features = torch.randn(4, 5, 16)
    z = align_patch_grid(module, features)
    assert z.shape == (4, 5, 8)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(4, 5))
    torch.testing.assert_close(z.reshape(20, 8), module(features.reshape(1, 20, 16))[0].detach())


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: base_label_map(torch.randn(2, 2, 3), torch.randn(4, 5), (4, 4)), "text_embeddings"),
        (lambda: base_label_map(torch.randn(4, 3), torch.randn(4, 3), (4, 4)), "patch_embeddings"),
        (lambda: base_label_map(torch.randn(2, 2, 3), torch.randn(4, 3), (0, 4)), "image_size"),
        (lambda: refined_label_map(np.zeros((2, 2), int), np.zeros((1, 3, 2), bool)), "masks"),
        (lambda: overlay_mask_labels(np.zeros((2, 2), int), np.zeros((2, 2, 2), bool), np.zeros(3)), "mask_labels"),
        (lambda: refined_label_map(np.zeros((2, 2)), np.zeros((1, 2, 2), bool)), "label_map"),
    ],
)
def test_bad_input_is_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()
