"""One interface for turning CLIP segment embeddings into words (zero-guidance paper, section 3.3).

A :class:`Captioner` receives ``K`` unit-norm CLIP embeddings (one per segment) and returns one
:class:`Caption` per embedding. Two generators stand behind it:

- ``"zerocap"``: ZeroCap as the paper used it (GPT-2 steered by CLIP at every token; a GPU method);
- ``"retrieval"``: the fast default, the nearest phrase of a built-in vocabulary.

``build_captioner(name, models, **settings)`` builds either from the foundation models
(``models.clip`` and, for ZeroCap, ``models.language``) and the generator's settings fields.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["CAPTIONER_NAMES", "Caption", "Captioner", "build_captioner", "check_embeddings"]

CAPTIONER_NAMES = ("retrieval", "zerocap")
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
    """Names CLIP embeddings with words. Subclasses set ``name`` and implement :meth:`caption`."""

    name: str = ""

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


def build_captioner(name: str, models: Any, settings: Any = None, **overrides: Any) -> Captioner:
    """Build a captioner by name.

    Args:
        name: ``"retrieval"`` or ``"zerocap"``.
        models: the foundation models: ``models.clip`` (a ``ClipModel``: ``.model`` open_clip CLIP,
            ``.tokenizer``, ``.device``) and, for ZeroCap, ``models.language`` (a ``LanguageModel``).
            Attributes are read only when needed, so lazily loaded models stay unloaded.
        settings: a ready ``RetrievalSettings`` / ``ZeroCapSettings``; default: the paper's.
        **overrides: settings fields to change, e.g. ``beam_size=3`` or ``cache_dir="/tmp/x"``.

    Raises:
        ValueError: unknown name, unknown settings field, or settings of the wrong kind.
    """
    from backend.zeroguide.captioning.retrieval import RetrievalCaptioner, RetrievalSettings
    from backend.zeroguide.captioning.zerocap import ZeroCapCaptioner, ZeroCapSettings

    registry = {"retrieval": RetrievalSettings, "zerocap": ZeroCapSettings}
    if name not in registry:
        raise ValueError(f"Unknown captioner {name!r}; choose one of {', '.join(CAPTIONER_NAMES)}.")
    settings_class = registry[name]
    if settings is None:
        settings = settings_class()
    elif not isinstance(settings, settings_class):
        raise ValueError(f"Captioner {name!r} takes {settings_class.__name__}, got {type(settings).__name__}")
    valid = {f.name for f in dataclasses.fields(settings_class)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(
            f"Unknown {settings_class.__name__} field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(valid))}"
        )
    settings = dataclasses.replace(settings, **overrides)
    if name == "retrieval":
        return RetrievalCaptioner(models.clip, settings)
    return ZeroCapCaptioner(models.clip, models.language, settings)
