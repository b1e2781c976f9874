"""Every setting of zero-guidance segmentation, with the paper's value as its default."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..models.clip import SegmentEncoding
from ..settings import MethodSettings

__all__ = ["ZeroGuideSettings"]

CAPTIONERS = ("retrieval", "zerocap")


@dataclass(frozen=True)
class ZeroGuideSettings(MethodSettings):
    """Settings of the zero-guidance pipeline (Rewatbowornwong et al., ICCV 2023).

    Segment candidates (section 3.1, appendix B):
        dino_image_size: side of the square image given to DINO ViT-S/8 (the authors' code: 224).
        dino_stride: patch stride of DINO's patch embedding, smaller than the patch size for a
            dense map (section 3.1: "a small stride of two"; 224 -> 109x109 keys).
        n_clusters: n, the clusters at which the Ward tree is cut (section 3.1: 20).
        dino_similarity_threshold: T_dino; sibling clusters whose mean features have a cosine
            similarity above it are pruned into one (appendix B: 0.9).
        use_crf: refine the upsampled segment map with DenseCRF (appendix B, after Amir et al.).
        crf_max_side: longest side at which the CRF runs; ``None`` = the image's own resolution
            (the paper). The labels are upsampled (nearest) to the image afterwards.
        crf_iterations, crf_gaussian_sxy, crf_gaussian_compat, crf_bilateral_sxy,
        crf_bilateral_srgb, crf_bilateral_compat: the CRF's mean-field iterations and kernels
            (the authors' code: 10; Gaussian sxy 1 / compat 25; bilateral sxy 5 / srgb 13 / compat 100).

    Segment embedding (section 3.2):
        segment_encoding: masked layers (paper: the last 4 of 24), global subtraction and
            σ^2 = 2.5 (appendix E), or the crop-and-mask baseline.

    Text (section 3.3):
        captioner: ``"zerocap"`` (the paper's ZeroCap: GPT-2 steered by CLIP; slow, for a GPU) or
            ``"retrieval"`` (ours: nearest phrase of a large built-in vocabulary; fast on a CPU).
        captioner_options: keyword settings of the captioner (see docs/zeroguide-captioning.md).

    Merging (section 3.4):
        merge: merge siblings up the tree (``False``: the "w/o merge" ablation of Table 3).
        merge_threshold: τ_merge; siblings merge while the mean of their visual and text cosine
            similarities is at least this (appendix E: 0.8).
    """

    dino_image_size: int = 224
    dino_stride: int = 2
    n_clusters: int = 20
    dino_similarity_threshold: float = 0.9
    use_crf: bool = True
    crf_max_side: int | None = None
    crf_iterations: int = 10
    crf_gaussian_sxy: float = 1.0
    crf_gaussian_compat: float = 25.0
    crf_bilateral_sxy: float = 5.0
    crf_bilateral_srgb: float = 13.0
    crf_bilateral_compat: float = 100.0
    segment_encoding: SegmentEncoding = field(default_factory=SegmentEncoding)
    captioner: str = "retrieval"
    captioner_options: Mapping[str, Any] = field(default_factory=dict)
    merge: bool = True
    merge_threshold: float = 0.8

    def __post_init__(self) -> None:
        if self.dino_image_size < 8 or self.dino_stride < 1:
            raise ValueError("dino_image_size must be >= 8 and dino_stride >= 1")
        if self.n_clusters < 1:
            raise ValueError(f"n_clusters must be at least 1, got {self.n_clusters}")
        if not -1.0 <= self.dino_similarity_threshold <= 1.0:
            raise ValueError(f"dino_similarity_threshold must be in [-1, 1], got {self.dino_similarity_threshold}")
        if not -1.0 <= self.merge_threshold <= 1.0:
            raise ValueError(f"merge_threshold must be in [-1, 1], got {self.merge_threshold}")
        if self.crf_max_side is not None and self.crf_max_side < 16:
            raise ValueError(f"crf_max_side must be None or >= 16, got {self.crf_max_side}")
        if self.crf_iterations < 1:
            raise ValueError(f"crf_iterations must be at least 1, got {self.crf_iterations}")
        if self.captioner not in CAPTIONERS:
            raise ValueError(f"captioner must be one of {', '.join(CAPTIONERS)}, got {self.captioner!r}")
        if isinstance(self.segment_encoding, Mapping):
            object.__setattr__(self, "segment_encoding", SegmentEncoding(**self.segment_encoding))
