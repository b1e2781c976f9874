"""The one place where foundation models are built: a small registry of named presets.

A preset is data: which architecture and weights each of the five foundation models uses, plus
the method settings that suit it (feature resolutions a CPU can afford, say). ``load_models``
returns a :class:`FoundationModels` whose members load lazily, once per process.

    >>> models = load_models("tiny")        # nothing is built yet
    >>> models.clip.encode_text(["a cat"])  # builds CLIP now

The presets themselves are data in :mod:`backend.models.presets`.

Precision: every vision model (CLIP, DINO, DINOv2, SAM) and the FMbSeg alignment module compute in
``FoundationModels.dtype``, from the ``DTYPE`` setting (:mod:`backend.models.precision`: ``auto``
picks bfloat16 on hardware that multiplies it natively, float32 elsewhere). Their weights are cast
once; what they return is float32.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import torch

from .attention import use_query_blocked_attention
from .precision import dtype_name, resolve_dtype
from .presets import PRESETS, ClipSpec, Preset, SamSpec, TimmSpec, get_preset, list_presets
from .weights import (
    SAM_CHECKPOINTS,
    MissingWeightsError,
    fetch_checkpoint,
    go_offline_unless_hub_answers,
    local_weights_path,
    weights_dir,
)

__all__ = [
    "ClipSpec",
    "TimmSpec",
    "SamSpec",
    "Preset",
    "PRESETS",
    "list_presets",
    "get_preset",
    "resolve_device",
    "resolve_dtype",
    "FoundationModels",
    "load_models",
]

_CONFIG_DIR = Path(__file__).with_name("configs")
TINY_SEED = 0


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, else the ``DEVICE`` environment variable, else CUDA when present, else CPU."""
    choice = device or os.environ.get("DEVICE", "").strip() or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


class _seeded:
    """Seed torch's global generator inside the block and restore it after (tiny weights)."""

    def __init__(self, seed: int | None):
        self.seed = seed

    def __enter__(self):
        if self.seed is not None:
            self._fork = torch.random.fork_rng(devices=[])
            self._fork.__enter__()
            torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        if self.seed is not None:
            self._fork.__exit__(*exc)


# ------------------------------------------------------------------------------ builders
def _build_clip(spec: ClipSpec, device: torch.device, random_weights: bool = False, dtype: torch.dtype = torch.float32):
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    from .clip import ClipModel

    if spec.arch not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)
    description = f"CLIP {spec.arch}" + (f" ({spec.pretrained})" if spec.pretrained else "")
    pretrained = None
    if spec.pretrained is not None and not random_weights:
        path = local_weights_path(spec.env_var, description, f"open_clip weights for {spec.arch}")
        pretrained = str(path) if path else spec.pretrained
        if path is None:
            go_offline_unless_hub_answers()
    try:
        model = open_clip.create_model(spec.arch, pretrained=pretrained, device=device)
    except Exception as error:  # a hub that cannot be reached, a corrupt file, ...
        expected = (
            f"open_clip pretrained={pretrained!r} (a file such as open_clip_pytorch_model.bin or the tag's download)"
        )
        raise MissingWeightsError(description, expected, spec.env_var, cause=str(error)) from error
    mean = getattr(model.visual, "image_mean", None) or OPENAI_DATASET_MEAN
    std = getattr(model.visual, "image_std", None) or OPENAI_DATASET_STD
    name = f"{spec.arch}:{pretrained and spec.pretrained or 'random'}"
    return ClipModel(model.to(dtype), open_clip.get_tokenizer(spec.arch), name=name, mean=mean, std=std)


def _build_timm(
    spec: TimmSpec, device: torch.device, random_weights: bool, dtype: torch.dtype = torch.float32, **extra
):
    import timm

    kwargs: dict[str, Any] = {"num_classes": 0, **extra, **spec.overrides}
    pretrained = not random_weights
    if pretrained:
        path = local_weights_path(spec.env_var, f"timm {spec.name}", "a timm checkpoint file")
        if path is not None:
            kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        else:
            go_offline_unless_hub_answers()
    try:
        model = timm.create_model(spec.name, pretrained=pretrained, **kwargs)
    except Exception as error:
        expected = f"timm weights for {spec.name} (Hugging Face hub id timm/{spec.name}, or a local file)"
        raise MissingWeightsError(f"timm {spec.name}", expected, spec.env_var, cause=str(error)) from error
    model = model.to(device=device, dtype=dtype).eval()
    if dtype == torch.bfloat16 and device.type == "cpu":
        use_query_blocked_attention(model)  # attention a block of queries at a time (.attention)
    return model


