"""The zero-guidance pipeline end to end on the tiny preset, and its command line."""

import json

import numpy as np
import pytest

from backend.models.clip import SegmentEncoding
from backend.outputs import decode_rle
from backend.zeroguide import ZeroGuidanceSegmenter, ZeroGuideSettings
from backend.zeroguide.__main__ import main as cli_main


class StubCaptioner:
    """Names a segment after the sign of its embedding's first coordinate: fast and checkable."""

    name = "stub"

    def __init__(self):
        self.calls = 0
        self.captioned = 0

    def caption(self, embeddings):
        from backend.zeroguide.captioning import Caption

        self.calls += 1
        self.captioned += len(embeddings)
        texts = ["left thing" if float(e[0]) > 0 else "right thing" for e in embeddings]
        return [Caption(text=t, clip_score=0.0, scored_text=t) for t in texts]


@pytest.fixture(scope="module")
def image():
    rng = np.random.RandomState(5)
    image = (rng.rand(72, 96, 3) * 40).astype(np.uint8)
    image[:, :48] += np.array([180, 20, 20], dtype=np.uint8)
    image[36:, 48:] += np.array([20, 180, 20], dtype=np.uint8)
    return image


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"use_crf": False},
        {"merge": False},
        {"segment_encoding": SegmentEncoding(method="crop")},
        {"segment_encoding": SegmentEncoding(subtract_global=False)},
    ],
)
def test_segments_partition_the_image(tiny_models, image, changes):
    settings = ZeroGuideSettings.for_preset(tiny_models.method_overrides("zeroguide"), **changes)
    result = ZeroGuidanceSegmenter(tiny_models, settings, captioner=StubCaptioner()).segment(image)
    stack = np.stack([s.mask for s in result.segments])
    assert stack.shape[1:] == image.shape[:2]
    assert (stack.sum(axis=0) == 1).all(), "every pixel in exactly one segment"
    assert result.random_weights and result.preset == "tiny"
    for segment in result.segments:
        assert segment.text in ("left thing", "right thing")
        assert isinstance(segment.embedding, np.ndarray) and segment.embedding.dtype == np.float32
        assert segment.embedding.ndim == 1
        assert abs(float(np.linalg.norm(segment.embedding)) - 1.0) < 1e-4
        assert isinstance(segment.text_score, float) and -1.0 <= segment.text_score <= 1.0
        assert segment.merge_score is None or -1.0 <= segment.merge_score <= 1.0
        assert not hasattr(segment, "score"), "merge and text scores are separate fields"
    assert set(result.timings) == {"features", "clustering", "crf", "embedding_and_naming", "merging"}


def test_no_merge_keeps_all_candidates(tiny_models, image):
    settings = ZeroGuideSettings.for_preset(tiny_models.method_overrides("zeroguide"), merge=False)
    result = ZeroGuidanceSegmenter(tiny_models, settings, captioner=StubCaptioner()).segment(image)
    assert len(result.segments) == result.candidates
    assert all(s.merge_score is None for s in result.segments)


def test_merging_everything_at_threshold_minus_one(tiny_models, image):
    """τ_merge = -1 accepts every sibling pair: the tree collapses to its root, one segment."""
    settings = ZeroGuideSettings.for_preset(tiny_models.method_overrides("zeroguide"), merge_threshold=-1.0)
    captioner = StubCaptioner()
    result = ZeroGuidanceSegmenter(tiny_models, settings, captioner=captioner).segment(image)
    assert len(result.segments) == 1
    assert result.segments[0].mask.all()
    assert result.segments[0].merge_score is not None
    # every candidate is named once, then every merged node once (K - 1 merges to reach the root),
    # the merges of one tree level in one batch
    assert captioner.captioned == result.candidates + (result.candidates - 1)
    assert captioner.calls <= result.candidates


def test_settings_validation():
    with pytest.raises(ValueError, match="captioner"):
        ZeroGuideSettings(captioner="gpt5")
    with pytest.raises(ValueError, match="merge_threshold"):
        ZeroGuideSettings(merge_threshold=2.0)
    assert ZeroGuideSettings().n_clusters == 20 and ZeroGuideSettings().merge_threshold == 0.8
    assert ZeroGuideSettings().segment_encoding.sigma_squared == 2.5
    assert ZeroGuideSettings().fingerprint() != ZeroGuideSettings(merge=False).fingerprint()


def test_rejects_bad_image(tiny_models):
    with pytest.raises(ValueError, match="uint8 RGB"):
        ZeroGuidanceSegmenter(tiny_models, captioner=StubCaptioner()).segment(np.zeros((10, 10), np.uint8))


def test_command_line_writes_json_and_overlay(tmp_path, image, monkeypatch):
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "scene.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    code = cli_main(
        [
            str(tmp_path / "scene.png"),
            str(tmp_path / "broken.jpg"),
            "--preset",
            "tiny",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-crf",
        ]
    )
    assert code == 1, "one of two images failed, and the run says so"
    payload = json.loads((out / "scene.json").read_text())
    assert payload["random_weights"] is True and payload["preset"] == "tiny"
    masks = np.stack([decode_rle(s["mask_rle"]) for s in payload["segments"]])
    assert masks.shape[1:] == image.shape[:2] and (masks.sum(axis=0) == 1).all()
    assert all(isinstance(s["text"], str) and s["text"] for s in payload["segments"])
    assert (out / "scene.overlay.png").exists() and not (out / "broken.json").exists()


def test_a_24_megapixel_photo_pays_the_crf_of_its_load_size(tiny_models):
    """A 6000x4000 photo: the CRF runs at DINO's load size (the authors' code) and its labels come
    to full size along the image's edges, so the CRF stage is a minor share of the whole run (at
    the photo's own resolution it took 232 of 253 s on the cpu preset before)."""
    rng = np.random.default_rng(0)
    photo = np.empty((4000, 6000, 3), np.uint8)
    photo[:] = (30, 90, 160)
    photo[1000:3000, 1500:3500] = (220, 200, 40)
    photo[2500:3800, 4000:5800] = (200, 30, 30)
    photo += rng.integers(0, 20, photo.shape, dtype=np.uint8)
    settings = ZeroGuideSettings.for_preset(tiny_models.method_overrides("zeroguide"))
    assert settings.crf_at_load_size and settings.dino_keep_aspect
    load_size = tiny_models.dino.load_size(photo.shape, settings.dino_image_size, settings.dino_stride, True)
    assert load_size[0] == settings.dino_image_size and load_size[1] > load_size[0]  # 3:2 kept
    result = ZeroGuidanceSegmenter(tiny_models, settings).segment(photo)
    assert result.segments and all(s.mask.shape == (4000, 6000) for s in result.segments)
    union = np.zeros((4000, 6000), np.int32)
    for segment in result.segments:
        union += segment.mask
    assert (union == 1).all()  # still a partition of every pixel
    total = sum(result.timings.values())
    # a share, not a time (both sides slow down together on a busy machine): the CRF at the photo's
    # resolution was 92 % of the run; here it is well under half, and 3/4 leaves room for noise
    assert result.timings["crf"] < 0.75 * total, result.timings
