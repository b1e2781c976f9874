"""Retraining FMbSeg's alignment module on human corrections (the default training hook)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.fmbseg.checkpoints import load_alignment_checkpoint
from backend.fmbseg.loss import LossSettings
from backend.fmbseg.training import TrainingSettings
from backend.service.adapters import ClassMaskAdapter
from backend.service.config import ServiceConfig
from backend.service.hooks import TrainingRequest
from backend.service.images import ImageLimits, ImageSource
from backend.service.masks import mask_to_rle
from backend.service.retraining import retrain_fmbseg, training_vocabulary
from backend.service.segmentation_model import SegmentationMLBackend

LABEL_CONFIG = Path(__file__).resolve().parents[2].joinpath("label_config.xml").read_text()
CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="classes" toName="image" model_mode="classes">
    <Label value="Cat" model_prompt="cat"/>
    <Label value="Sky"/>
  </BrushLabels>
</View>
"""


def brush(region_id, mask, label, from_name="classes"):
    height, width = mask.shape
    return {
        "id": region_id,
        "from_name": from_name,
        "to_name": "image",
        "type": "brushlabels",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [label]},
    }


@pytest.fixture()
def project(tmp_path):
    """Two annotated images under a local-files root, as Label Studio would reference them."""
    root = tmp_path / "files"
    root.mkdir()
    records = []
    for index in range(2):
        rng = np.random.RandomState(index)
        pixels = (rng.rand(48, 64, 3) * 80).astype(np.uint8)
        pixels[:24] += 150
        Image.fromarray(pixels).save(root / f"im{index}.png")
        sky = np.zeros((48, 64), bool)
        sky[:24] = True
        results = [brush("a", ~sky, "Cat"), brush("b", sky, "Sky")]
        if index == 1:
            results.append(brush("c", sky, "Unknown label"))  # not in the config: ignored
        records.append(
            {
                "annotation": {"id": 10 + index, "result": results},
                "task": {"id": index + 1, "data": {"image": f"/data/local-files/?d=im{index}.png"}},
                "project_id": 7,
            }
        )
    return root, records


def served_model(label_config, service_config=None):
    """The model serving ``label_config`` (adapters only: nothing is predicted)."""
    service_config = service_config or ServiceConfig(model_preset="tiny")
    return SegmentationMLBackend(label_config, "7", config=service_config, runtime=None, fetcher_for=lambda: None)


def served_tags(label_config, service_config=None):
    """What serving hands retraining: the class-mask tags as the adapters resolved them."""
    model = served_model(label_config, service_config)
    return tuple(a.training_tag() for a in model.adapters if isinstance(a, ClassMaskAdapter))


def request_for(tmp_path, root, records, config=CONFIG, service_config=None):
    return TrainingRequest(
        project_id=7,
        label_config=config,
        annotations=records,
        model_dir=tmp_path / "model_dir",
        checkpoint_dir=tmp_path / "model_dir" / "checkpoints" / "fmbseg",
        preset="tiny",
        event={},
        images=ImageSource(ImageLimits(), local_files_root=root),
        class_mask_tags=served_tags(config, service_config),
    )


def test_vocabulary_uses_the_label_prompts():
    vocabulary = training_vocabulary(served_tags(CONFIG))
    assert list(vocabulary.tags) == ["classes"] and vocabulary.tags["classes"].image_key == "image"
    assert vocabulary.tags["classes"].vocabulary.label_to_prompt == {"Cat": "cat", "Sky": "Sky"}
    assert vocabulary.classes == ["cat", "Sky"]
    assert training_vocabulary(served_tags(LABEL_CONFIG)).classes  # the shipped config has a class-mask control
    with pytest.raises(ValueError, match="no class-mask control"):
        training_vocabulary(())