def _build_sam(spec: SamSpec, device: torch.device, random_weights: bool = False, dtype: torch.dtype = torch.float32):
    from segment_anything import sam_model_registry

    from .sam import SamModels, build_tiny_sam

    if spec.kind == "tiny":
        overrides = dict(spec.automatic_overrides)
        return SamModels(build_tiny_sam().to(device), name="sam:tiny", automatic_overrides=overrides, dtype=dtype)
    if random_weights:
        model = sam_model_registry[spec.kind](checkpoint=None)
        return SamModels(model.to(device).eval(), name=f"sam:{spec.kind}:random", dtype=dtype)

    description = f"SAM {spec.kind}"
    path = local_weights_path(spec.env_var, description, spec.checkpoint or "a SAM checkpoint")
    checkpoint_file = weights_dir() / str(spec.checkpoint)
    if path is None and checkpoint_file.is_file():
        path = checkpoint_file
    if path is None and spec.checkpoint in SAM_CHECKPOINTS and go_offline_unless_hub_answers():
        # segment-anything has no download of its own: the official file, its SHA-256 checked
        path = fetch_checkpoint(spec.checkpoint, weights_dir(), SAM_CHECKPOINTS[spec.checkpoint], spec.env_var)
    if path is None:
        raise MissingWeightsError(description, f"the checkpoint file {spec.checkpoint}", spec.env_var)
    model = sam_model_registry[spec.kind](checkpoint=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as error:
        raise MissingWeightsError(
            description, f"a valid {spec.checkpoint} at {path}", spec.env_var, cause=str(error)
        ) from error
    overrides = dict(spec.automatic_overrides)
    return SamModels(model.to(device).eval(), name=f"sam:{spec.kind}", automatic_overrides=overrides, dtype=dtype)


class FoundationModels:
    """The five foundation models of one preset, each built on first use (thread-safe).

    Attributes are properties: ``clip``, ``dino``, ``dinov2``, ``sam``, ``language``, ``sentence``.

    Args:
        preset: a preset name or record.
        device: torch device (default: ``resolve_device()``).
        random_weights: build the preset's architectures with random weights (benchmarks measure
            the real models' cost this way); default: only for ``tiny``.
        dtype: what the vision models and the alignment module compute in: ``"auto"``,
            ``"float32"``, ``"bfloat16"`` or a ``torch.dtype``; default: the ``DTYPE`` environment
            variable, else ``auto`` (:func:`backend.models.precision.resolve_dtype`).
    """

    def __init__(
        self,
        preset: str | Preset,
        device: str | torch.device | None = None,
        random_weights: bool | None = None,
        dtype: str | torch.dtype | None = None,
    ):
        self.preset = get_preset(preset)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.random_weights = self.preset.random_weights if random_weights is None else random_weights
        self._built: dict[str, Any] = {}
        self._lock = threading.RLock()

    @property
    def dtype_name(self) -> str:
        """``"float32"`` or ``"bfloat16"``."""
        return dtype_name(self.dtype)

    @property
    def is_tiny(self) -> bool:
        return self.preset.random_weights

    def _get(self, part: str, build) -> Any:
        with self._lock:
            if part not in self._built:
                # A part is often first used inside a caller's inference_mode; built there, its
                # weights would be inference tensors, unusable by any later autograd use.
                with _seeded(TINY_SEED if self.random_weights else None), torch.inference_mode(False):
                    self._built[part] = build()
            return self._built[part]

    def loaded(self) -> list[str]:
        """Names of the parts built so far."""
        with self._lock:
            return sorted(self._built)

    @property
    def clip(self):
        return self._get("clip", lambda: _build_clip(self.preset.clip, self.device, self.random_weights, self.dtype))

    @property
    def dino(self):
        from .dino import DinoKeyExtractor

        spec = self.preset.dino
        build = lambda: DinoKeyExtractor(  # noqa: E731
            _build_timm(spec, self.device, self.random_weights, self.dtype), spec.name
        )
        return self._get("dino", build)

    @property
    def dinov2(self):
        from .dino import Dinov2Extractor

        spec = self.preset.dinov2
        build = lambda: Dinov2Extractor(  # noqa: E731
            _build_timm(spec, self.device, self.random_weights, self.dtype, dynamic_img_size=True), spec.name
        )
        return self._get("dinov2", build)

    @property
    def sam(self):
        return self._get("sam", lambda: _build_sam(self.preset.sam, self.device, self.random_weights, self.dtype))

    @property
    def language(self):
        from .language import build_language_model

        if self.random_weights and not self.is_tiny:
            raise ValueError("GPT-2 cannot be built with random weights outside the tiny preset (no tokenizer offline)")
        return self._get("language", lambda: build_language_model(self.preset.language, device=self.device))

    @property
    def sentence(self):
        from .sentence import load_sentence_embedder

        return self._get("sentence", lambda: load_sentence_embedder(device="cpu"))

    def load(self, parts: tuple[str, ...] = ("clip", "dino", "dinov2", "sam")) -> "FoundationModels":
        """Build the named parts now (e.g. in a background thread at service start)."""
        for part in parts:
            getattr(self, part)
        return self

    def method_overrides(self, method: str) -> dict[str, Any]:
        """This preset's settings overrides for ``method`` (``"zeroguide"`` or ``"fmbseg"``)."""
        return dict(self.preset.method_overrides.get(method, {}))


_LOADED: dict[tuple[str, str, str], FoundationModels] = {}
_LOADED_LOCK = threading.Lock()


def load_models(
    preset: str | Preset = "cpu", device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> FoundationModels:
    """The process-wide :class:`FoundationModels` for ``preset`` on ``device`` in ``dtype`` (built lazily).

    ``dtype`` ``None`` reads the ``DTYPE`` environment variable (``auto`` when unset).
    """
    resolved = get_preset(preset)
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    key = (resolved.name, str(resolved_device), dtype_name(resolved_dtype))
    with _LOADED_LOCK:
        if key not in _LOADED:
            _LOADED[key] = FoundationModels(resolved, key[1], dtype=resolved_dtype)
        return _LOADED[key]
