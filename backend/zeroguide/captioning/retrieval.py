"""Fast captioner: the nearest phrase of a built-in vocabulary in CLIP's joint space.

Every phrase of the vocabulary (``vocabulary.txt``: about 2,800 object, stuff, part and scene
phrases from public segmentation and detection class lists plus composed attribute phrases such
as "sandy beach" and "crowd observing") is put in each prompt template ("a photo of a {}."),
embedded once by CLIP's text tower in batches (the template's words before the phrase through the
exact prefix cache of ``clip_text.py``), averaged over templates and renormalised (CLIP's prompt
ensembling). A segment is then named by one matrix product: the phrase whose embedding
has the largest cosine similarity with the segment embedding.

The vocabulary embeddings are cached on disk per model when a cache folder is given: the file name
holds a fingerprint of the CLIP text tower's weights and a hash of the vocabulary and templates,
so a different model, vocabulary or template never reads a stale file. Writes are atomic.

This is not in the zero-guidance paper (which uses ZeroCap, see ``zerocap.py``); it answers in
milliseconds per segment on a CPU where ZeroCap needs minutes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from backend.zeroguide.captioning.base import Caption, Captioner, check_embeddings
from backend.zeroguide.captioning.clip_text import ClipTextEncoder
from backend.zeroguide.captioning.settings import RetrievalSettings

__all__ = ["DEFAULT_VOCABULARY", "RetrievalCaptioner", "RetrievalSettings", "load_vocabulary"]

logger = logging.getLogger(__name__)

DEFAULT_VOCABULARY = Path(__file__).with_name("vocabulary.txt")
CACHE_FORMAT_VERSION = "1"


def load_vocabulary(path: str | Path | None = None) -> tuple[str, ...]:
    """Phrases of a vocabulary file (one a line; blank lines and ``#`` comments skipped), deduplicated in order.

    Raises:
        ValueError: the file does not exist or holds no phrase.
    """
    path = Path(path) if path is not None else DEFAULT_VOCABULARY
    if not path.is_file():
        raise ValueError(f"Vocabulary file {path} does not exist")
    phrases: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        phrase = line.strip()
        if phrase and not phrase.startswith("#"):
            phrases.setdefault(phrase, None)
    if not phrases:
        raise ValueError(f"Vocabulary file {path} holds no phrase")
    return tuple(phrases)


class RetrievalCaptioner(Captioner):
    """Names each embedding with the nearest vocabulary phrase.

    Args:
        clip: a ``ClipModel`` (``.model``: open_clip CLIP, ``.tokenizer``); optional ``.name`` is
            added to the cache file name.
        settings: :class:`RetrievalSettings`.
    """

    name = "retrieval"

    def __init__(self, clip: Any, settings: RetrievalSettings = RetrievalSettings()) -> None:
        self.clip = clip
        self.settings = settings
        self.vocabulary = load_vocabulary(settings.vocabulary_file)
        self._encoder = ClipTextEncoder(clip.model, clip.tokenizer)
        self._embeddings: Tensor | None = None

    @classmethod
    def from_models(cls, models: Any, settings: RetrievalSettings) -> RetrievalCaptioner:
        """Built on ``models.clip``."""
        return cls(models.clip, settings)

    # ------------------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Embed (or load from the cache) the whole vocabulary now."""
        self.vocabulary_embeddings

    @property
    def vocabulary_embeddings(self) -> Tensor:
        """``(V, D)`` unit-norm embeddings of the vocabulary (computed or read from the cache on first use)."""
        if self._embeddings is None:
            self._embeddings = self._load_or_embed()
        return self._embeddings

    def caption(self, embeddings: Tensor) -> list[Caption]:
        """Nearest phrase per row of ``embeddings`` ``(K, D)``; ``clip_score`` is the cosine similarity."""
        vocabulary_embeddings = self.vocabulary_embeddings
        targets = check_embeddings(embeddings, vocabulary_embeddings.shape[1]).to(vocabulary_embeddings.device)
        similarities = targets @ vocabulary_embeddings.T  # (K, V) cosine similarities
        count = min(1 + self.settings.alternatives, len(self.vocabulary))
        scores, indices = similarities.topk(count, dim=-1)
        template = self.settings.prompt_templates[0]
        captions = []
        for row_scores, row_indices in zip(scores.tolist(), indices.tolist()):
            best = row_indices[0]
            captions.append(
                Caption(
                    text=self.vocabulary[best],
                    clip_score=row_scores[0],
                    scored_text=template.format(self.vocabulary[best]),
                    alternatives=tuple(
                        (self.vocabulary[index], score) for index, score in zip(row_indices[1:], row_scores[1:])
                    ),
                    embedding=vocabulary_embeddings[best].clone(),
                )
            )
        return captions

    # ------------------------------------------------------------------------------------------
    def embed_phrases(self, phrases: tuple[str, ...]) -> Tensor:
        """``(n, D)`` unit-norm embeddings: the mean over prompt templates of CLIP text embeddings, renormalised.

        The template's text before the phrase ("a photo of a") is encoded once and shared through
        the exact prefix key/value cache of :class:`ClipTextEncoder`.
        """
        total = None
        for template in self.settings.prompt_templates:
            texts = [template.format(phrase) for phrase in phrases]
            prefix = template[: template.index("{}")].rstrip()
            if prefix and self._encoder.supports_prefix_cache:
                state = self._encoder.prefix_state(prefix)
                embedded = self._encoder.encode_continuations(
                    [state], [0] * len(texts), texts, self.settings.batch_size
                )
            else:
                embedded = self._encoder.encode(texts, self.settings.batch_size)
            total = embedded if total is None else total + embedded
        return torch.nn.functional.normalize(total, dim=-1)

    def cache_path(self) -> Path | None:
        """The cache file for this model, vocabulary and templates (None without a cache folder)."""
        if self.settings.cache_dir is None:
            return None
        model_name = str(getattr(self.clip, "name", "") or type(self.clip.model).__name__)
        safe_name = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in model_name)
        return Path(self.settings.cache_dir) / (
            f"retrieval-{safe_name}-{text_tower_fingerprint(self.clip.model)}-{self._content_key()}.safetensors"
        )

    def _content_key(self) -> str:
        digest = hashlib.sha256()
        for part in (CACHE_FORMAT_VERSION, *self.settings.prompt_templates, "\x00", *self.vocabulary):
            digest.update(part.encode("utf-8") + b"\n")
        return digest.hexdigest()[:16]

    def _load_or_embed(self) -> Tensor:
        path = self.cache_path()
        if path is not None and path.is_file():
            cached = self._read_cache(path)
            if cached is not None:
                return cached.to(self._encoder.device)
        embeddings = self.embed_phrases(self.vocabulary)
        if path is not None:
            _atomic_save(path, embeddings, {"content_key": self._content_key(), "phrases": str(len(self.vocabulary))})
        return embeddings

    def _read_cache(self, path: Path) -> Tensor | None:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                embeddings = handle.get_tensor("embeddings")
        except (SafetensorError, OSError, KeyError, ValueError) as error:
            logger.warning("Ignoring unreadable vocabulary cache %s: %s", path, error)
            return None
        if metadata.get("content_key") != self._content_key() or embeddings.shape[0] != len(self.vocabulary):
            logger.warning("Ignoring vocabulary cache %s: it does not match this vocabulary", path)
            return None
        return embeddings


def text_tower_fingerprint(clip_model: torch.nn.Module) -> str:
    """A short hash of the CLIP text tower's identity and weights (its small tensors), for cache keys."""
    digest = hashlib.sha256(type(clip_model).__name__.encode())
    for tensor in (
        clip_model.positional_embedding,
        clip_model.ln_final.weight,
        (
            clip_model.text_projection.weight
            if isinstance(clip_model.text_projection, torch.nn.Linear)
            else clip_model.text_projection
        ),
        clip_model.token_embedding.weight[:8],
    ):
        data = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(str(tuple(data.shape)).encode())
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()[:16]


def _atomic_save(path: Path, embeddings: Tensor, metadata: dict[str, str]) -> None:
    """Write a safetensors file through a temporary file in the same folder and an atomic rename."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(handle)
    try:
        save_file({"embeddings": embeddings.detach().to("cpu").contiguous()}, temporary, metadata=metadata)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
