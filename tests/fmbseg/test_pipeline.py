"""The FMbSeg facade and command line on the tiny preset."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from backend.fmbseg import FMbSegPredictor, LabelledMask
from backend.fmbseg.__main__ import main as cli_main
from backend.fmbseg.alignment import AlignmentModuleConfig
from backend.fmbseg.checkpoints import CheckpointError, load_alignment_checkpoint
from backend.fmbseg.training import TrainingSettings
from backend.outputs import decode_rle

CLASSES = ["cat", "dog", "sky"]


@pytest.fixture(scope="module")
def predictor(tiny_models):
    base = FMbSegPredictor(tiny_models)
    return FMbSegPredictor(tiny_models, base.settings.replace(presence_min_crops=0))


@pytest.fixture(scope="module")
def image():
    rng = np.random.RandomState(4)
    image = (rng.rand(56, 84, 3) * 60).astype(np.uint8)
    image[:, :42] += 150
    return image


@pytest.fixture(scope="module")
def trained(predictor, image, tmp_path_factory):
    """An alignment module trained on human corrections: left half 'dog', right half 'sky'."""
    left = np.zeros(image.shape[:2], bool)
    left[:, :42] = True
    masks = [LabelledMask(left, "dog"), LabelledMask(~left, "sky")]
    examples = [predictor.training_example(image, masks, CLASSES, seed=i) for i in range(3)]
    path = tmp_path_factory.mktemp("ckpt") / "align.safetensors"
    fresh = FMbSegPredictor(predictor.models, predictor.settings)
    checkpoint = fresh.train(examples, CLASSES, path, training_settings=TrainingSettings(epochs=3), progress_bar=False)
    return fresh, checkpoint, path, examples


def test_without_checkpoint_stage1_is_served(predictor, image):
    result = predictor.predict(image, CLASSES)
    assert result.source == "stage1" and result.random_weights
    assert predictor.trained_classes() is None
    assert np.array_equal(result.label_map, predictor.pseudo_label(image, CLASSES).label_map())
    assert "stage1" in result.model_version and result.model_version.startswith("fmbseg-tiny-")


def test_human_corrections_become_patch_labels(trained):
    _, _, _, examples = trained
    labels = examples[0].patch_labels.reshape(8, 8)  # DINOv2 tiny: 112 / 14
    assert (labels[:, :4] == CLASSES.index("dog")).all()
    assert (labels[:, 4:] == CLASSES.index("sky")).all()


def test_base_prediction_matches_an_independent_computation(trained, image):
    predictor, checkpoint, _, _ = trained
    assert predictor.trained_classes() == CLASSES
    result = predictor.predict(image, CLASSES, refine=False)
    assert result.source == "stage2-base" and checkpoint.version in result.model_version
    assert type(result.label_map) is np.ndarray and result.label_map.dtype == np.int64
    with torch.no_grad():
        features = predictor.models.dinov2(image, predictor.settings.dinov2_image_size)  # (8, 8, C)
        z = F.normalize(checkpoint.module(features.reshape(1, 64, -1)), dim=-1).reshape(8, 8, -1)
        text = predictor.models.clip.encode_text([f"a photo of a {c}" for c in CLASSES])
        scores = torch.einsum("hwd,kd->khw", z, text)
        dense = F.interpolate(scores[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0]
    assert np.array_equal(result.label_map, dense.argmax(0).numpy())


def test_refined_prediction_and_class_order(trained, image):
    predictor, _, _, _ = trained
    result = predictor.predict(image, list(reversed(CLASSES)), refine=True)
    assert result.source == "stage2-refined"
    assert result.label_map.shape == image.shape[:2]
    assert result.label_map.min() >= 0 and result.label_map.max() < 3
    assert set(result.class_masks) <= set(CLASSES)


def test_class_list_must_match_the_checkpoint(trained, image):
    predictor, _, _, _ = trained
    with pytest.raises(CheckpointError, match="differs"):
        predictor.predict(image, ["cat", "horse"])
    zero_shot = predictor.predict(image, ["cat", "horse"], refine=False, open_vocabulary=True)
    assert zero_shot.classes == ["cat", "horse"] and zero_shot.label_map.max() <= 1


def test_checkpoint_for_other_feature_sizes_is_refused(predictor, trained, tmp_path):
    from backend.fmbseg.alignment import build_from_config
    from backend.fmbseg.checkpoints import AlignmentCheckpoint

    _, checkpoint, _, _ = trained
    config = AlignmentModuleConfig(kind="linear", in_dim=1024, out_dim=768)
    wrong = AlignmentCheckpoint(
        module=build_from_config(config),
        classes=tuple(CLASSES),
        text_embeddings=torch.zeros(3, 768),
        module_config=config,
        settings=checkpoint.settings,
        epochs_completed=1,
        loss_history=(1.0,),
        version="x",
    )
    with pytest.raises(CheckpointError, match="1024-d to 768-d"):
        FMbSegPredictor(predictor.models, predictor.settings).load_checkpoint(wrong)
    with pytest.raises(CheckpointError, match="no alignment checkpoint"):
        FMbSegPredictor(predictor.models, predictor.settings, checkpoint=tmp_path / "missing.safetensors")


def _without_method_settings(path, target):
    """A copy of a checkpoint file as written before checkpoints recorded method settings."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    del metadata["method_settings"]
    save_file(load_file(str(path)), str(target), metadata)
    return target


