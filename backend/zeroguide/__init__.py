"""Zero-guidance segmentation (Rewatbowornwong et al., ICCV 2023): segments named in free text.

Library code: no Label Studio, no web framework. Entry points:

    ZeroGuidanceSegmenter(models, settings).segment(image) -> ZeroGuidanceResult
    python -m backend.zeroguide IMAGE... --preset cpu --out DIR

The names below are imported on first use (PEP 562): ``backend.zeroguide.results`` (the result
types) and ``backend.zeroguide.captioning.settings`` / ``.registry`` import without torch; only
``ZeroGuidanceSegmenter`` (``pipeline.py``) brings in torch and the models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.lazy import lazy_exports

if TYPE_CHECKING:
    from .pipeline import ZeroGuidanceSegmenter
    from .results import Segment, ZeroGuidanceResult
    from .settings import ZeroGuideSettings

_EXPORTS = {
    "Segment": "results",
    "ZeroGuidanceResult": "results",
    "ZeroGuidanceSegmenter": "pipeline",
    "ZeroGuideSettings": "settings",
}

__all__ = ["Segment", "ZeroGuidanceResult", "ZeroGuidanceSegmenter", "ZeroGuideSettings"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
