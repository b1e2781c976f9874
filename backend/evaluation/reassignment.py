"""Label reassignment (zero-guidance section 4.1) and its verification (section 4.2).

A predicted segment S_i with free text T_i is relabelled with one test label T_i* of the
dataset, either from its text (TT, Eq. 5, Sentence-BERT) or from its pixels (ST, Eq. 6, CLIP).
The reassignment counts only once verified: its similarity reaches a threshold (τ_SBERT for TT,
τ_CLIP for ST, appendix C) or human raters score it at least k (section 4.2, Table 1).
Unverified segments are unlabelled.

No model is loaded here: embedding functions are passed in, e.g. Sentence-BERT's
``backend.models.sentence.load_sentence_embedder().encode`` and CLIP's ``encode_text``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np

__all__ = [
    "TAU_SBERT",
    "TAU_CLIP",
    "ST_PROMPT_TEMPLATE",
    "TEXT_TO_TEXT",
    "SEGMENT_TO_TEXT",
    "METHODS",
    "UNVERIFIED",
    "Reassignment",
    "cosine_matrix",
    "pairwise_cosine",
    "reassign_by_similarity",
    "reassign_text_to_text",
    "reassign_segment_to_text",
    "default_threshold",
    "is_verified",
    "verify_by_threshold",
    "verify_by_scores",
]

TAU_SBERT = 0.5  # τ_SBERT, appendix C: the constant threshold for text-to-text verification
TAU_CLIP = 0.1  # τ_CLIP, appendix C: the constant threshold for segment-to-text verification
# ST's text side: each test label in CLIP's text tower through this prompt (the authors' evaluation
# script, its "mini" prompt option; the paper does not say). TT encodes labels bare, as they did.
ST_PROMPT_TEMPLATE = "Image of a {}."
TEXT_TO_TEXT = "TT"  # Eq. 5
SEGMENT_TO_TEXT = "ST"  # Eq. 6
METHODS = (TEXT_TO_TEXT, SEGMENT_TO_TEXT)
UNVERIFIED = -1  # the class index of a segment whose reassignment is not verified (unlabelled)

# Cosine similarities are rounded to this many decimals, far below the thresholds' precision
# (0.05) and far above float error, so that an exact text match has similarity 1.0 and passes
# τ = 1.0 as Table 6 implies.
SIMILARITY_DECIMALS = 6

Method = Literal["TT", "ST"]
EmbedFunction = Callable[[list[str]], object]  # n strings -> (n, d) array or tensor


def _as_matrix(embeddings, what: str) -> np.ndarray:
    """(n, d) float64 from a numpy array or a torch tensor (without importing torch)."""
    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().cpu().float().numpy()
    matrix = np.asarray(embeddings, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (n, d) array, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{what} contain an all-zero vector: its cosine similarity is undefined")
    return matrix / norms


def cosine_matrix(a, b) -> np.ndarray:
    """(n, m) cosine similarities between the rows of a (n, d) and b (m, d)."""
    a, b = _as_matrix(a, "embeddings"), _as_matrix(b, "embeddings")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding sizes differ: {a.shape[1]} vs {b.shape[1]}")
    return np.round(np.clip(a @ b.T, -1.0, 1.0), SIMILARITY_DECIMALS)


def pairwise_cosine(a, b) -> np.ndarray:
    """(n,) cosine similarities between row i of a and row i of b."""
    a, b = _as_matrix(a, "embeddings"), _as_matrix(b, "embeddings")
    if a.shape != b.shape:
        raise ValueError(f"paired embeddings must have the same shape, got {a.shape} and {b.shape}")
    return np.round(np.clip((a * b).sum(axis=1), -1.0, 1.0), SIMILARITY_DECIMALS)


@dataclass(frozen=True)
class Reassignment:
    """T_i*, the test label given to one predicted segment.

    Attributes:
        label: the test label T_i*.
        label_index: its index in the test labels T_s (``LabelSpace.classes``).
        similarity: the maximal cosine similarity of Eq. 5 (SBERT) or Eq. 6 (CLIP).
        method: ``"TT"`` (text-to-text) or ``"ST"`` (segment-to-text).
    """

    label: str
    label_index: int
    similarity: float
    method: Method

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.label_index < 0:
            raise ValueError(f"label_index must be >= 0, got {self.label_index}")

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "label_index": self.label_index,
            "similarity": self.similarity,
            "method": self.method,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Reassignment":
        try:
            return cls(str(data["label"]), int(data["label_index"]), float(data["similarity"]), data["method"])
        except KeyError as error:
            raise ValueError(f"a reassignment record lacks {error}: {data}") from None


def _check_labels(test_labels: Sequence[str]) -> list[str]:
    labels = [str(t) for t in test_labels]
    if not labels:
        raise ValueError("test labels T_s must not be empty")
    if len(set(labels)) != len(labels):
        raise ValueError(f"test labels must be unique, got {labels}")
    return labels


def reassign_by_similarity(similarity: np.ndarray, test_labels: Sequence[str], method: Method) -> list[Reassignment]:
    """T_i* = argmax_t similarity[i, t] for a (K, L) similarity matrix; ties go to the first label."""
    labels = _check_labels(test_labels)
    similarity = np.asarray(similarity, dtype=np.float64)
    if similarity.ndim != 2 or similarity.shape[1] != len(labels):
        raise ValueError(f"similarity must be (K, {len(labels)}), got shape {similarity.shape}")
    best = similarity.argmax(axis=1) if similarity.shape[0] else np.zeros(0, dtype=np.int64)
    return [Reassignment(labels[j], int(j), float(similarity[i, j]), method) for i, j in enumerate(best.tolist())]


def reassign_text_to_text(
    predicted_texts: Sequence[str], test_labels: Sequence[str], embed_texts: EmbedFunction
) -> list[Reassignment]:
    """Text-to-text reassignment (TT), one per predicted text.

    Eq. 5: T_i* = argmax_{t ∈ T_s} cossim_SBERT(T_i, t)

    Args:
        predicted_texts: K predicted labels T_i.
        test_labels: the dataset's L test labels T_s.
        embed_texts: n strings -> (n, d) embeddings (Sentence-BERT's ``encode``); normalised here.
    """
    labels = _check_labels(test_labels)
    texts = [str(t) for t in predicted_texts]
    if not texts:
        return []
    return reassign_by_similarity(cosine_matrix(embed_texts(texts), embed_texts(labels)), labels, TEXT_TO_TEXT)


def reassign_segment_to_text(
    segment_embeddings, test_labels: Sequence[str], embed_labels: EmbedFunction
) -> list[Reassignment]:
    """Segment-to-text reassignment (ST), one per segment.

    Eq. 6: T_i* = argmax_{t ∈ T_s} cossim_CLIP(S_i, t), with CLIP's image encoder for S_i
    (here: the given segment embeddings) and its text encoder for t.

    Args:
        segment_embeddings: (K, D) CLIP embeddings of the segments (``ClipModel.encode_segments``).
        test_labels: the dataset's L test labels T_s.
        embed_labels: L strings -> (L, D) CLIP text embeddings (``ClipModel.encode_text``, with
            any prompt template applied by the caller).
    """
    labels = _check_labels(test_labels)
    segments = _as_matrix(segment_embeddings, "segment embeddings") if len(segment_embeddings) else None
    if segments is None:
        return []
    return reassign_by_similarity(cosine_matrix(segments, embed_labels(labels)), labels, SEGMENT_TO_TEXT)


def default_threshold(method: Method) -> float:
    """τ_SBERT for TT, τ_CLIP for ST (appendix C)."""
    if method == TEXT_TO_TEXT:
        return TAU_SBERT
    if method == SEGMENT_TO_TEXT:
        return TAU_CLIP
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def is_verified(reassignment: Reassignment, threshold: float | None = None) -> bool:
    """Section 4.2, verification by thresholding: similarity ≥ τ (τ_SBERT or τ_CLIP by default).

    The paper gives no comparison operator here; "≥" is the reading under which Table 6 reports
    a non-zero IoU at τ_SBERT = 1.0 (exact text matches, similarity 1, still pass).
    """
    tau = default_threshold(reassignment.method) if threshold is None else float(threshold)
    return reassignment.similarity >= tau


def verify_by_threshold(reassignments: Sequence[Reassignment], threshold: float | None = None) -> list[int]:
    """Per segment, its class index if verified by thresholding, else ``UNVERIFIED`` (-1)."""
    return [r.label_index if is_verified(r, threshold) else UNVERIFIED for r in reassignments]


def verify_by_scores(reassignments: Sequence[Reassignment], scores: Sequence[int | None], min_score: int) -> list[int]:
    """Section 4.2, human verification: class index if the rating h ≥ k, else ``UNVERIFIED``.

    ``scores[i]`` is the 0-3 rating of reassignment i (``None``: not rated, so not verified).
    Table 1's "h=3" is ``min_score=3``.
    """
    if len(scores) != len(reassignments):
        raise ValueError(f"{len(scores)} scores for {len(reassignments)} reassignments")
    if not 0 <= int(min_score) <= 3:
        raise ValueError(f"min_score k must be in 0..3, got {min_score}")
    return [r.label_index if h is not None and h >= min_score else UNVERIFIED for r, h in zip(reassignments, scores)]
