"""DINO keys with a dense stride, checked against timm's own forward pass."""

import numpy as np
import pytest
import torch

from backend.models.dino import IMAGENET_MEAN, IMAGENET_STD
from backend.models.images import image_to_tensor


@pytest.fixture(scope="module")
def image():
    return (np.random.RandomState(3).rand(40, 52, 3) * 255).astype(np.uint8)


def _timm_keys(model, pixels):
    """Keys of the last block via a forward hook on its qkv projection (the standard recipe)."""
    captured = {}
    hook = model.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: captured.setdefault("qkv", o))
    with torch.no_grad():
        model.forward_features(pixels)
    hook.remove()
    qkv = captured["qkv"]
    b, n, _ = qkv.shape
    return qkv.reshape(b, n, 3, -1)[:, 1:, 1]


def test_stride_equal_to_patch_matches_timm(tiny_models, image):
    dino = tiny_models.dino
    size = 64
    pixels = image_to_tensor(image, (size, size), IMAGENET_MEAN, IMAGENET_STD)[None]
    want = _timm_keys(dino.model, pixels)[0]
    got = dino(image, size, stride=dino.patch_size)
    assert got.shape == (8, 8, dino.embed_dim)
    assert torch.allclose(got.reshape(64, -1), want, atol=1e-5)


def test_dense_stride_keeps_positions_of_the_coarse_grid(tiny_models, image):
    """With stride P/2, every other token sits exactly where a stride-P token sits."""
    dino = tiny_models.dino
    grid = dino._position_embeddings((15, 15))[0, 1:].reshape(15, 15, -1)
    base = dino.model.pos_embed[0, 1:].reshape(8, 8, -1)
    assert torch.allclose(grid[::2, ::2], base, atol=1e-5)
    assert dino(image, 64, 4).shape == (15, 15, dino.embed_dim)


def test_dinov2_patch_tokens(tiny_models, image):
    dinov2 = tiny_models.dinov2
    pixels = image_to_tensor(image, (112, 112), IMAGENET_MEAN, IMAGENET_STD)[None]
    with torch.no_grad():
        want = dinov2.model.forward_features(pixels)[0, 1:]
    assert torch.allclose(dinov2(image, 112).reshape(64, -1), want, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        dinov2(image, 100)


def test_sam_automatic_masks_tiny(tiny_models, image):
    records = tiny_models.sam.automatic_masks(image, points_per_side=4, pred_iou_thresh=0.97)
    assert records, "the tiny preset forces SAM's thresholds to 0 so masks come back"
    for record in records:
        assert record["segmentation"].shape == image.shape[:2]
        assert record["segmentation"].dtype == bool


def test_sam_embeds_an_image_once_for_points_and_automatic_masks(tiny_models, image):
    sam = tiny_models.sam
    sam.forget_images()
    calls = []
    hook = sam.model.image_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        other = image[::-1].copy()
        sam.predict_point_sets(other, [np.array([[3.0, 4.0]]), np.array([[10.0, 10.0]])])
        sam.automatic_masks(other, points_per_side=2)
        sam.predict_points(other, np.array([[5.0, 5.0]]))
        assert len(calls) == 1
        sam.predict_points(image, np.array([[5.0, 5.0]]))
        assert len(calls) == 2
        sam.automatic_masks(other, points_per_side=2)  # the last two images stay embedded
        assert len(calls) == 2
        sam.forget_images()
        sam.predict_points(other, np.array([[5.0, 5.0]]))
        assert len(calls) == 3
    finally:
        hook.remove()


@pytest.mark.parametrize(
    "shape, stride, expected",
    [
        # 480x640 landscape, load size 224, patch 8: the long side 224 * 640 / 480 = 298.7 -> 299,
        # trimmed to (side - 8) even for stride 2: 298; for stride 6, (299 - 8) % 6 = 3: 296.
        ((480, 640), 2, (224, 298)),
        ((480, 640), 6, (224, 296)),
        ((640, 480), 2, (298, 224)),  # portrait: the same, transposed
        ((300, 300), 2, (224, 224)),
        ((100, 1000), 8, (224, 2240)),  # (2240 - 8) % 8 == 0
    ],
)
def test_dino_load_size_keeps_the_aspect_ratio(shape, stride, expected):
    from backend.models.dino import dino_load_size

    assert dino_load_size(shape, 224, 8, stride, keep_aspect=True) == expected
    assert dino_load_size(shape, 224, 8, stride, keep_aspect=False) == (224, 224)


def test_keys_of_a_wide_image_keep_its_aspect(tiny_models, image):
    dino = tiny_models.dino
    square = image[:, : image.shape[0]]
    wide = np.concatenate([square, square[:, ::-1]], axis=1)  # twice as wide as high
    keys = dino(wide, 64, 4, keep_aspect=True)
    height, width = dino.load_size(wide.shape, 64, 4, keep_aspect=True)
    assert (height, width) == (64, 128)
    assert keys.shape == ((64 - 8) // 4 + 1, (128 - 8) // 4 + 1, dino.embed_dim)  # 15 x 31
    # a square image is the same either way
    assert torch.allclose(dino(square, 64, 4, keep_aspect=True), dino(square, 64, 4))
