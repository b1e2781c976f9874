"""Foundation models (CLIP, DINO, DINOv2, SAM, GPT-2, Sentence-BERT), built in one place from a preset."""

from .registry import PRESETS, FoundationModels, Preset, get_preset, list_presets, load_models, resolve_device
from .weights import MissingWeightsError

__all__ = [
    "PRESETS",
    "FoundationModels",
    "MissingWeightsError",
    "Preset",
    "get_preset",
    "list_presets",
    "load_models",
    "resolve_device",
]
