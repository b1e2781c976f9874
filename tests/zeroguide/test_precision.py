"""Zero-guidance segmentation in bfloat16 against float32 (``tiny`` and ``cpu`` architectures, random
weights): the same partition of the test scenes, every segment at IoU >= 0.98."""

import numpy as np
import pytest

from backend.zeroguide import ZeroGuidanceSegmenter, ZeroGuideSettings
from tests.models.pairs import model_pair


class ConstantCaptioner:
    """Names every segment alike: merging then follows the visual embeddings alone."""

    name = "constant"

    def caption(self, embeddings):
        from backend.zeroguide.captioning import Caption

        return [Caption(text="thing", clip_score=0.0, scored_text="thing") for _ in embeddings]


def two_halves(height: int, width: int) -> np.ndarray:
    """The pipeline tests' scene: a red left half, a green bottom-right quarter, noise."""
    rng = np.random.RandomState(5)
    image = (rng.rand(height, width, 3) * 40).astype(np.uint8)
    image[:, : width // 2] += np.array([180, 20, 20], dtype=np.uint8)
    image[height // 2 :, width // 2 :] += np.array([20, 180, 20], dtype=np.uint8)
    return image


def blobs(size: int, seed: int = 0) -> np.ndarray:
    """The benchmark's scene: smooth colour discs plus noise (bench/bench_zeroguide.py)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    image = np.zeros((size, size, 3))
    for _ in range(8):
        cy, cx, r = rng.uniform(0, 1, 3)
        image[((yy - cy) ** 2 + (xx - cx) ** 2) < (0.1 + 0.3 * r) ** 2] = rng.uniform(0, 1, 3)
    image += rng.normal(0, 0.05, image.shape)
    return (image.clip(0, 1) * 255).astype(np.uint8)


def segment(models, image):
    settings = ZeroGuideSettings.for_preset(models.method_overrides("zeroguide"))
    return ZeroGuidanceSegmenter(models, settings, captioner=ConstantCaptioner()).segment(image)


@pytest.mark.parametrize("preset", ["tiny", "cpu"])
@pytest.mark.parametrize("scene", ["two_halves", "blobs"])
def test_same_partition_in_bfloat16(preset, scene):
    image = two_halves(72, 96) if scene == "two_halves" else blobs(128)
    f32, bf16 = model_pair(preset)
    reference, candidate = segment(f32, image), segment(bf16, image)
    assert len(candidate.segments) == len(reference.segments)
    for wanted in reference.segments:
        ious = []
        for got in candidate.segments:
            union = (wanted.mask | got.mask).sum()
            ious.append((wanted.mask & got.mask).sum() / union)
        assert max(ious) >= 0.98, f"a segment of {wanted.mask.sum()} pixels has no match (best IoU {max(ious):.3f})"
