"""Tiled FMbSeg base prediction: tiles cover the image, the stitch is exact, and a small object that
the 1-MP downscale (and the model's own resolution) loses is found at the original resolution."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from backend.fmbseg.results import ClassMaskPrediction
from backend.prelabel.job import JobOptions
from backend.prelabel.tiling import TileSpec, core_bounds, stitch, tile_boxes, tile_starts
from backend.prelabel.worker import WorkerSpec, plan_version
from backend.service.masks import rle_to_mask
from tests.service.conftest import FakeMethods, png_bytes

from .conftest import LABEL_CONFIG
from .test_job import make_job

CLASSES = ["person", "dog", "cat", "tree", "sky", "road"]
MODEL_SIDE = 32  # the fake model sees every input at 32x32


@pytest.mark.parametrize(
    "length, size, overlap", [(10, 32, 8), (32, 32, 8), (100, 32, 8), (1000, 518, 64), (519, 518, 0)]
)
def test_tiles_cover_and_cores_partition(length, size, overlap):
    starts = tile_starts(length, size, overlap)
    assert starts[0] == 0 and min(starts[-1] + size, length) == length
    for first, second in zip(starts, starts[1:]):
        assert second - first <= size - overlap and second > first
    cores = core_bounds(starts, size, length)
    assert cores[0][0] == 0 and cores[-1][1] == length
    for (low, high), (next_low, _) in zip(cores, cores[1:]):
        assert high == next_low  # no gap, no overlap
    for (low, high), start in zip(cores, starts):
        assert start <= low < high <= min(start + size, length)


def test_stitching_crops_of_a_map_gives_the_map_back():
    rng = np.random.default_rng(0)
    truth = rng.integers(-1, 5, size=(301, 457))
    boxes = tile_boxes(457, 301, TileSpec(64, 16))
    crops = [truth[y0:y1, x0:x1] for (x0, y0, x1, y1), _ in boxes]
    np.testing.assert_array_equal(stitch(301, 457, boxes, crops), truth)


def test_tile_spec():
    assert TileSpec.parse("518") == TileSpec(518, 64) and TileSpec.parse("256:32") == TileSpec(256, 32)
    with pytest.raises(ValueError):
        TileSpec(16)
    with pytest.raises(ValueError):
        TileSpec(64, 40)


class LowResolutionFMbSeg:
    """FMbSeg stand-in that sees its input at 32x32 (area average): "dog" where the pixel is red, else "sky"."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def trained_classes(self):
        return list(CLASSES)

    def predict(self, image, classes, refine=None, open_vocabulary=False):
        self.calls.append((image.shape, refine))
        small = cv2.resize(image, (MODEL_SIDE, MODEL_SIDE), interpolation=cv2.INTER_AREA).astype(int)
        red = (small[..., 0] > 150) & (small[..., 2] < 120)
        labels = np.where(red, classes.index("dog"), classes.index("sky"))
        label_map = cv2.resize(
            labels.astype(np.uint8), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST
        )
        return ClassMaskPrediction(label_map.astype(int), list(classes), "stage2-base", "fake", random_weights=True)


class TileMethods(FakeMethods):
    def __init__(self) -> None:
        super().__init__()
        self.fmbseg_model = LowResolutionFMbSeg()

    def fmbseg(self, models, settings, checkpoint):
        return self.fmbseg_model


def photo(width=1200, height=900, square=(700, 300, 14)):
    image = np.zeros((height, width, 3), np.uint8)
    image[...] = (90, 150, 230)
    x, y, side = square
    image[y : y + side, x : x + side] = (230, 30, 30)
    return image


def dog_masks(predictions, task_id):
    result = next(p for p in predictions if p["task"] == task_id)["result"]
    masks = []
    for item in result:
        if item["from_name"] == "class_mask" and item["value"]["brushlabels"] == ["dog"]:
            masks.append(rle_to_mask(item["value"]["rle"], item["original_height"], item["original_width"]))
    return masks


def test_a_small_object_lost_to_the_downscale_is_found_with_tiles(fake_ls, config, tmp_path):
    checkpoint = tmp_path / "fmbseg-shared.safetensors"
    checkpoint.write_bytes(b"not read by the fake methods")
    config = config.replace(fmbseg_checkpoint=checkpoint, model_max_pixels=300 * 225)  # a 4x downscale
    fake_ls.state.tasks = {1: {"image": "/data/upload/1/photo.png"}}
    fake_ls.state.files["/data/upload/1/photo.png"] = png_bytes(photo())

    plain = make_job(fake_ls, config, tmp_path, methods_factory=TileMethods).run()
    assert plain.status == "done" and dog_masks(fake_ls.state.predictions, 1) == []  # lost

    tiles = TileSpec(64, 16)
    version = plan_version(WorkerSpec(LABEL_CONFIG, 1, config, tiles=tiles))
    assert version.endswith("-tiled64o16") and version.split("-fmbseg")[0] == plain.model_version.split("-fmbseg")[0]
    assert version.split("-fmbseg")[1] != plain.model_version.split("-fmbseg")[1]  # the tiles are in the hash too
    job = make_job(fake_ls, config, tmp_path, methods_factory=TileMethods, workers=1)
    job.spec_for = lambda label_config: WorkerSpec(label_config, 1, config, tiles=tiles)
    tiled = job.run()
    assert tiled.status == "done" and tiled.imported == 1 and tiled.model_version == version
    tiled_predictions = [p for p in fake_ls.state.predictions if p["model_version"] == version]
    (mask,) = dog_masks(tiled_predictions, 1)
    assert mask.shape == (900, 1200)
    rows, cols = np.nonzero(mask)
    assert 300 <= rows.min() and rows.max() < 314 + 8 and 700 - 8 <= cols.min() and cols.max() < 714 + 8
    calls = job.made[0].runtime.methods.fmbseg_model.calls
    assert {shape for shape, _ in calls} <= {(64, 64, 3)} and {refine for _, refine in calls} == {False}
    # the zero-guidance tag is predicted as by /predict (same regions as the untiled run)
    zero_guidance = lambda p: sorted(
        r["value"].get("text", [""])[0] for r in p["result"] if r["from_name"] == "caption"
    )
    untiled = next(p for p in fake_ls.state.predictions if p["model_version"] == plain.model_version)
    assert zero_guidance(tiled_predictions[0]) == zero_guidance(untiled)


def test_tiles_need_an_alignment_checkpoint(fake_ls, config, tmp_path):
    with pytest.raises(ValueError, match="needs an alignment checkpoint"):
        plan_version(WorkerSpec(LABEL_CONFIG, 1, config, tiles=TileSpec(64, 16)))
    job = make_job(fake_ls, config, tmp_path)
    job.spec_for = lambda label_config: WorkerSpec(label_config, 1, config, tiles=TileSpec(64, 16))
    summary = job.run()
    assert summary.status == "failed" and "alignment checkpoint" in summary.error and fake_ls.state.imports == 0
