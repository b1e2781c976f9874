"""Foundation models (CLIP, DINO, DINOv2, SAM, GPT-2, Sentence-BERT), built in one place from a preset.

Names are imported on first use (PEP 562), so ``backend.models.presets`` and
``backend.models.settings`` can be read without importing torch.
"""

from __future__ import annotations

from backend.lazy import lazy_exports

_EXPORTS = {
    "PRESETS": "presets",
    "Preset": "presets",
    "get_preset": "presets",
    "list_presets": "presets",
    "FoundationModels": "registry",
    "load_models": "registry",
    "resolve_device": "registry",
    "resolve_dtype": "precision",
    "DTYPE_CHOICES": "precision",
    "MissingWeightsError": "weights",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
