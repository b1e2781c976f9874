"""ClipModel on the tiny preset: exactness of segment encoding, dense features, cached text."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.models.clip import DenseClipSettings, SegmentEncoding
from backend.models.images import image_to_tensor, resize_masks
from tests.models.test_segment_attention import _reference_block


@pytest.fixture(scope="module")
def clip(tiny_models):
    return tiny_models.clip


@pytest.fixture(scope="module")
def image():
    return (np.random.RandomState(0).rand(48, 72, 3) * 255).astype(np.uint8)


def _segment_masks(shape):
    h, w = shape
    masks = np.zeros((3, h, w), dtype=np.float32)
    masks[0, : h // 2] = 1
    masks[1, h // 2 :, : w // 3] = 1
    masks[2] = np.linspace(0, 1, w)[None, :]  # a soft mask
    return masks


def test_all_ones_mask_without_subtraction_reproduces_image_embedding(clip, image):
    ones = np.ones((1, *image.shape[:2]), dtype=bool)
    segment = clip.encode_segments(image, ones, SegmentEncoding(subtract_global=False))
    assert torch.allclose(segment[0], clip.encode_image(image), atol=1e-5)


@pytest.mark.parametrize("subtract_global", [True, False])
def test_batched_segments_match_one_at_a_time_reference(clip, image, subtract_global):
    masks = _segment_masks(image.shape[:2])
    settings = SegmentEncoding(masked_layers=2, subtract_global=subtract_global)
    batched = clip.encode_segments(image, masks, settings)

    # Reference: every segment alone, from the pixels up, through a loop-based masked block.
    visual = clip.model.visual
    size = clip.input_size
    pixels = image_to_tensor(image, (size, size), clip.mean, clip.std)[None]
    reference = []
    with torch.no_grad():
        for mask in masks:
            weights = resize_masks(torch.from_numpy(mask)[None], (size, size))
            grid = F.interpolate(weights[:, None], size=clip.grid_size, mode="area")[:, 0].flatten(1)
            weights = torch.cat([torch.ones(1, 1), grid], dim=1)
            x = visual._embeds(pixels)
            blocks = visual.transformer.resblocks
            for i, block in enumerate(blocks):
                if i < len(blocks) - settings.masked_layers:
                    x = block(x)
                else:
                    x = _reference_block(block, x, weights, subtract_global, settings.sigma_squared)
            pooled = visual.ln_post(x)[:, 0] @ visual.proj
            reference.append(F.normalize(pooled, dim=-1)[0])
    assert torch.allclose(batched, torch.stack(reference), atol=1e-5)


def test_global_subtraction_changes_embeddings(clip, image):
    masks = _segment_masks(image.shape[:2])
    with_sub = clip.encode_segments(image, masks, SegmentEncoding())
    without = clip.encode_segments(image, masks, SegmentEncoding(subtract_global=False))
    assert with_sub.shape == without.shape == (3, clip.embed_dim)
    assert not torch.allclose(with_sub, without, atol=1e-4)


def test_crop_and_mask_baseline_encodes_the_masked_crop(clip, image):
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[10:30, 20:50] = True
    got = clip.encode_segments(image, mask[None], SegmentEncoding(method="crop"))
    # Reference: cut the box out, paint the background with CLIP's mean colour, encode.
    crop = image[10:30, 20:50].copy()
    want = clip.model.encode_image(
        F.interpolate(
            image_to_tensor(crop, crop.shape[:2], clip.mean, clip.std)[None],
            size=(clip.input_size,) * 2,
            mode="bicubic",
            align_corners=False,
        )
    )
    assert torch.allclose(got[0], F.normalize(want, dim=-1)[0], atol=1e-5)


def test_segment_input_errors(clip, image):
    with pytest.raises(ValueError, match="masks must be"):
        clip.encode_segments(image, np.ones((2, 5, 5)))
    with pytest.raises(ValueError, match="masked_layers"):
        clip.encode_segments(image, np.ones((1, *image.shape[:2])), SegmentEncoding(masked_layers=99))
    with pytest.raises(ValueError, match="uint8"):
        clip.encode_image(image.astype(np.float32))
    with pytest.raises(ValueError):
        SegmentEncoding(method="nope")
    assert clip.encode_segments(image, np.zeros((0, *image.shape[:2]))).shape == (0, clip.embed_dim)


@pytest.mark.parametrize("last_block", ["value", "skip"])
def test_dense_features_stitch_crops(clip, image, last_block):
    settings = DenseClipSettings(image_size=2 * clip.input_size, last_block=last_block)
    dense = clip.dense_features(image, settings)
    gh, gw = clip.grid_size
    assert dense.patches.shape == (2 * gh, 2 * gw, clip.embed_dim)
    assert dense.crop_embeddings.shape == (4, clip.embed_dim)
    assert torch.allclose(dense.patches.norm(dim=-1), torch.ones(2 * gh, 2 * gw), atol=1e-5)

    # Reference: crop (row 1, col 0) of the oversampled image, through the model by hand.
    size = clip.input_size
    side = image_to_tensor(image, (2 * size, 2 * size), clip.mean, clip.std)
    crop = side[:, size:, :size][None]
    visual = clip.model.visual
    with torch.no_grad():
        assert torch.allclose(
            dense.crop_embeddings[2], F.normalize(clip.model.encode_image(crop), dim=-1)[0], atol=1e-5
        )
        x = visual._embeds(crop)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        last = visual.transformer.resblocks[-1]
        if last_block == "value":
            w = x.shape[-1]
            v = last.ln_1(x) @ last.attn.in_proj_weight[2 * w :].T + last.attn.in_proj_bias[2 * w :]
            x = x + v @ last.attn.out_proj.weight.T + last.attn.out_proj.bias
        want = F.normalize(visual.ln_post(x[0, 1:]) @ visual.proj, dim=-1).reshape(gh, gw, -1)
    assert torch.allclose(dense.patches[gh:, :gw], want, atol=1e-5)
    assert tuple(dense.crop_boxes[2]) == (0, size, size, 2 * size)


def test_text_trimmed_equals_padded_and_is_cached(clip):
    prompts = ["a photo of a cat", "a dog", "sandy beach with a crowd observing"]
    got = clip.encode_text(prompts)
    with torch.no_grad():
        want = F.normalize(clip.model.encode_text(clip.tokenizer(prompts)), dim=-1)
    assert torch.allclose(got, want, atol=1e-5)
    assert clip.encode_text(prompts[1:2]).data_ptr() != got.data_ptr()
    assert torch.equal(clip.encode_text(prompts[1:2])[0], got[1])


def test_shared_prefix_gives_the_same_embeddings(clip, image):
    masks = _segment_masks(image.shape[:2])
    settings = SegmentEncoding(masked_layers=3)
    prefix = clip.segment_prefix(image, settings)
    assert prefix.shape == (1, 1 + clip.grid_size[0] * clip.grid_size[1], clip.model.visual.transformer.width)
    assert torch.equal(
        clip.encode_segments(image, masks, settings, prefix=prefix), clip.encode_segments(image, masks, settings)
    )
