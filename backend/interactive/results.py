"""What interactive segmentation returns: numpy arrays and plain values, no torch.

The service's model process builds a :class:`ClickResult` and pickles it to the HTTP process, which
never imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ClickResult"]


@dataclass
class ClickResult:
    """One object, from the annotator's clicks (or box).

    Attributes:
        mask: (H, W) bool at the image's resolution: SAM's most confident mask for the prompts.
        text: its free-text name (the zero-guidance captioner on the segment's CLIP embedding).
        text_score: CLIP cosine similarity between the segment's embedding and ``text``'s, in [-1, 1].
        sam_score: SAM's predicted IoU of ``mask`` (its confidence).
        class_name: the nearest of the given classes (cosine similarity between the segment's
            embedding and each class prompt's text embedding); ``None`` when no class was given.
        class_score: softmax over the classes of those similarities at CLIP's logit scale, for
            ``class_name``, in [0, 1]; ``None`` when no class was given.
        cached: whether SAM's image embedding came from the cache (a further click on the image).
        timings: seconds per stage (``sam_image``, ``sam_prompt``, ``clip_prefix``, ``describe``, ``classes``).
    """

    mask: np.ndarray
    text: str
    text_score: float
    sam_score: float
    class_name: str | None = None
    class_score: float | None = None
    cached: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.mask.ndim != 2:
            raise ValueError(f"mask must be (H, W), got shape {self.mask.shape}")
        self.text = str(self.text)
        self.text_score = _finite(self.text_score, "text_score")
        self.sam_score = _finite(self.sam_score, "sam_score")
        if (self.class_name is None) != (self.class_score is None):
            raise ValueError("class_name and class_score go together: both or neither")
        if self.class_name is not None:
            self.class_name = str(self.class_name)
            self.class_score = _finite(self.class_score, "class_score")
            if not 0.0 <= self.class_score <= 1.0:
                raise ValueError(f"class_score must be in [0, 1], got {self.class_score}")
        self.cached = bool(self.cached)
        self.timings = {str(k): float(v) for k, v in dict(self.timings).items()}

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def _finite(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value