def test_checkpoint_records_the_method_settings(predictor, trained, tmp_path):
    _, checkpoint, path, _ = trained
    assert checkpoint.method_settings == predictor.settings.to_dict()
    assert load_alignment_checkpoint(path).method_settings == predictor.settings.to_dict()
    same = FMbSegPredictor(predictor.models, predictor.settings.replace(refine=False), checkpoint=path)
    assert same.checkpoint.version == checkpoint.version  # refine is not a feature setting

    other = predictor.settings.replace(dinov2_image_size=140, prompt_template="a {}")
    with pytest.raises(CheckpointError) as error:
        FMbSegPredictor(predictor.models, other, checkpoint=path)
    message = str(error.value)
    assert "dinov2_image_size: 112 in the checkpoint, 140 here" in message
    assert "prompt_template: 'a photo of a {}' in the checkpoint, 'a {}' here" in message
    with pytest.raises(CheckpointError, match="dinov2_image_size"):
        FMbSegPredictor(predictor.models, other).load_checkpoint(checkpoint)  # a record, not a file

    old = load_alignment_checkpoint(_without_method_settings(path, tmp_path / "old.safetensors"))
    assert old.method_settings == {}
    assert FMbSegPredictor(predictor.models, other, checkpoint=old).checkpoint is old  # nothing to check


def test_unknown_correction_class_is_refused(predictor, image):
    with pytest.raises(ValueError, match="not in the class list"):
        predictor.training_example(image, [LabelledMask(np.ones(image.shape[:2], bool), "horse")], CLASSES)


def test_command_line_round_trip(tmp_path, image, trained):
    _, _, checkpoint_path, _ = trained
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(image).save(images / "a.png")
    out = tmp_path / "out"
    assert (
        cli_main(
            [
                "predict",
                "--preset",
                "tiny",
                "--images",
                str(images),
                "--out",
                str(out),
                "--checkpoint",
                str(checkpoint_path),
                "--no-refine",
            ]
        )
        == 0
    )
    payload = json.loads((out / "a.json").read_text())
    assert payload["classes"] == CLASSES and payload["source"] == "stage2-base" and payload["random_weights"]
    masks = np.stack([decode_rle(m["mask_rle"]) for m in payload["masks"]])
    assert (masks.sum(axis=0) == 1).all()
    assert (out / "a.overlay.png").exists() and (out / "a.labels.png").exists()

    assert (
        cli_main(
            [
                "predict",
                "--preset",
                "tiny",
                "--images",
                str(images),
                "--out",
                str(out),
                "--checkpoint",
                str(checkpoint_path),
                "--classes",
                "cat,horse",
            ]
        )
        == 2
    )
    assert (
        cli_main(
            [
                "predict",
                "--preset",
                "tiny",
                "--images",
                str(images),
                "--out",
                str(out),
                "--checkpoint",
                str(tmp_path / "nope.safetensors"),
            ]
        )
        == 2
    )
    assert (
        cli_main(
            ["predict", "--preset", "tiny", "--images", str(tmp_path / "none"), "--out", str(out), "--classes", "cat"]
        )
        == 2
    )
    (tmp_path / "empty").mkdir()
    assert (
        cli_main(
            [
                "pseudo-label",
                "--preset",
                "tiny",
                "--images",
                str(tmp_path / "empty"),
                "--out",
                str(out),
                "--classes",
                "cat",
            ]
        )
        == 2
    )


def test_command_line_pseudo_label_then_train(tmp_path, image):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(image).save(images / "a.png")
    Image.fromarray(image[:, ::-1].copy()).save(images / "b.png")
    (images / "broken.png").write_bytes(b"nope")
    labels = tmp_path / "labels"
    assert (
        cli_main(
            [
                "pseudo-label",
                "--preset",
                "tiny",
                "--images",
                str(images),
                "--out",
                str(labels),
                "--classes",
                "cat,dog",
                "--presence-min-crops",
                "0",
            ]
        )
        == 1
    )  # one unreadable image
    assert (labels / "a.json").exists() and (labels / "b.overlay.png").exists()
    checkpoint = tmp_path / "m.safetensors"
    assert (
        cli_main(
            [
                "train",
                "--preset",
                "tiny",
                "--images",
                str(images),
                "--out",
                str(tmp_path / "t"),
                "--classes",
                "cat,dog",
                "--pseudo-labels",
                str(labels),
                "--checkpoint",
                str(checkpoint),
                "--epochs",
                "1",
                "--module",
                "mlp",
            ]
        )
        == 0
    )
    assert checkpoint.exists()
    assert (
        cli_main(
            [
                "train",
                "--preset",
                "tiny",
                "--images",
                str(images),
                "--out",
                str(tmp_path / "t"),
                "--classes",
                "cat,sky",
                "--pseudo-labels",
                str(labels),
                "--checkpoint",
                str(checkpoint),
            ]
        )
        == 2
    )


def test_stage1_agreement_of_a_trained_module(trained, image):
    predictor, _, _, _ = trained
    result = predictor.predict(image, CLASSES, refine=False, stage1_agreement=True)
    stage1 = predictor.pseudo_label(image, CLASSES).label_map()  # recomputed here
    both = (stage1 >= 0) & (result.label_map >= 0)
    expected = float((stage1[both] == result.label_map[both]).mean()) if both.any() else None
    assert result.stage1_agreement == pytest.approx(expected)
    assert predictor.predict(image, CLASSES, refine=False).stage1_agreement is None  # not asked: not run
