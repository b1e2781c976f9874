"""CLIP's text tower for many short texts: trimmed sequences and an exact prefix key/value cache.

Both captioners embed thousands of short texts with the text tower of an open_clip ``CLIP``:
the retrieval vocabulary once, ZeroCap's candidate texts 512 at a time per beam and iteration.
Two exact savings (same numbers as ``CLIP.encode_text`` up to float rounding):

1. **Trimming.** The tower is causal and pools the end-of-text (EOT) token, so padding after the
   EOT never reaches the pooled feature: texts are batched by their exact token count and run at
   that length, not at the 77-token context length.
2. **Prefix key/value cache.** ZeroCap's candidate texts are one prefix ("Image of a dog on")
   followed by one GPT-2 token each. The prefix's keys and values are computed once per layer and
   only each candidate's tail (its own tokens and the EOT) runs through the tower, attending to
   the cached prefix. CLIP's BPE works word by word, so a candidate that continues the prefix's
   last word without a space ("a" + "n" = "an") changes that word's tokens: each candidate shares
   the cache only up to the longest common prefix of its own tokens and the prefix's tokens (the
   last whole word at worst), and re-encodes the rest. The keys and values at a position depend
   only on the tokens up to it, so any shared length is exact. Tails of all beams run as one
   batch through the linear layers; attention reads each beam's cached keys and values in place.

Only open_clip's ``CLIP`` with its built-in text transformer is supported (all presets here);
``CustomTextCLIP`` (Hugging Face text towers) is rejected with a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from backend.models.segment_attention import merge_heads, project_heads

__all__ = ["ClipTextEncoder", "PrefixState"]

DEFAULT_BATCH_SIZE = 256


@dataclass(frozen=True)
class PrefixState:
    """Cached keys and values of one prefix text in every text-tower layer.

    Attributes:
        token_ids: the prefix's CLIP tokens, start-of-text first, no end-of-text.
        keys, values: per layer, ``(heads, P, head_dim)`` with ``P = len(token_ids)``.
    """

    token_ids: tuple[int, ...]
    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]


class ClipTextEncoder:
    """Unit-norm CLIP text embeddings from an open_clip ``CLIP`` and its tokenizer.

    Args:
        clip_model: an ``open_clip.model.CLIP`` (its text tower is used, read-only).
        tokenizer: the matching open_clip tokenizer: ``tokenizer(list[str]) -> (n, context_length)``
            token ids with the end-of-text token the largest id of each row (CLIP's convention).

    Raises:
        ValueError: the model has no built-in CLIP text transformer, or pools other than at the EOT.
    """

    def __init__(self, clip_model: torch.nn.Module, tokenizer) -> None:
        required = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
        missing = [name for name in required if getattr(clip_model, name, None) is None]
        if missing:
            raise ValueError(
                f"{type(clip_model).__name__} has no built-in CLIP text tower (missing {', '.join(missing)}); "
                "only open_clip's CLIP class is supported."
            )
        pool_type = getattr(clip_model, "text_pool_type", "argmax")
        if pool_type not in ("argmax", "eos"):
            raise ValueError(f"CLIP text pooling {pool_type!r} is not supported; expected 'argmax' (pool at EOT).")
        self.model = clip_model
        self.tokenizer = tokenizer
        self.context_length = int(clip_model.positional_embedding.shape[0])
        self._blocks = list(clip_model.transformer.resblocks)
        self._batch_first = getattr(clip_model.transformer, "batch_first", True)

    @property
    def device(self) -> torch.device:
        return self.model.positional_embedding.device

    @property
    def supports_prefix_cache(self) -> bool:
        """Whether every block is open_clip's plain ``ResidualAttentionBlock`` (what the cache re-implements)."""
        return all(
            isinstance(getattr(block, "attn", None), torch.nn.MultiheadAttention)
            and not hasattr(block, "ln_1_kv")
            and getattr(block.attn, "batch_first", True)
            for block in self._blocks
        )

    # ----------------------------------------------------------------------------------------
    # Tokens
    # ----------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """CLIP tokens of each text, start-of-text to end-of-text inclusive, no padding.

        Truncation to the context length is the tokenizer's own (open_clip keeps 76 tokens + EOT).
        """
        if len(texts) == 0:
            return []
        padded = self.tokenizer(list(texts))
        ends = padded.argmax(dim=-1)  # EOT is the largest id of each row, as CLIP's pooling assumes
        return [row[: int(end) + 1].tolist() for row, end in zip(padded, ends)]

    # ----------------------------------------------------------------------------------------
    # Plain path (trimmed)
    # ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE) -> Tensor:
        """Embed texts with sequences trimmed to each batch's longest text.

        Texts are batched by token count, so no batch carries padding.

        Returns:
            ``(n, D)`` float32 unit-norm embeddings, in the order of ``texts``.
        """
        return self.encode_tokens(self.tokenize(texts), batch_size=batch_size)

    @torch.no_grad()
    def encode_tokens(self, token_lists: Sequence[Sequence[int]], batch_size: int = DEFAULT_BATCH_SIZE) -> Tensor:
        """Embed token lists (start-of-text ... end-of-text), batched by exact length (no padding).

        Returns:
            ``(n, D)`` float32 unit-norm embeddings.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        out = torch.empty(len(token_lists), self.embed_dim, dtype=torch.float32, device=self.device)
        for batch in _batches_by_key([len(tokens) for tokens in token_lists], batch_size):
            out[batch] = self._encode_trimmed([token_lists[index] for index in batch])
        return out

    @property
    def embed_dim(self) -> int:
        projection = self.model.text_projection
        if isinstance(projection, torch.nn.Linear):
            return projection.out_features
        return int(projection.shape[-1])

    def _encode_trimmed(self, token_lists: Sequence[Sequence[int]]) -> Tensor:
        length = max(len(tokens) for tokens in token_lists)
        if length > self.context_length:
            raise ValueError(f"A text has {length} tokens, more than CLIP's context length {self.context_length}.")
        ids = torch.zeros(len(token_lists), length, dtype=torch.long, device=self.device)
        for row, tokens in enumerate(token_lists):
            ids[row, : len(tokens)] = torch.as_tensor(tokens, dtype=torch.long)
        eot_positions = torch.as_tensor([len(tokens) - 1 for tokens in token_lists], device=self.device)
        model = self.model
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(ids).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
        # Causal mask trimmed to the sequence: positions after the EOT never reach it.
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot_positions]
        return self._project(pooled)

    def _project(self, pooled: Tensor) -> Tensor:
        projection = self.model.text_projection
        features = projection(pooled) if isinstance(projection, torch.nn.Linear) else pooled @ projection
        return F.normalize(features.float(), dim=-1)

    # ----------------------------------------------------------------------------------------
    # Prefix key/value cache
    # ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def prefix_state(self, prefix: str) -> PrefixState:
        """Keys and values of ``prefix``'s tokens (start-of-text included, end-of-text excluded)."""
        if not self.supports_prefix_cache:
            raise ValueError("This CLIP text tower uses custom attention blocks; the prefix cache needs plain ones.")
        token_ids = self.tokenize([prefix])[0][:-1]  # drop the EOT
        ids = torch.as_tensor([token_ids], dtype=torch.long, device=self.device)
        model = self.model
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(ids).to(cast_dtype) + model.positional_embedding[: ids.shape[1]].to(cast_dtype)
        keys, values = [], []
        for block in self._blocks:
            x, block_keys, block_values = _block_forward_prefix(block, x)
            keys.append(block_keys[0])
            values.append(block_values[0])
        return PrefixState(tuple(token_ids), tuple(keys), tuple(values))

    @torch.no_grad()
    def encode_continuations(
        self,
        prefixes: Sequence[PrefixState],
        prefix_index: Sequence[int],
        texts: Sequence[str],
        batch_size: int = 1024,
    ) -> Tensor:
        """Embed ``texts[i]``, a continuation of the prefix ``prefixes[prefix_index[i]]``, reusing its cache.

        ``texts[i]`` is the full text (prefix text + continuation). Its tokens are compared with the
        prefix's: the common leading tokens come from the cache, the rest runs through the tower.
        Any text is encoded exactly, even one that does not start with its prefix (it then shares
        only the start-of-text token).

        Returns:
            ``(n, D)`` float32 unit-norm embeddings, equal to :meth:`encode` up to float rounding.
        """
        if len(prefix_index) != len(texts):
            raise ValueError(f"prefix_index has {len(prefix_index)} entries for {len(texts)} texts")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        token_lists = self.tokenize(texts)
        shared = [
            _common_prefix_length(prefixes[row].token_ids, tokens) for row, tokens in zip(prefix_index, token_lists)
        ]
        out = torch.empty(len(texts), self.embed_dim, dtype=torch.float32, device=self.device)
        # Batches of equal tail length (no padding), sorted by prefix inside a batch.
        tail_lengths = [len(tokens) - length for tokens, length in zip(token_lists, shared)]
        for batch in _batches_by_key(tail_lengths, batch_size, secondary=list(prefix_index)):
            out[batch] = self._encode_tails(
                prefixes,
                [prefix_index[index] for index in batch],
                [shared[index] for index in batch],
                [token_lists[index][shared[index] :] for index in batch],
            )
        return out

    def _encode_tails(
        self,
        prefixes: Sequence[PrefixState],
        rows: list[int],
        shared: list[int],
        tails: list[list[int]],
    ) -> Tensor:
        """Tails of one length, grouped by prefix (``rows`` sorted): linear layers run on the whole
        batch, attention per prefix group against that prefix's cached keys and values (no copies)."""
        device = self.device
        model = self.model
        cast_dtype = model.transformer.get_cast_dtype()
        ids = torch.as_tensor(tails, dtype=torch.long, device=device)  # (n, T)
        count, tail_length = ids.shape
        shared_t = torch.as_tensor(shared, dtype=torch.long, device=device)
        positions = shared_t[:, None] + torch.arange(tail_length, device=device)[None, :]
        x = model.token_embedding(ids).to(cast_dtype) + model.positional_embedding[positions].to(cast_dtype)
        groups = []  # (prefix, start, stop) of consecutive candidates with the same prefix
        start = 0
        for index in range(1, count + 1):
            if index == count or rows[index] != rows[start]:
                groups.append((prefixes[rows[start]], start, index))
                start = index
        for layer, block in enumerate(self._blocks):
            cached = [(prefix.keys[layer], prefix.values[layer], start, stop) for prefix, start, stop in groups]
            x = _block_forward_cached(block, x, cached, shared_t)
        x = model.ln_final(x)
        return self._project(x[:, -1])  # every tail ends with its EOT


