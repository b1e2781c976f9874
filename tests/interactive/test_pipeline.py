"""ClickSegmenter on the tiny preset: SAM's most confident mask, the image embedding computed once
per image, the CLIP prefix shared, the nearest class with a softmax score."""

import numpy as np
import pytest
import torch

from backend.interactive import ClickSegmenter, ClickSettings, EmbeddingCache
from backend.interactive.pipeline import check_prompts
from backend.zeroguide import ZeroGuidanceSegmenter, ZeroGuideSettings


class StubCaptioner:
    """Names a segment after the sign of its embedding's first coordinate (fast, checkable)."""

    name = "stub"

    def caption(self, embeddings):
        from backend.zeroguide.captioning import Caption

        texts = ["left thing" if float(e[0]) > 0 else "right thing" for e in embeddings]
        return [Caption(text=t, clip_score=0.0, scored_text=t) for t in texts]

    def warm_up(self):
        pass


def scene(seed: int = 5) -> np.ndarray:
    rng = np.random.RandomState(seed)
    image = (rng.rand(72, 96, 3) * 40).astype(np.uint8)
    image[:, :48] += np.array([180, 20, 20], dtype=np.uint8)
    image[36:, 48:] += np.array([20, 180, 20], dtype=np.uint8)
    return image


@pytest.fixture
def make_segmenter(tiny_models):
    def make(captioner=None, **click_changes) -> ClickSegmenter:
        settings = ZeroGuideSettings.for_preset(tiny_models.method_overrides("zeroguide"))
        describer = ZeroGuidanceSegmenter(tiny_models, settings, captioner=captioner or StubCaptioner())
        click_settings = ClickSettings(**click_changes)
        return ClickSegmenter(tiny_models, settings, click_settings, describer=describer)

    return make


class Spy:
    """Counts calls of ``owner.name`` (and keeps their arguments) without changing them."""

    def __init__(self, monkeypatch, owner, name):
        self.calls = []
        original = getattr(owner, name)

        def spy(*args, **kwargs):
            self.calls.append((args, kwargs))
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)


def test_a_click_gives_sams_most_confident_mask(tiny_models, make_segmenter):
    from segment_anything import SamPredictor

    image = scene()
    result = make_segmenter().segment(image, [[20, 30]], [1], None, task_key="1:1")
    reference = SamPredictor(tiny_models.sam.model)
    with torch.inference_mode():
        reference.set_image(image)
        masks, scores, _ = reference.predict(np.array([[20, 30]], np.float32), np.array([1]), multimask_output=True)
    assert masks.shape[0] == 3
    ranked = [i for i in np.argsort(-scores, kind="stable") if masks[i].any()]
    np.testing.assert_array_equal(result.mask, masks[ranked[0]])
    assert result.sam_score == pytest.approx(float(scores[ranked[0]]))
    assert result.mask.shape == image.shape[:2] and result.mask.any()
    assert result.text in ("left thing", "right thing")
    assert -1.0 <= result.text_score <= 1.0
    assert result.class_name is None and result.class_score is None and not result.cached


def test_next_clicks_reuse_the_image_embedding_and_the_clip_prefix(tiny_models, make_segmenter, monkeypatch):
    segmenter = make_segmenter()
    set_image = Spy(monkeypatch, segmenter.models.sam, "embed")
    prefix = Spy(monkeypatch, tiny_models.clip, "segment_prefix")
    encode = Spy(monkeypatch, tiny_models.clip, "encode_segments")
    image = scene()
    first = segmenter.segment(image, [[20, 30]], [1], None, task_key="1:1")
    second = segmenter.segment(image, [[20, 30], [70, 60]], [1, 0], None, task_key="1:1")
    third = segmenter.segment(image, None, None, [10, 10, 60, 50], task_key="1:1")
    assert len(set_image.calls) == 1 and len(prefix.calls) == 1
    assert len(encode.calls) == 3 and all(kwargs["prefix"] is not None for _, kwargs in encode.calls)
    assert (first.cached, second.cached, third.cached) == (False, True, True)
    assert {"sam_image", "sam_prompt", "clip_prefix", "describe"} <= set(first.timings)
    # a cached click answers exactly what a fresh segmenter computes from scratch
    fresh = make_segmenter().segment(image, [[20, 30], [70, 60]], [1, 0], None, task_key="1:1")
    np.testing.assert_array_equal(fresh.mask, second.mask)
    assert fresh.text_score == pytest.approx(second.text_score, abs=1e-5)


def test_negative_clicks_and_boxes_reach_sam(make_segmenter, monkeypatch):
    segmenter = make_segmenter(multimask_output=False)
    predict = Spy(monkeypatch, segmenter.models.sam, "predict")
    image = scene()
    segmenter.segment(image, [[20, 30], [70, 60]], [1, 0], [5, 5, 90, 70], task_key="1:1")
    kwargs = predict.calls[0][1]
    np.testing.assert_array_equal(kwargs["point_coords"], [[20, 30], [70, 60]])
    np.testing.assert_array_equal(kwargs["point_labels"], [1, 0])
    np.testing.assert_array_equal(kwargs["box"], [5, 5, 90, 70])
    assert kwargs["multimask_output"] is False


