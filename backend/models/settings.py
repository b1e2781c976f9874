"""Settings of the segment-aware CLIP encodings that the methods embed in their own settings.

Torch-free (the service's HTTP process checks them); :mod:`backend.models.clip` implements them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..settings import tunable

__all__ = ["SegmentEncoding", "DenseClipSettings"]


@dataclass(frozen=True)
class SegmentEncoding:
    """How a segment is encoded into CLIP's joint space (zero-guidance section 3.2).

    Attributes:
        method: ``"attention"`` (masked attention in the last blocks, the paper's method) or
            ``"crop"`` (the crop-and-mask baseline of the ablation, Table 3).
        masked_layers: number of final blocks whose attention is masked. The paper masks layers
            21-24 of ViT-L/14's 24, i.e. the last 4 (appendix E, Fig. 14). Project bound: 1-48.
        subtract_global: global subtraction (Eqs. 2-4); ``False`` is the "w/o globsub." ablation.
        sigma_squared: σ^2 of Eq. 4, w = exp(-(S+1)^2 / 2σ^2); the paper's 2.5 (appendix E,
            Fig. 15). Project bound: 0.01-100.
    """

    method: Literal["attention", "crop"] = tunable("attention", choices=("attention", "crop"))
    masked_layers: int = tunable(4, minimum=1, maximum=48)
    subtract_global: bool = tunable(True)
    sigma_squared: float = tunable(2.5, minimum=0.01, maximum=100.0)

    def __post_init__(self) -> None:
        if self.method not in ("attention", "crop"):
            raise ValueError(f"method must be 'attention' or 'crop', got {self.method!r}")
        if self.masked_layers < 1:
            raise ValueError(f"masked_layers must be at least 1, got {self.masked_layers}")
        if self.sigma_squared <= 0:
            raise ValueError(f"sigma_squared must be positive, got {self.sigma_squared}")


@dataclass(frozen=True)
class DenseClipSettings:
    """High-resolution CLIP patch features (FMbSeg section 3.2.1, appendix 1.1).

    Attributes:
        image_size: side of the oversampled image; cut into non-overlapping crops of CLIP's input
            size. The paper's 1344 gives 16 crops of 336 and a 96x96 map on ViT-L/14@336.
        last_block: how patch tokens pass the last block (appendix 1.1.1). ``"value"``: the value
            path of its attention (each token attends to itself, as in MaskCLIP), the residual,
            no MLP; ``"skip"``: the last block is left out entirely.
    """

    image_size: int = 1344
    last_block: Literal["value", "skip"] = "value"

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.last_block not in ("value", "skip"):
            raise ValueError(f"last_block must be 'value' or 'skip', got {self.last_block!r}")