def test_tags_served_with_different_settings_cannot_share_one_module():
    config = """
<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="animals" toName="image" model_mode="classes"><Label value="cat"/></BrushLabels>
  <BrushLabels name="scenery" toName="image" model_mode="classes" model_settings='{"dinov2_image_size": 98}'>
    <Label value="sky"/>
  </BrushLabels>
</View>"""
    tags = served_tags(config)
    assert [tag.from_name for tag in tags] == ["animals", "scenery"]
    with pytest.raises(ValueError, match="different FMbSeg settings.*dinov2_image_size"):
        training_vocabulary(tags)
    same = training_vocabulary(served_tags(config.replace(" model_settings='{\"dinov2_image_size\": 98}'", "")))
    assert same.classes == ["cat", "sky"]


def test_training_and_serving_use_one_vocabulary_and_one_set_of_settings(tmp_path, project):
    """A skipped label, a duplicate prompt, an operator setting and a tag setting: the checkpoint's
    classes and feature settings are exactly those /predict asks for."""
    root, records = project
    config = """
<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="classes" toName="image" model_mode="classes" model_settings='{"dinov2_image_size": 98}'>
    <Label value="Cat" model_prompt="cat"/>
    <Label value="Kitty" model_prompt="cat"/>
    <Label value="Sky"/>
    <Label value="Dog" model_skip="true"/>
  </BrushLabels>
</View>"""
    for record in records:  # a human also drew a "Dog" (skipped) and a "Kitty" (same prompt as Cat)
        record["annotation"]["result"].append(brush("d", np.ones((48, 64), bool), "Dog"))
        record["annotation"]["result"].append(brush("k", np.ones((48, 64), bool), "Kitty"))
    service_config = ServiceConfig(model_preset="tiny", fmbseg_settings={"prompt_template": "a photo of the {}"})
    summary = retrain_fmbseg(
        request_for(tmp_path, root, records, config, service_config), training_settings=TrainingSettings(epochs=1)
    )
    (adapter,) = served_model(config, service_config).adapters
    checkpoint = load_alignment_checkpoint(Path(summary["checkpoint"]))
    assert list(checkpoint.classes) == adapter.classes == ["cat", "Sky"]
    assert "Dog" not in summary["classes"] and summary["regions"] == 4  # Cat and Sky on 2 images
    assert checkpoint.method_settings == adapter.settings.to_dict()
    assert checkpoint.method_settings["dinov2_image_size"] == 98
    assert checkpoint.method_settings["prompt_template"] == "a photo of the {}"
    assert checkpoint.method_settings["clip_image_size"] == 128  # the tiny preset's


def test_retraining_writes_a_served_checkpoint(tmp_path, project):
    root, records = project
    request = request_for(tmp_path, root, records)
    summary = retrain_fmbseg(request, training_settings=TrainingSettings(epochs=2))
    assert summary["images"] == 2 and summary["regions"] == 4 and summary["classes"] == ["cat", "Sky"]
    checkpoint_path = Path(summary["checkpoint"])
    assert checkpoint_path.parent == request.checkpoint_dir and checkpoint_path.exists()
    assert not list((request.model_dir / "training").glob("*.safetensors")), "the work file was moved, not copied"
    checkpoint = load_alignment_checkpoint(checkpoint_path)
    assert list(checkpoint.classes) == ["cat", "Sky"] and checkpoint.epochs_completed == 2
    assert len(summary["loss_per_epoch"]) == 2


