"""Interactive segmentation: a click (or a box) in, one named mask out.

Library code: no Label Studio, no web framework. Entry point:

    ClickSegmenter(models, zeroguide_settings, click_settings).segment(
        image, points, labels, box, classes, task_key) -> ClickResult

SAM's prompt decoder gives the mask (its image embedding is kept in a bounded
:class:`~backend.interactive.cache.EmbeddingCache`); zero-guidance segmentation's segment-aware
CLIP and captioner name it; the class prompts' CLIP text embeddings give the nearest class.

The names below are imported on first use (PEP 562): ``settings``, ``results`` and ``cache``
import no torch; only ``ClickSegmenter`` (``pipeline.py``) brings in torch and the models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.lazy import lazy_exports

if TYPE_CHECKING:
    from .cache import EmbeddingCache
    from .pipeline import ClickSegmenter
    from .results import ClickResult
    from .settings import ClickSettings

_EXPORTS = {
    "ClickResult": "results",
    "ClickSegmenter": "pipeline",
    "ClickSettings": "settings",
    "EmbeddingCache": "cache",
}
__all__ = ["ClickResult", "ClickSegmenter", "ClickSettings", "EmbeddingCache"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
