"""The DTYPE setting: how it resolves, what is cast, and bfloat16 against float32 on the ``tiny`` and
``cpu`` architectures (random weights): every embedding agrees to a cosine of 0.999 or more."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.models import load_models, precision
from backend.models.clip import DenseClipSettings
from backend.models.precision import check_dtype_name, resolve_dtype
from backend.models.registry import FoundationModels

from .pairs import model_pair

MIN_COSINE = 0.999


def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """The smallest cosine similarity between matching rows (the last axis is the vector)."""
    a = a.reshape(-1, a.shape[-1]).float()
    b = b.reshape(-1, b.shape[-1]).float()
    return float(F.cosine_similarity(a, b, dim=-1).min())


# ----------------------------------------------------------------------------- the setting
def test_names_aliases_and_bad_values():
    assert check_dtype_name("AUTO") == "auto"
    assert check_dtype_name(" bf16 ") == "bfloat16" and check_dtype_name("fp32") == "float32"
    with pytest.raises(ValueError, match="DTYPE must be one of auto, float32, bfloat16"):
        check_dtype_name("float16")
    assert resolve_dtype("float32") == torch.float32 and resolve_dtype(torch.bfloat16) == torch.bfloat16
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        resolve_dtype(torch.float16)


def test_environment_variable_when_no_argument(monkeypatch):
    monkeypatch.setenv("DTYPE", "bfloat16")
    assert resolve_dtype(None) == torch.bfloat16
    assert resolve_dtype("float32") == torch.float32  # an argument wins
    monkeypatch.setenv("DTYPE", "nonsense")
    with pytest.raises(ValueError, match="DTYPE"):
        resolve_dtype(None)


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["amx_bf16", "amx_tile", "avx512f"], torch.bfloat16),
        (["avx512_bf16", "avx512f"], torch.bfloat16),
        (["avx512f", "avx2"], torch.float32),
        ([], torch.float32),
    ],
)
def test_auto_on_a_cpu_follows_its_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: flags)
    assert resolve_dtype("auto", "cpu") == expected
    monkeypatch.delenv("DTYPE", raising=False)
    assert resolve_dtype(None, "cpu") == expected  # unset means auto


def test_auto_elsewhere(monkeypatch):
    assert resolve_dtype("auto", "meta") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolve_dtype("auto", "cuda") == torch.float32


def test_this_cpus_flags_are_reported():
    flags = precision.cpu_bf16_flags()
    assert isinstance(flags, list) and all(isinstance(flag, str) for flag in flags)


def test_reading_the_setting_imports_no_torch():
    code = (
        "import sys; from backend.models.precision import check_dtype_name, DTYPE_CHOICES; "
        "assert check_dtype_name('bf16') == 'bfloat16'; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- the models
def test_load_models_keeps_one_set_per_dtype():
    f32 = load_models("tiny", device="cpu", dtype="float32")
    bf16 = load_models("tiny", device="cpu", dtype="bfloat16")
    assert f32 is not bf16 and load_models("tiny", device="cpu", dtype=torch.bfloat16) is bf16
    assert (f32.dtype, bf16.dtype, bf16.dtype_name) == (torch.float32, torch.bfloat16, "bfloat16")


def test_weights_are_cast_delicate_parts_stay_float32():
    models = FoundationModels("tiny", device="cpu", dtype="bfloat16")
    assert next(models.clip.model.parameters()).dtype == torch.bfloat16
    assert models.dino.model.pos_embed.dtype == torch.bfloat16
    assert models.dinov2.model.pos_embed.dtype == torch.bfloat16
    sam = models.sam.model
    assert sam.image_encoder.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert sam.mask_decoder.transformer.layers[0].mlp.lin1.weight.dtype == torch.bfloat16
    for part in (sam.prompt_encoder, sam.image_encoder.neck, sam.mask_decoder.iou_prediction_head):
        assert all(p.dtype == torch.float32 for p in part.parameters())
    assert sam.pixel_mean.dtype == torch.float32
    image = np.zeros((20, 30, 3), np.uint8)
    # what the models return is float32
    assert models.clip.encode_image(image).dtype == torch.float32
    assert models.clip.encode_text(["a cat"]).dtype == torch.float32
    assert models.dino(image, 64, 4).dtype == torch.float32
    assert models.dinov2(image, 112).dtype == torch.float32
    assert models.sam.embed(image).features.dtype == torch.float32


# ------------------------------------------------------------- bfloat16 against float32
@pytest.fixture(scope="module", params=["tiny", "cpu"])
def pair(request):
    return request.param, model_pair(request.param)


@pytest.fixture(scope="module")
def scene():
    rng = np.random.RandomState(0)
    image = (rng.rand(96, 128, 3) * 60).astype(np.uint8)
    image[:48] += np.array([150, 40, 40], np.uint8)
    image[48:, 64:] += np.array([30, 160, 60], np.uint8)
    return image


def test_clip_embeddings_agree(pair, scene):
    _, (f32, bf16) = pair
    a, b = f32.clip, bf16.clip
    assert min_cosine(a.encode_image(scene), b.encode_image(scene)) >= MIN_COSINE
    prompts = ["a photo of a cat", "grass", "a red car parked on a street at night"]
    assert min_cosine(a.encode_text(prompts), b.encode_text(prompts)) >= MIN_COSINE
    masks = np.zeros((3, *scene.shape[:2]), bool)
    masks[0, :48] = masks[1, 48:, :64] = masks[2, 48:, 64:] = True
    soft = masks.astype(np.float32) * 0.7
    for segments in (masks, soft):  # the masked tail of encode_segments, hard and soft masks
        assert min_cosine(a.encode_segments(scene, segments), b.encode_segments(scene, segments)) >= MIN_COSINE
    dense = DenseClipSettings(2 * a.input_size)
    dense_a, dense_b = a.dense_features(scene, dense), b.dense_features(scene, dense)
    assert min_cosine(dense_a.patches, dense_b.patches) >= MIN_COSINE
    assert min_cosine(dense_a.crop_embeddings, dense_b.crop_embeddings) >= MIN_COSINE


def test_dino_and_dinov2_features_agree(pair, scene):
    preset, (f32, bf16) = pair
    size, stride, size2 = (64, 4, 112) if preset == "tiny" else (224, 6, 224)
    assert min_cosine(f32.dino(scene, size, stride), bf16.dino(scene, size, stride)) >= MIN_COSINE
    assert min_cosine(f32.dinov2(scene, size2), bf16.dinov2(scene, size2)) >= MIN_COSINE


def test_sam_embedding_and_point_masks_agree(pair, scene):
    _, (f32, bf16) = pair
    a, b = f32.sam.embed(scene).features, bf16.sam.embed(scene).features
    assert min_cosine(a[0].flatten(1).T, b[0].flatten(1).T) >= MIN_COSINE  # one vector per location
    points = [np.array([[20.0, 30.0]]), np.array([[100.0, 60.0], [90.0, 70.0]])]
    for one, other in zip(f32.sam.predict_point_sets(scene, points), bf16.sam.predict_point_sets(scene, points)):
        np.testing.assert_allclose(one.scores, other.scores, atol=0.01)
        for x, y in zip(one.masks, other.masks):
            assert (x & y).sum() >= 0.98 * (x | y).sum()
    click = {"point_coords": np.array([[30.0, 20.0], [100.0, 70.0]]), "point_labels": np.array([1, 0])}
    one, other = f32.sam.predict(scene, **click), bf16.sam.predict(scene, **click)  # interactive clicks
    np.testing.assert_allclose(one[1], other[1], atol=0.01)
    for x, y in zip(one[0], other[0]):
        assert (x & y).sum() >= 0.98 * (x | y).sum()
