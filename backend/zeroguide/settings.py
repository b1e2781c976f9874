"""Every setting of zero-guidance segmentation, with the paper's value as its default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..models.settings import SegmentEncoding
from ..settings import MethodSettings, build_nested, nested, tunable
from .captioning.registry import captioner_names, captioner_settings, settings_class
from .captioning.settings import CaptionerSettings

__all__ = ["ZeroGuideSettings"]


@dataclass(frozen=True)
class ZeroGuideSettings(MethodSettings):
    """Settings of the zero-guidance pipeline (Rewatbowornwong et al., ICCV 2023).

    Segment candidates (section 3.1, appendix B):
        dino_image_size: DINO ViT-S/8's load size (the authors' code: 224): the shorter side of
            its input with ``dino_keep_aspect``, else the side of a square input.
        dino_keep_aspect: keep the image's aspect ratio for DINO, the longer side in proportion
            (the authors' code, Amir et al.'s extractor); ``False``: squash to a square.
        dino_stride: patch stride of DINO's patch embedding, smaller than the patch size for a
            dense map (section 3.1: "a small stride of two"; 224 -> 109x109 keys).
        n_clusters: n, the clusters at which the Ward tree is cut (section 3.1: 20).
        dino_similarity_threshold: T_dino; sibling clusters whose mean features have a cosine
            similarity above it are pruned into one (appendix B: 0.9).
        use_crf: refine the upsampled segment map with DenseCRF (appendix B, after Amir et al.).
        crf_at_load_size: run the CRF on the image at DINO's load size, as the authors' code does
            (its kernels are in pixels: at another resolution they mean other shapes), then bring
            its labels to the image along the image's edges (``upsample_labels_along_edges``);
            a 24 MP photo costs the CRF of a 224 px image. ``False``: the CRF at the image's own
            resolution, capped by ``crf_max_side``.
        crf_max_side: with ``crf_at_load_size=False``, the longest side at which the CRF runs
            (``None``: the image's own resolution); its labels are upsampled (nearest).
        crf_iterations, crf_gaussian_sxy, crf_gaussian_compat, crf_bilateral_sxy,
        crf_bilateral_srgb, crf_bilateral_compat: the CRF's mean-field iterations and kernels
            (the authors' code: 10; Gaussian sxy 1 / compat 25; bilateral sxy 5 / srgb 13 / compat 100).

    Segment embedding (section 3.2):
        segment_encoding: masked layers (paper: the last 4 of 24), global subtraction and
            σ^2 = 2.5 (appendix E), or the crop-and-mask baseline.

    Text (section 3.3):
        captioner: a name of the captioner registry (``backend.zeroguide.captioning.registry``):
            ``"zerocap"`` (the paper's ZeroCap: GPT-2 steered by CLIP; slow, for a GPU) or
            ``"retrieval"`` (ours: nearest phrase of a large built-in vocabulary; fast on a CPU).
        captioner_options: the captioner's settings (its settings class; a mapping of its fields
            is converted), see docs/zeroguide-captioning.md.

    A project's ``model_settings`` may set the fields marked ``tunable`` within their bounds
    (docs/service.md lists them); paths (the captioner's ``vocabulary_file``, ``cache_dir``) only
    the operator.

    Merging (section 3.4):
        merge: merge siblings up the tree (``False``: the "w/o merge" ablation of Table 3).
        merge_threshold: τ_merge; siblings merge while the mean of their visual and text cosine
            similarities is at least this (appendix E: 0.8).
    """

    dino_image_size: int = tunable(224, minimum=8, maximum=1024)
    dino_keep_aspect: bool = tunable(True)
    dino_stride: int = tunable(2, minimum=1, maximum=16)
    n_clusters: int = tunable(20, minimum=1, maximum=100)
    dino_similarity_threshold: float = tunable(0.9, minimum=-1.0, maximum=1.0)
    use_crf: bool = tunable(True)
    crf_at_load_size: bool = tunable(True)
    crf_max_side: int | None = tunable(None, minimum=16, maximum=4096, optional=True, integer=True)
    crf_iterations: int = tunable(10, minimum=1, maximum=50)
    crf_gaussian_sxy: float = tunable(1.0, minimum=0.0, maximum=1000.0)
    crf_gaussian_compat: float = tunable(25.0, minimum=0.0, maximum=1000.0)
    crf_bilateral_sxy: float = tunable(5.0, minimum=0.0, maximum=1000.0)
    crf_bilateral_srgb: float = tunable(13.0, minimum=0.0, maximum=1000.0)
    crf_bilateral_compat: float = tunable(100.0, minimum=0.0, maximum=1000.0)
    segment_encoding: SegmentEncoding = nested(SegmentEncoding)
    captioner: str = tunable("retrieval", choices=captioner_names())
    captioner_options: CaptionerSettings = nested(lambda: captioner_settings("retrieval", None))
    merge: bool = tunable(True)
    merge_threshold: float = tunable(0.8, minimum=-1.0, maximum=1.0)

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
        if self.captioner not in captioner_names():
            raise ValueError(f"captioner must be one of {', '.join(captioner_names())}, got {self.captioner!r}")
        object.__setattr__(
            self, "segment_encoding", build_nested(SegmentEncoding, self.segment_encoding, "segment_encoding")
        )
        options = self.captioner_options
        if isinstance(options, CaptionerSettings) and not isinstance(options, settings_class(self.captioner)):
            options = {}  # another captioner's defaults (e.g. "captioner" changed alone): this one's defaults
        object.__setattr__(self, "captioner_options", captioner_settings(self.captioner, options))

    @classmethod
    def nested_settings_class(cls, name: str, context: Mapping[str, Any]) -> type:
        """The settings class a nested field holds; ``captioner_options``: the chosen captioner's."""
        if name == "captioner_options":
            captioner = context.get("captioner", cls.captioner)
            if captioner not in captioner_names():
                raise ValueError(f"captioner must be one of {', '.join(captioner_names())}, got {captioner!r}")
            return settings_class(captioner)
        return SegmentEncoding
