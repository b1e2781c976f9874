"""Every setting of interactive (click) segmentation. No torch: the service checks them first."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import MethodSettings, tunable

__all__ = ["ClickSettings", "SAM_PRECISIONS"]

SAM_PRECISIONS = ("auto", "float32", "bfloat16")
MIB = 1024 * 1024


@dataclass(frozen=True)
class ClickSettings(MethodSettings):
    """Settings of :class:`~backend.interactive.pipeline.ClickSegmenter`.

    SAM (Kirillov et al., 2023):
        multimask_output: ask SAM's prompt decoder for its three masks and keep the one with the
            highest predicted IoU (SAM's advice for a single, ambiguous click); ``False``: its
            single-mask output.
        sam_precision: the precision of SAM's image encoder, run once per image: ``"float32"``;
            ``"bfloat16"`` (autocast: matrix products in bfloat16, normalisations in float32);
            ``"auto"``: bfloat16 where the processor computes it natively (AVX512-BF16 or AMX on
            a CPU, a CUDA device with bfloat16), else float32. The prompt decoder always runs
            in float32.

    The embedding cache (per model process, shared by every project; the operator's only):
        embedding_cache_entries: images whose SAM image embedding (and CLIP prefix) are kept;
            0 keeps none.
        embedding_cache_bytes: the most bytes those embeddings may take together; the least
            recently used image is evicted first.

    A project's ``model_settings`` may set the fields marked ``tunable``; the cache's bounds
    (memory of the shared model process) only the operator (``CLICK_SETTINGS``).
    """

    multimask_output: bool = tunable(True)
    sam_precision: str = tunable("auto", choices=SAM_PRECISIONS)
    embedding_cache_entries: int = 16
    embedding_cache_bytes: int = 256 * MIB

    def __post_init__(self) -> None:
        if self.sam_precision not in SAM_PRECISIONS:
            raise ValueError(f"sam_precision must be one of {', '.join(SAM_PRECISIONS)}, got {self.sam_precision!r}")
        for name in ("embedding_cache_entries", "embedding_cache_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