def _batches_by_key(keys: Sequence[int], batch_size: int, secondary: Sequence[int] | None = None) -> list[list[int]]:
    """Indices grouped by equal ``keys`` (sorted by ``secondary`` inside a group), in chunks of ``batch_size``."""
    groups: dict[int, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    batches = []
    for key in sorted(groups):
        members = groups[key]
        if secondary is not None:
            members = sorted(members, key=lambda index: secondary[index])
        batches.extend(members[start : start + batch_size] for start in range(0, len(members), batch_size))
    return batches


def _common_prefix_length(prefix: Sequence[int], tokens: Sequence[int]) -> int:
    """Number of leading tokens shared by ``prefix`` and ``tokens``, leaving at least the EOT to encode."""
    limit = min(len(prefix), len(tokens) - 1)
    length = 0
    while length < limit and prefix[length] == tokens[length]:
        length += 1
    return length


def _block_forward_prefix(block: torch.nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """open_clip ``ResidualAttentionBlock.forward`` (causal), also returning the block's keys and values.

    x: ``(n, T, width)``. Returns the new x and keys/values ``(n, heads, T, head_dim)``.
    """
    attention = block.attn
    query, key, value = project_heads(attention, block.ln_1(x))
    attended = F.scaled_dot_product_attention(query, key, value, is_causal=True)
    attended = attention.out_proj(merge_heads(attended))
    x = x + block.ls_1(attended)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, key, value


def _block_forward_cached(
    block: torch.nn.Module,
    x: Tensor,
    groups: list[tuple[Tensor, Tensor, int, int]],
    shared: Tensor,
) -> Tensor:
    """open_clip ``ResidualAttentionBlock.forward`` for tails that continue cached prefixes.

    x: ``(n, T, width)`` tail tokens; groups: ``(keys, values, start, stop)`` with the prefix's
    cached ``(heads, P, head_dim)`` keys and values for the rows ``start:stop`` of x; shared:
    ``(n,)`` how many leading prefix positions each row may attend to (its common prefix length).
    softmax over [prefix keys < shared, tail keys causal], computed without copying the prefix cache.
    """
    attention = block.attn
    length = x.shape[1]
    query, key, value = project_heads(attention, block.ln_1(x))
    query = query * query.shape[-1] ** -0.5
    causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
    tail_scores = (query @ key.transpose(-1, -2)).masked_fill(~causal, float("-inf"))  # (n, H, T, T)
    outputs = []
    for prefix_keys, prefix_values, start, stop in groups:
        prefix_scores = torch.einsum("nhtd,hpd->nhtp", query[start:stop], prefix_keys)
        visible = torch.arange(prefix_keys.shape[1], device=x.device)[None, :] < shared[start:stop, None]
        prefix_scores = prefix_scores.masked_fill(~visible[:, None, None, :], float("-inf"))
        weights = torch.cat([prefix_scores, tail_scores[start:stop]], dim=-1).softmax(dim=-1)
        prefix_weights, tail_weights = weights.split([prefix_keys.shape[1], length], dim=-1)
        outputs.append(torch.einsum("nhtp,hpd->nhtd", prefix_weights, prefix_values) + tail_weights @ value[start:stop])
    attended = merge_heads(torch.cat(outputs))
    x = x + block.ls_1(attention.out_proj(attended))
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x
