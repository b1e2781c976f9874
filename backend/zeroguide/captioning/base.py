"""One interface for turning CLIP segment embeddings into words (zero-guidance paper, section 3.3).

A :class:`Captioner` receives ``K`` unit-norm CLIP embeddings (one per segment) and returns one
:class:`Caption` per embedding. Each captioner is built from the foundation models and its
settings by :meth:`Captioner.from_models`; ``registry.py`` names the captioners and
``registry.build_captioner(name, models, settings)`` builds one by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from backend.zeroguide.captioning.settings import CaptionerSettings

__all__ = ["Caption", "Captioner", "check_embeddings"]

UNIT_NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Caption:
    """The words chosen for one embedding.

    Attributes:
        text: the label, e.g. ``"sandy beach"`` or ``"dog running on the grass"``.
        clip_score: cosine similarity between the target embedding and CLIP's embedding of
            ``scored_text``.
        scored_text: the text CLIP embedded for the score (the label inside its prompt, e.g.
            ``"a photo of a sandy beach."`` or ``"Image of a dog running on the grass."``).
        alternatives: the other candidates, best first, as ``(label, clip_score)`` pairs
            (retrieval: the next nearest phrases; ZeroCap: the other beams).
        embedding: ``(D,)`` unit-norm CLIP text embedding behind ``clip_score``; the merging step
            (section 3.4) compares these between segments.
    """

    text: str
    clip_score: float
    scored_text: str
    alternatives: tuple[tuple[str, float], ...] = ()
    embedding: Tensor | None = field(default=None, repr=False, compare=False)


class Captioner(ABC):
    """Names CLIP embeddings with words.

    Subclasses set ``name``, implement :meth:`caption` and :meth:`from_models`, and get one entry
    in ``registry.CAPTIONERS``.
    """

    name: str = ""

    @classmethod
    @abstractmethod
    def from_models(cls, models: Any, settings: CaptionerSettings) -> Captioner:
        """Build the captioner on the foundation models it needs.

        Args:
            models: the foundation models (``FoundationModels``: ``models.clip``, ``models.language``, ...);
                read only the attributes this captioner needs, so lazily loaded models stay unloaded.
            settings: an instance of this captioner's settings class (``registry.settings_class(name)``).
        """

    def warm_up(self) -> None:
        """Pay one-off costs now rather than on the first caption (default: nothing to pay)."""

    @abstractmethod
    def caption(self, embeddings: Tensor) -> list[Caption]:
        """One caption per embedding.

        Args:
            embeddings: ``(K, D)`` unit-norm CLIP embeddings (segment or image embeddings in the
                joint space of the CLIP model the captioner was built with).

        Returns:
            ``K`` captions, in the order of the rows.
        """


def check_embeddings(embeddings: Tensor, dim: int) -> Tensor:
    """Validate ``(K, D)`` unit-norm embeddings and return them as float32 (detached copy).

    Raises:
        ValueError: wrong type, shape or dimension, non-finite values, or rows that are not unit norm.
    """
    if not isinstance(embeddings, Tensor):
        raise ValueError(f"embeddings must be a torch.Tensor of shape (K, {dim}), got {type(embeddings).__name__}")
    if embeddings.ndim != 2 or embeddings.shape[1] != dim:
        raise ValueError(
            f"embeddings must have shape (K, {dim}) for this CLIP model, got {tuple(embeddings.shape)}"
            + (" (use embeddings[None] for a single embedding)" if embeddings.ndim == 1 else "")
        )
    embeddings = embeddings.detach().float().clone()
    if not torch.isfinite(embeddings).all():
        raise ValueError("embeddings contain NaN or infinite values")
    norms = embeddings.norm(dim=-1)
    if embeddings.shape[0] and (norms - 1).abs().max() > UNIT_NORM_TOLERANCE:
        raise ValueError(
            f"embeddings must be unit norm (rows have norms {norms.min():.4f} to {norms.max():.4f}); "
            "normalise them with torch.nn.functional.normalize(embeddings, dim=-1)"
        )
    return embeddings
