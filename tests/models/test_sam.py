"""SAM without waste (backend/models/sam.py) against segment-anything's own predictor and generator.

With the filters off, the automatic masks equal ``SamAutomaticMaskGenerator``'s (IoU >= 0.99 a
mask; the low-resolution logits agree to float rounding), on the ``tiny`` architecture end to end
and on the ``cpu`` preset's ViT-B decoder (random weights, a given image embedding, so that the
test does not pay for the ViT-B encoder).
"""

import copy

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry

from backend.models.sam import SamEmbedding, SamModels, _image_key, build_tiny_sam, upsample_logits

NO_FILTERS = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_tiny_sam()
    return model, SamModels(copy.deepcopy(model), name="tiny")


@pytest.fixture(scope="module")
def image():
    return (np.random.RandomState(3).rand(40, 52, 3) * 255).astype(np.uint8)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def match(mine: list[dict], theirs: list[dict]) -> list[tuple[dict, dict]]:
    """Pairs of records of the same point prompt and predicted IoU (the mask token)."""
    pairs = []
    for record in mine:
        candidates = [r for r in theirs if np.allclose(r["point_coords"], record["point_coords"], atol=1e-3)]
        best = min(candidates, key=lambda r: abs(r["predicted_iou"] - record["predicted_iou"]))
        assert abs(best["predicted_iou"] - record["predicted_iou"]) < 1e-4
        pairs.append((record, best))
    return pairs


def test_low_resolution_logits_equal_the_predictors(tiny, image):
    model, sam = tiny
    predictor = SamPredictor(model)
    predictor.set_image(image)
    points = np.array([[10.0, 12.0], [30.0, 20.0]])
    masks, scores, low_res = predictor.predict(points, np.ones(2), multimask_output=True, return_logits=True)
    embedding = sam.embed(image)
    torch.testing.assert_close(embedding.features, predictor.features, atol=1e-5, rtol=1e-5)
    coords = sam._prompt_coords(points.astype(np.float32), embedding.original_size)[None]
    hyper_in, iou, keys = sam._decode(embedding, coords, torch.ones(1, 2, dtype=torch.long))
    mine = sam._decoder.upscale(keys, hyper_in[:, 1:], tuple(embedding.features.shape[-2:]))[0]
    torch.testing.assert_close(mine, torch.as_tensor(low_res), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(iou[0, 1:], torch.as_tensor(scores), atol=1e-5, rtol=1e-4)
    answer = sam.predict_points(image, points)
    assert all(mask_iou(a, b) >= 0.99 for a, b in zip(answer.masks, masks > 0))


@pytest.mark.parametrize(
    "prompts",
    [
        {"point_coords": np.array([[10.0, 12.0], [30.0, 20.0]]), "point_labels": np.array([1, 0])},
        {"box": np.array([5.0, 4.0, 40.0, 30.0])},
        {"point_coords": np.array([[20.0, 20.0]]), "point_labels": np.array([1]), "box": np.array([5, 4, 40, 30])},
    ],
)
@pytest.mark.parametrize("multimask_output", [True, False])
def test_predict_equals_the_predictors(tiny, image, prompts, multimask_output):
    """Clicks: SamPredictor.predict's prompts (background points, a box, a mask from a former
    answer) on the cached embedding."""
    model, sam = tiny
    predictor = SamPredictor(model)
    predictor.set_image(image)
    theirs = predictor.predict(**prompts, multimask_output=multimask_output)
    mine = sam.predict(image, **prompts, multimask_output=multimask_output)
    assert mine[0].shape == theirs[0].shape and mine[0].dtype == bool
    np.testing.assert_allclose(mine[1], theirs[1], atol=1e-4)
    np.testing.assert_allclose(mine[2], theirs[2], atol=1e-4)
    assert all(mask_iou(a, b) >= 0.99 for a, b in zip(mine[0], theirs[0]))
    best = int(np.argmax(theirs[1]))  # the next click passes the former answer's logits
    again = {**prompts, "mask_input": theirs[2][best : best + 1]}
    theirs = predictor.predict(**again, multimask_output=False)
    mine = sam.predict(image, **again, multimask_output=False)
    np.testing.assert_allclose(mine[2], theirs[2], atol=1e-4)
    assert mask_iou(mine[0][0], theirs[0][0]) >= 0.99


@pytest.mark.parametrize(
    "image_shape, output_size", [((40, 52), (40, 52)), ((300, 200), (300, 200)), ((64, 64), (97, 31))]
)
def test_upsampling_straight_to_the_output_equals_sams_two_steps(tiny, image_shape, output_size):
    model, _ = tiny
    low_res = torch.randn(3, 1, 64, 64)
    input_size = SamPredictor(model).transform.get_preprocess_shape(*image_shape, model.image_encoder.img_size)
    theirs = model.postprocess_masks(low_res, input_size, output_size)[:, 0]
    mine = upsample_logits(low_res[:, 0], input_size, model.image_encoder.img_size, output_size)
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)  # PyTorch indexes in float32


