"""FMbSeg (Seifi et al.): annotation-free semantic segmentation with vision foundation models.

Library code: no Label Studio, no web framework. Entry points:

    FMbSegPredictor(models, settings, checkpoint).predict(image, classes) -> ClassMaskPrediction
    python -m backend.fmbseg pseudo-label | train | predict
"""

from .pipeline import ClassMaskPrediction, FMbSegPredictor, LabelledMask
from .settings import FMbSegSettings

__all__ = ["ClassMaskPrediction", "FMbSegPredictor", "FMbSegSettings", "LabelledMask"]