def test_a_changed_image_is_embedded_anew(make_segmenter, monkeypatch):
    segmenter = make_segmenter()
    set_image = Spy(monkeypatch, segmenter.models.sam, "embed")
    segmenter.segment(scene(5), [[20, 30]], [1], None, task_key="1:9")
    segmenter.segment(scene(6), [[20, 30]], [1], None, task_key="1:9")  # the task's image changed
    again = segmenter.segment(scene(6), [[20, 30]], [1], None, task_key="1:9")
    assert len(set_image.calls) == 2 and again.cached
    stats = segmenter.cache.stats()
    assert stats.invalidations == 1 and stats.entries == 1


def test_the_cache_bounds_hold_across_tasks(make_segmenter, monkeypatch):
    segmenter = make_segmenter(embedding_cache_entries=2)
    set_image = Spy(monkeypatch, segmenter.models.sam, "embed")
    for task in (1, 2, 3, 1):
        segmenter.segment(scene(task), [[20, 30]], [1], None, task_key=f"1:{task}")
    assert len(set_image.calls) == 4  # task 1 was evicted by task 3 and is embedded again
    assert len(segmenter.cache) == 2 and segmenter.cache.stats().evictions == 2
    entry_bytes = segmenter.cache.nbytes // 2
    small = make_segmenter(embedding_cache_bytes=entry_bytes)  # one image's SAM features and CLIP prefix fit
    for task in (1, 2):
        small.segment(scene(task), [[20, 30]], [1], None, task_key=f"1:{task}")
    assert len(small.cache) == 1 and small.cache.nbytes <= entry_bytes


def test_a_shared_cache_serves_segmenters_of_other_settings(tiny_models, make_segmenter, monkeypatch):
    shared = EmbeddingCache(4, 1 << 30)
    one, other = make_segmenter(), make_segmenter(multimask_output=False)
    one.cache = other.cache = shared
    one.segment(scene(), [[20, 30]], [1], None, task_key="1:1")
    prefix = Spy(monkeypatch, tiny_models.clip, "segment_prefix")
    assert other.segment(scene(), [[20, 30]], [1], None, task_key="1:1").cached
    assert prefix.calls == []


def test_the_nearest_class_and_its_softmax_score(tiny_models, make_segmenter):
    segmenter = make_segmenter()
    image = scene()
    classes = ["cat", "sky", "road"]
    result = segmenter.segment(image, [[20, 30]], [1], None, classes=classes, task_key="1:1", class_template="a {}")
    clip = tiny_models.clip
    visual = clip.encode_segments(image, result.mask[None], segmenter.zeroguide_settings.segment_encoding)[0]
    text = clip.encode_text([f"a {name}" for name in classes])
    similarities = text @ visual
    scale = min(float(clip.model.logit_scale.exp()), 100.0)
    expected = torch.softmax(scale * similarities, dim=0)
    index = int(torch.argmax(similarities))
    assert result.class_name == classes[index]
    assert result.class_score == pytest.approx(float(expected[index]), abs=1e-4)
    assert 1 / len(classes) <= result.class_score <= 1.0


def test_a_click_on_a_bfloat16_sam(make_segmenter):
    """With DTYPE=bfloat16 (what ``auto`` picks on AVX-512-BF16/AMX), a click runs on the shared,
    bf16-cast SAM: the mask comes back at the image's size and the embedding is cached."""
    from backend.models.registry import FoundationModels

    models = FoundationModels("tiny", device="cpu", dtype="bfloat16")
    settings = ZeroGuideSettings.for_preset(models.method_overrides("zeroguide"))
    describer = ZeroGuidanceSegmenter(models, settings, captioner=StubCaptioner())
    segmenter = ClickSegmenter(models, settings, describer=describer)
    first = segmenter.segment(scene(), [[20, 30]], [1], None, task_key="1:1")
    again = segmenter.segment(scene(), [[20, 30], [80, 60]], [1, 0], None, task_key="1:1")
    assert first.mask.shape == again.mask.shape == (72, 96)
    assert (first.cached, again.cached) == (False, True)


def test_the_default_captioner_names_the_click(tiny_models):
    settings = ZeroGuideSettings.for_preset(tiny_models.method_overrides("zeroguide"))
    result = ClickSegmenter(tiny_models, settings).segment(scene(), [[20, 30]], task_key=None)
    assert result.text.strip()  # the retrieval captioner's nearest phrase


@pytest.mark.parametrize(
    "points, labels, box, message",
    [
        (None, None, None, "at least one point or a box"),
        ([[1, 2]], [0], None, "negative points alone"),
        ([[1, 2]], [1, 1], None, "1 points but 2 labels"),
        ([[1, 2]], [2], None, "1 \\(positive\\) or 0"),
        ([[np.nan, 2]], [1], None, "finite"),
        (None, None, [5, 5, 2, 9], "x0 < x1"),
        (None, None, [1, 2, 3], "4 finite numbers"),
    ],
)
def test_malformed_prompts_are_refused(points, labels, box, message):
    with pytest.raises(ValueError, match=message):
        check_prompts((10, 10, 3), points, labels, box)