@pytest.mark.parametrize("options", [NO_FILTERS, {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}])
def test_automatic_masks_equal_the_generators_tiny(tiny, image, options):
    """Filters off: every prompt's three masks, with and without SAM's box NMS."""
    model, sam = tiny
    settings = {"points_per_side": 4, **options}
    theirs = SamAutomaticMaskGenerator(model, output_mode="binary_mask", **settings).generate(image)
    mine = sam.automatic_masks(image, **settings)
    assert len(mine) == len(theirs) and len(mine) > 0
    if options is NO_FILTERS:
        assert len(mine) == 3 * 16
    for record, reference in match(mine, theirs):
        assert record["segmentation"].shape == image.shape[:2]
        assert mask_iou(record["segmentation"], reference["segmentation"]) >= 0.99
        assert abs(record["area"] - reference["area"]) <= 0.01 * max(1, reference["area"])
    # the same order: NMS keeps the highest predicted IoU first
    assert [round(r["predicted_iou"], 4) for r in mine] == [round(r["predicted_iou"], 4) for r in theirs]


def test_predicted_iou_filter_keeps_the_generators_masks(tiny, image):
    model, sam = tiny
    all_scores = [r["predicted_iou"] for r in sam.automatic_masks(image, points_per_side=4, **NO_FILTERS)]
    threshold = float(np.median(all_scores))
    settings = {"points_per_side": 4, "pred_iou_thresh": threshold, "stability_score_thresh": 0.0}
    theirs = SamAutomaticMaskGenerator(model, output_mode="binary_mask", **settings).generate(image)
    mine = sam.automatic_masks(image, **settings)
    assert 0 < len(mine) == len(theirs) < len(all_scores)
    assert all(r["predicted_iou"] > threshold for r in mine)
    assert all(mask_iou(a["segmentation"], b["segmentation"]) >= 0.99 for a, b in match(mine, theirs))


def test_area_limits_and_output_size(tiny, image):
    _, sam = tiny
    everything = sam.automatic_masks(image, points_per_side=4, **NO_FILTERS)
    fractions = np.sort([r["area"] / r["segmentation"].size for r in everything])
    gap = int(np.argmax(np.diff(fractions)))  # cut in the widest gap: low-resolution areas differ a little
    cut = float(fractions[gap : gap + 2].mean())
    large = sam.automatic_masks(image, points_per_side=4, min_area_fraction=cut, **NO_FILTERS)
    small = sam.automatic_masks(image, points_per_side=4, max_area_fraction=cut, **NO_FILTERS)
    assert len(large) == len(fractions) - gap - 1 and len(small) == gap + 1
    assert all(r["area"] / r["segmentation"].size > cut for r in large)
    assert all(r["area"] / r["segmentation"].size < cut for r in small)
    none = sam.automatic_masks(image, points_per_side=4, min_area_fraction=0.9, max_area_fraction=0.95, **NO_FILTERS)
    assert none == []
    resized = sam.automatic_masks(image, output_size=(80, 26), points_per_side=4, **NO_FILTERS)
    assert len(resized) == len(everything)
    assert all(r["segmentation"].shape == (80, 26) and r["crop_box"] == [0, 0, 26, 80] for r in resized)
    # point prompts stay in the image's pixels
    assert {tuple(r["point_coords"][0]) for r in resized} == {tuple(r["point_coords"][0]) for r in everything}


def test_unsupported_options_are_refused(tiny, image):
    _, sam = tiny
    with pytest.raises(ValueError, match="crop_n_layers"):
        sam.automatic_masks(image, crop_n_layers=1)
    with pytest.raises(ValueError, match="unknown option"):
        sam.automatic_masks(image, points_per_sides=4)


def test_min_mask_region_area_as_the_generator(tiny, image):
    model, sam = tiny
    settings = {"points_per_side": 2, "min_mask_region_area": 30, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    theirs = SamAutomaticMaskGenerator(model, output_mode="binary_mask", **settings).generate(image)
    mine = sam.automatic_masks(image, **settings)
    assert len(mine) == len(theirs)
    assert all(mask_iou(a["segmentation"], b["segmentation"]) >= 0.99 for a, b in match(mine, theirs))


def test_vit_b_decoder_equals_the_generators():
    """The ``cpu`` preset's SAM (ViT-B, random weights) on a given embedding, filters off."""
    torch.manual_seed(1)
    model = sam_model_registry["vit_b"](checkpoint=None).eval()
    sam = SamModels(copy.deepcopy(model), name="vit_b")
    image = np.zeros((300, 400, 3), np.uint8)  # not square: SAM's padding and crop matter
    features = torch.randn(1, 256, 64, 64) * 0.5
    input_size = SamPredictor(model).transform.get_preprocess_shape(300, 400, 1024)

    class GivenEmbedding(SamPredictor):
        def set_image(self, image, image_format="RGB"):
            self.reset_image()
            self.original_size, self.input_size = image.shape[:2], input_size
            self.features, self.is_image_set = features, True

    generator = SamAutomaticMaskGenerator(model, output_mode="binary_mask", points_per_side=3, **NO_FILTERS)
    generator.predictor = GivenEmbedding(model)
    theirs = generator.generate(image)
    sam._cache[_image_key(image)] = SamEmbedding(features, input_size, (300, 400))
    mine = sam.automatic_masks(image, points_per_side=3, **NO_FILTERS)
    assert len(mine) == len(theirs) == 27
    assert all(mask_iou(a["segmentation"], b["segmentation"]) >= 0.99 for a, b in match(mine, theirs))
