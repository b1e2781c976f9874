"""What crosses the service boundary: FMbSeg's masks in and class masks out.

Torch-free, numpy arrays and plain Python values only: the model work runs in a child process
and these are pickled to the service's HTTP process, which never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

__all__ = ["ClassMaskPrediction", "LabelledMask", "MaskSource", "PredictionSource"]

MaskSource = Literal["1.1", "1.2", "human"]
PredictionSource = Literal["stage1", "stage2-base", "stage2-refined"]


@dataclass
class LabelledMask:
    """A mask with a class, for training from pseudo-labels or from human corrections.

    mask: (H, W) bool at image resolution; class_name: one of the class list's names.
    ``source`` is ``"1.1"``, ``"1.2"`` (Stage 1) or ``"human"`` (a correction; trained like 1.1:
    always kept, painted on top).
    """

    mask: np.ndarray
    class_name: str
    source: MaskSource = "human"

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.mask.ndim != 2:
            raise ValueError(f"mask must be (H, W), got shape {self.mask.shape}")
        self.class_name = str(self.class_name)
        if self.source not in get_args(MaskSource):
            raise ValueError(f"source must be one of {get_args(MaskSource)}, got {self.source!r}")


@dataclass
class ClassMaskPrediction:
    """Class masks for one image.

    Attributes:
        label_map: (H, W) int64, index into ``classes``; -1 where nothing was predicted.
        classes: the class list, in label order.
        source: ``"stage1"`` (no trained alignment module yet: Stage 1 pseudo-labels),
            ``"stage2-base"`` or ``"stage2-refined"``.
        model_version: preset, settings fingerprint and alignment checkpoint version.
        random_weights: True when the foundation models have random weights (``tiny``).
        stage1_agreement: asked for (``predict(stage1_agreement=True)``) with a trained module:
            the share of the pixels both label that Stage 1's pseudo-labels and this prediction
            give the same class; else ``None``.
    """

    label_map: np.ndarray
    classes: list[str]
    source: PredictionSource
    model_version: str
    random_weights: bool
    stage1_agreement: float | None = None

    def __post_init__(self) -> None:
        self.label_map = np.asarray(self.label_map)
        if self.label_map.ndim != 2 or not np.issubdtype(self.label_map.dtype, np.integer):
            raise ValueError(f"label_map must be (H, W) int, got {self.label_map.dtype} {self.label_map.shape}")
        self.label_map = self.label_map.astype(np.int64, copy=False)
        self.classes = [str(c) for c in self.classes]
        if self.source not in get_args(PredictionSource):
            raise ValueError(f"source must be one of {get_args(PredictionSource)}, got {self.source!r}")
        self.model_version = str(self.model_version)
        self.random_weights = bool(self.random_weights)

    @property
    def class_masks(self) -> dict[str, np.ndarray]:
        """``{class: (H, W) bool}`` for every class that covers at least one pixel."""
        masks = {name: self.label_map == index for index, name in enumerate(self.classes)}
        return {name: mask for name, mask in masks.items() if mask.any()}
