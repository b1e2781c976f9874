"""What zero-guidance segmentation returns: numpy arrays and plain values, no torch.

The service's model process builds these and pickles them to its HTTP process, which never imports
torch; so this module imports neither torch nor the models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .settings import ZeroGuideSettings

__all__ = ["Segment", "ZeroGuidanceResult"]


@dataclass
class Segment:
    """One output segment.

    Attributes:
        mask: (H, W) bool at the image's resolution.
        text: its free-text name (section 3.3).
        embedding: (D,) float32 unit-norm CLIP embedding of the segment (section 3.2), a numpy array.
        text_score: CLIP cosine similarity between the segment embedding and the CLIP text
            embedding of ``text``, in [-1, 1].
        merge_score: the section 3.4 score of the merge that formed it (mean of the visual and
            the text cosine similarities of the two merged siblings); ``None`` if never merged.
            Not on the same scale as ``text_score``: do not compare or mix the two.
        node_id: its node in the clustering tree.
    """

    mask: np.ndarray
    text: str
    embedding: np.ndarray
    text_score: float
    merge_score: float | None
    node_id: int

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass
class ZeroGuidanceResult:
    """Segments that partition the image (every pixel in exactly one), and how they were made."""

    segments: list[Segment]
    image_size: tuple[int, int]
    settings: ZeroGuideSettings
    model_version: str
    preset: str
    random_weights: bool
    timings: dict[str, float] = field(default_factory=dict)
    candidates: int = 0

    def label_map(self) -> np.ndarray:
        """(H, W) int: index of each pixel's segment."""
        label_map = np.full(self.image_size, -1, dtype=np.int64)
        for index, segment in enumerate(self.segments):
            label_map[segment.mask] = index
        return label_map

    def to_json(self, image_name: str, embeddings: bool = False) -> dict:
        """The prediction file of ``python -m backend.zeroguide`` (read by ``backend.evaluation``);
        ``embeddings``: with each segment's CLIP embedding (what ST reassignment needs)."""
        from ..outputs import encode_rle

        return {
            "image": image_name,
            "image_size": list(self.image_size),
            "preset": self.preset,
            "random_weights": self.random_weights,
            "model_version": self.model_version,
            "settings": self.settings.to_dict(),
            "timings_s": self.timings,
            "candidates": self.candidates,
            "segments": [
                {
                    "id": index,
                    "text": segment.text,
                    "text_score": segment.text_score,
                    "merge_score": segment.merge_score,
                    "node_id": segment.node_id,
                    "area": segment.area,
                    "mask_rle": encode_rle(segment.mask),
                    **({"embedding": [float(v) for v in segment.embedding]} if embeddings else {}),
                }
                for index, segment in enumerate(self.segments)
            ],
        }
