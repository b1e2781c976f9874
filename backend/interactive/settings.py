"""Every setting of interactive (click) segmentation. No torch: the service checks them first."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import MethodSettings, tunable

__all__ = ["ClickSettings"]

MIB = 1024 * 1024


@dataclass(frozen=True)
class ClickSettings(MethodSettings):
    """Settings of :class:`~backend.interactive.pipeline.ClickSegmenter`.

    SAM (Kirillov et al., 2023):
        multimask_output: ask SAM's prompt decoder for its three masks and keep the one with the
            highest predicted IoU (SAM's advice for a single, ambiguous click); ``False``: its
            single-mask output.

    SAM's precision is the models' (``DTYPE``): a click uses the same SAM, and the same embedding
    code, as the methods.

    The embedding cache (per model process, shared by every project; the operator's only):
        embedding_cache_entries: images whose SAM image embedding (and CLIP prefix) are kept;
            0 keeps none.
        embedding_cache_bytes: the most bytes those embeddings may take together; the least
            recently used image is evicted first.

    A project's ``model_settings`` may set the fields marked ``tunable``; the cache's bounds
    (memory of the shared model process) only the operator (``CLICK_SETTINGS``).
    """

    multimask_output: bool = tunable(True)
    embedding_cache_entries: int = 16
    embedding_cache_bytes: int = 256 * MIB

    def __post_init__(self) -> None:
        for name in ("embedding_cache_entries", "embedding_cache_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