def test_a_crash_during_training_keeps_the_previous_checkpoint(tmp_path, project, monkeypatch):
    root, records = project
    request = request_for(tmp_path, root, records)
    first = Path(retrain_fmbseg(request, training_settings=TrainingSettings(epochs=1))["checkpoint"])

    import backend.fmbseg.pipeline as pipeline

    def crash(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(pipeline, "train_alignment_module", crash)
    with pytest.raises(RuntimeError, match="out of memory"):
        retrain_fmbseg(request, training_settings=TrainingSettings(epochs=1))
    assert sorted(request.checkpoint_dir.iterdir()) == [first]


def test_unreachable_images_are_skipped_and_reported(tmp_path, project):
    root, records = project
    records[0]["task"]["data"]["image"] = "/data/local-files/?d=missing.png"
    summary = retrain_fmbseg(request_for(tmp_path, root, records), training_settings=TrainingSettings(epochs=1))
    assert summary["images"] == 1 and len(summary["skipped_tasks"]) == 1
    for record in records:
        record["task"]["data"]["image"] = "/data/local-files/?d=missing.png"
    with pytest.raises(ValueError, match="no human class masks"):
        retrain_fmbseg(request_for(tmp_path, root, records), training_settings=TrainingSettings(epochs=1))


def test_no_label_config_or_images_is_a_clear_error(tmp_path, project):
    root, records = project
    request = request_for(tmp_path, root, records)
    with pytest.raises(ValueError, match="without a label config"):
        retrain_fmbseg(TrainingRequest(**{**request.__dict__, "label_config": None}))
    with pytest.raises(ValueError, match="LABEL_STUDIO_URL"):
        retrain_fmbseg(TrainingRequest(**{**request.__dict__, "images": None}))


def test_from_env_registers_retraining_by_default():
    from backend.service.config import ServiceConfig

    assert ServiceConfig.from_env({}).training_hook == "backend.service.retraining:retrain_fmbseg"
    assert ServiceConfig.from_env({"TRAINING_HOOK": "none"}).training_hook is None


def many_tasks(tmp_path, count=12):
    """``count`` annotated images: sky (bright) on top, cat (dark) below, each a little different."""
    root = tmp_path / "many"
    root.mkdir()
    records = []
    for index in range(count):
        rng = np.random.RandomState(100 + index)
        pixels = (rng.rand(48, 64, 3) * 60).astype(np.uint8)
        split = 20 + index % 8
        pixels[:split] += 180
        Image.fromarray(pixels).save(root / f"im{index}.png")
        sky = np.zeros((48, 64), bool)
        sky[:split] = True
        records.append(
            {
                "annotation": {"id": 100 + index, "result": [brush("a", ~sky, "Cat"), brush("b", sky, "Sky")]},
                "task": {"id": 500 + index, "data": {"image": f"/data/local-files/?d=im{index}.png"}},
                "project_id": 7,
            }
        )
    return root, records


def test_a_retrain_made_worse_on_purpose_is_refused(tmp_path):
    from backend.service.retraining import is_held_out

    root, records = many_tasks(tmp_path)
    held = [r["task"]["id"] for r in records if is_held_out(r["task"]["id"])]
    assert 0 < len(held) < len(records)  # the guard has tasks to judge on and tasks to train on
    request = request_for(tmp_path, root, records)
    # the service's loss (the balanced terms: docs/fmbseg-stage2.md), long enough to learn the halves
    settings = TrainingSettings(epochs=15, loss=LossSettings(balance_terms=True))
    good = retrain_fmbseg(request, training_settings=settings)
    assert good["guard"]["served"] and good["checkpoint"] is not None
    assert good["held_out_images"] == len(held) and good["images"] == len(records) - len(held)
    assert good["guard"]["serving"].startswith("FMbSeg Stage 1")  # judged against what was served
    first = sorted(request.checkpoint_dir.iterdir())

    # the annotators of the training tasks swapped the labels; the held-out tasks stay right
    for record in records:
        if record["task"]["id"] not in held:
            for item in record["annotation"]["result"]:
                item["value"]["brushlabels"] = ["Sky" if item["value"]["brushlabels"] == ["Cat"] else "Cat"]
    bad = retrain_fmbseg(request, training_settings=settings)
    guard = bad["guard"]
    assert guard["served"] is False and bad["checkpoint"] is None
    assert guard["miou_new"] < guard["miou_serving"] and guard["serving"] == first[0].name
    assert "lower than the serving module's" in guard["reason"]
    assert sorted(request.checkpoint_dir.iterdir()) == first  # the good module stays in service
    assert not list((request.model_dir / "training").glob("*.safetensors"))  # the refused one is gone


def test_few_corrections_train_unguarded(tmp_path, project):
    root, records = project  # two tasks
    summary = retrain_fmbseg(request_for(tmp_path, root, records), training_settings=TrainingSettings(epochs=1))
    assert summary["guard"]["served"] and "unguarded" in summary["guard"]["reason"]
    assert summary["held_out_images"] == 0 and summary["images"] == 2
