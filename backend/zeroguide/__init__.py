"""Zero-guidance segmentation (Rewatbowornwong et al., ICCV 2023): segments named in free text.

Library code: no Label Studio, no web framework. Entry points:

    ZeroGuidanceSegmenter(models, settings).segment(image) -> ZeroGuidanceResult
    python -m backend.zeroguide IMAGE... --preset cpu --out DIR
"""

from .pipeline import Segment, ZeroGuidanceResult, ZeroGuidanceSegmenter
from .settings import ZeroGuideSettings

__all__ = ["Segment", "ZeroGuidanceResult", "ZeroGuidanceSegmenter", "ZeroGuideSettings"]
