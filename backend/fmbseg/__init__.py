"""FMbSeg (Seifi et al.): annotation-free semantic segmentation with vision foundation models.

Library code: no Label Studio, no web framework. Entry points:

    FMbSegPredictor(models, settings, checkpoint).predict(image, classes) -> ClassMaskPrediction
    python -m backend.fmbseg pseudo-label | train | predict

The names below are imported on first use (PEP 562), so that ``backend.fmbseg.results`` and
``backend.fmbseg.settings`` load without torch: the service's HTTP process never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.lazy import lazy_exports

if TYPE_CHECKING:
    from .pipeline import FMbSegPredictor
    from .results import ClassMaskPrediction, LabelledMask
    from .settings import FMbSegSettings

_SUBMODULE = {  # exported name -> the submodule defining it
    "ClassMaskPrediction": "results",
    "FMbSegPredictor": "pipeline",
    "FMbSegSettings": "settings",
    "LabelledMask": "results",
}
__all__ = ["ClassMaskPrediction", "FMbSegPredictor", "FMbSegSettings", "LabelledMask"]

__getattr__, __dir__ = lazy_exports(__name__, _SUBMODULE)
