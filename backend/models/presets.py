"""The registry's presets as data: which foundation models each uses, and the method settings
that suit them. Importing this module imports no torch (the service's HTTP process resolves
method settings with it); :mod:`backend.models.registry` builds the models.

Presets:
    ``paper``: the papers' models: CLIP ViT-L/14@336 (OpenAI), DINO ViT-S/8, GPT-2 medium,
        SAM ViT-H, DINOv2 ViT-L/14.
    ``cpu``: what serves a CPU user: CLIP ViT-B/16 (OpenAI), DINO ViT-S/8 at a coarser stride,
        GPT-2 (124M), SAM ViT-B, DINOv2 ViT-S/14.
    ``tiny``: the same architectures at tiny widths and depths with seeded random weights, built
        in well under a second: tests only. Everything computed with it says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["ClipSpec", "TimmSpec", "SamSpec", "Preset", "PRESETS", "list_presets", "get_preset"]


@dataclass(frozen=True)
class ClipSpec:
    """An open_clip model: architecture name and ``pretrained`` tag (None: random weights)."""

    arch: str
    pretrained: str | None
    env_var: str = "CLIP_WEIGHTS"


@dataclass(frozen=True)
class TimmSpec:
    """A timm model: ``name`` (``architecture.tag``), extra constructor arguments, weights variable."""

    name: str
    env_var: str
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SamSpec:
    """A segment-anything model: registry kind (``vit_h``, ``vit_b``, or ``tiny``) and checkpoint."""

    kind: str
    checkpoint: str | None  # canonical file name of the official checkpoint
    env_var: str = "SAM_CHECKPOINT"
    automatic_overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Preset:
    """A named choice of the five foundation models, and method settings that suit them.

    Attributes:
        name, description: what the preset is for.
        clip, dino, dinov2, sam: the vision models.
        language: GPT-2 variant for ZeroCap (``gpt2-medium``, ``gpt2``, ``tiny``).
        random_weights: True for ``tiny`` only; nothing is loaded from disk or a hub.
        method_overrides: per method (``"zeroguide"``, ``"fmbseg"``), settings fields that replace
            the papers' defaults with this preset (e.g. a coarser DINO stride on a CPU).
    """

    name: str
    description: str
    clip: ClipSpec
    dino: TimmSpec
    dinov2: TimmSpec
    sam: SamSpec
    language: str
    random_weights: bool = False
    method_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        name="paper",
        description="The papers' models (GPU): CLIP ViT-L/14@336, DINO ViT-S/8, GPT-2 medium, SAM ViT-H, DINOv2 ViT-L/14.",
        clip=ClipSpec("ViT-L-14-336-quickgelu", "openai"),
        dino=TimmSpec("vit_small_patch8_224.dino", "DINO_WEIGHTS"),
        dinov2=TimmSpec("vit_large_patch14_dinov2.lvd142m", "DINOV2_WEIGHTS"),
        sam=SamSpec("vit_h", "sam_vit_h_4b8939.pth"),
        language="gpt2-medium",
        method_overrides={
            # Section 3.3's captioner is ZeroCap (the library's default is the fast retrieval one);
            # end_factor: the value the zero-guidance authors' script passes (ZeroCap's own: 1.01).
            "zeroguide": {"captioner": "zerocap", "captioner_options": {"end_factor": 1.1}},
        },
    ),
    "cpu": Preset(
        name="cpu",
        description="Serves a CPU user: CLIP ViT-B/16, DINO ViT-S/8 (stride 6), GPT-2, SAM ViT-B, DINOv2 ViT-S/14.",
        clip=ClipSpec("ViT-B-16-quickgelu", "openai"),
        dino=TimmSpec("vit_small_patch8_224.dino", "DINO_WEIGHTS"),
        dinov2=TimmSpec("vit_small_patch14_dinov2.lvd142m", "DINOV2_WEIGHTS"),
        sam=SamSpec("vit_b", "sam_vit_b_01ec64.pth"),
        language="gpt2",
        method_overrides={
            # 37x37 DINO keys (on a square image) instead of 109x109: 0.4 s instead of tens of
            # seconds on 2 cores (bench/bench_zeroguide.py). Masked attention in the same share of
            # CLIP's depth as the paper's (the last 4 of ViT-L's 24 blocks, 1/6): the last 2 of
            # ViT-B/16's 12. The CRF at DINO's load size, as in the paper.
            "zeroguide": {"dino_stride": 6, "segment_encoding": {"masked_layers": 2}},
            # The paper's 4x4 grid of crops at CLIP's own resolution (1344 = 4 x 336 on
            # ViT-L/14@336): 4 x 224 = 896 on ViT-B/16, 16 crops, a 56x56 map; so a class needs
            # more than T = 1 of 16 crop votes, as in the paper (appendix 1.1.2-1.1.3).
            "fmbseg": {"clip_image_size": 896, "sam_points_per_side": 16},
        },
    ),
    "tiny": Preset(
        name="tiny",
        description="Tiny architectures with seeded random weights: tests only.",
        clip=ClipSpec("zg-tiny-clip", None),
        dino=TimmSpec(
            "vit_small_patch8_224", "DINO_WEIGHTS", {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 64}
        ),
        dinov2=TimmSpec(
            "vit_small_patch14_dinov2", "DINOV2_WEIGHTS", {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 112}
        ),
        sam=SamSpec("tiny", None, automatic_overrides={"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}),
        language="tiny",
        random_weights=True,
        method_overrides={
            "zeroguide": {"dino_image_size": 64, "dino_stride": 4, "n_clusters": 6},
            "fmbseg": {
                "clip_image_size": 128,
                "dinov2_image_size": 112,
                "sam_image_size": 128,
                "sam_points_per_side": 4,
            },
        },
    ),
}


def list_presets() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str | Preset) -> Preset:
    """The preset of that name; unknown names list the valid ones."""
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(list_presets())}") from None
