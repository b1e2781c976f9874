"""CLIP's text tower for many short texts: trimmed sequences and an exact prefix key/value cache.

Both captioners embed thousands of short texts with the text tower of an open_clip ``CLIP``:
the retrieval vocabulary once, ZeroCap's candidate texts 512 at a time per beam and iteration.
Two exact savings (same numbers as ``CLIP.encode_text`` up to float rounding):

1. **Trimming.** The tower is causal and pools the end-of-text (EOT) token, so padding after the
   EOT never reaches the pooled feature: sequences run at the length of the longest text in the
   batch, not at the 77-token context length.
2. **Prefix key/value cache.** ZeroCap's candidate texts are one prefix ("Image of a dog on")
   followed by one GPT-2 token each. The prefix's keys and values are computed once per layer and
   only each candidate's tail (its own tokens and the EOT) runs through the tower, attending to
   the cached prefix. CLIP's BPE works word by word, so a candidate that continues the prefix's
   last word without a space ("a" + "n" = "an") changes that word's tokens: each candidate shares
   the cache only up to the longest common prefix of its own tokens and the prefix's tokens (the
   last whole word at worst), and re-encodes the rest. The keys and values at a position depend
   only on the tokens up to it, so any shared length is exact.

Only open_clip's ``CLIP`` with its built-in text transformer is supported (all presets here);
``CustomTextCLIP`` (Hugging Face text towers) is rejected with a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

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

        Texts are sorted by token count so each batch trims to a similar length.

        Returns:
            ``(n, D)`` float32 unit-norm embeddings, in the order of ``texts``.
        """
        return self.encode_tokens(self.tokenize(texts), batch_size=batch_size)

    @torch.no_grad()
    def encode_tokens(self, token_lists: Sequence[Sequence[int]], batch_size: int = DEFAULT_BATCH_SIZE) -> Tensor:
        """Embed token lists (start-of-text ... end-of-text) trimmed to each batch's longest one.

        Returns:
            ``(n, D)`` float32 unit-norm embeddings.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        count = len(token_lists)
        out = torch.empty(count, self.embed_dim, dtype=torch.float32, device=self.device)
        if count == 0:
            return out
        order = sorted(range(count), key=lambda index: len(token_lists[index]))
        for start in range(0, count, batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self._encode_trimmed([token_lists[index] for index in chunk])
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
        length = ids.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=self.device).tril()
        keys, values = [], []
        for block in self._blocks:
            x, block_keys, block_values = _block_forward(block, x, None, None, causal[None, None])
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
        if len(texts) == 0:
            return out
        # Group by tail length so padding stays small.
        order = sorted(range(len(texts)), key=lambda index: len(token_lists[index]) - shared[index])
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self._encode_tails(
                prefixes,
                [prefix_index[index] for index in chunk],
                [shared[index] for index in chunk],
                [token_lists[index][shared[index] :] for index in chunk],
            )
        return out

    def _encode_tails(
        self,
        prefixes: Sequence[PrefixState],
        rows: list[int],
        shared: list[int],
        tails: list[list[int]],
    ) -> Tensor:
        device = self.device
        model = self.model
        cast_dtype = model.transformer.get_cast_dtype()
        count = len(tails)
        tail_length = max(len(tail) for tail in tails)
        longest_prefix = max(len(prefixes[row].token_ids) for row in set(rows))

        ids = torch.zeros(count, tail_length, dtype=torch.long, device=device)
        for index, tail in enumerate(tails):
            ids[index, : len(tail)] = torch.as_tensor(tail, dtype=torch.long)
        shared_t = torch.as_tensor(shared, dtype=torch.long, device=device)
        offsets = torch.arange(tail_length, device=device)
        # Real tokens sit at shared + offset < context length (the tokenizer truncates); only
        # padding can run past it, and padding never reaches an EOT.
        positions = (shared_t[:, None] + offsets[None, :]).clamp(max=self.context_length - 1)
        x = model.token_embedding(ids).to(cast_dtype) + model.positional_embedding[positions].to(cast_dtype)

        # Attention mask (True = attend): cached prefix positions j < shared[i], then causal in the tail.
        prefix_visible = torch.arange(longest_prefix, device=device)[None, :] < shared_t[:, None]  # (n, P)
        tail_causal = torch.ones(tail_length, tail_length, dtype=torch.bool, device=device).tril()  # (T, T)
        mask = torch.cat(
            [prefix_visible[:, None, :].expand(count, tail_length, longest_prefix), tail_causal.expand(count, -1, -1)],
            dim=-1,
        )[:, None]  # (n, 1, T, P + T)

        distinct_rows = sorted(set(rows))
        row_slot = {row: slot for slot, row in enumerate(distinct_rows)}
        gather = torch.as_tensor([row_slot[row] for row in rows], dtype=torch.long, device=device)
        for layer, block in enumerate(self._blocks):
            past_keys = _stack_padded([prefixes[row].keys[layer] for row in distinct_rows], longest_prefix)
            past_values = _stack_padded([prefixes[row].values[layer] for row in distinct_rows], longest_prefix)
            x, _, _ = _block_forward(block, x, past_keys[gather], past_values[gather], mask)
        x = model.ln_final(x)
        eot_positions = torch.as_tensor([len(tail) - 1 for tail in tails], device=device)
        pooled = x[torch.arange(count, device=device), eot_positions]
        return self._project(pooled)


def _common_prefix_length(prefix: Sequence[int], tokens: Sequence[int]) -> int:
    """Number of leading tokens shared by ``prefix`` and ``tokens``, leaving at least the EOT to encode."""
    limit = min(len(prefix), len(tokens) - 1)
    length = 0
    while length < limit and prefix[length] == tokens[length]:
        length += 1
    return length


def _stack_padded(tensors: list[Tensor], length: int) -> Tensor:
    """Stack ``(heads, P_i, head_dim)`` tensors into ``(n, heads, length, head_dim)``, zero-padded."""
    heads, _, head_dim = tensors[0].shape
    out = tensors[0].new_zeros(len(tensors), heads, length, head_dim)
    for index, tensor in enumerate(tensors):
        out[index, :, : tensor.shape[1]] = tensor
    return out


def _block_forward(
    block: torch.nn.Module,
    x: Tensor,
    past_keys: Tensor | None,
    past_values: Tensor | None,
    mask: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """open_clip ``ResidualAttentionBlock.forward`` with keys and values from a cache prepended.

    x: ``(n, T, width)``; past_keys/values: ``(n, heads, P, head_dim)`` or None; mask: boolean,
    broadcastable to ``(n, heads, T, P + T)``, True where attention is allowed.

    Returns:
        new x ``(n, T, width)``, and this block's keys and values for the T new tokens
        ``(n, heads, T, head_dim)``.
    """
    attention = block.attn
    heads = attention.num_heads
    count, length, width = x.shape
    head_dim = width // heads
    hidden = block.ln_1(x)
    query, key, value = F.linear(hidden, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)

    def split_heads(tensor: Tensor) -> Tensor:
        return tensor.reshape(count, length, heads, head_dim).transpose(1, 2)

    query, key, value = split_heads(query), split_heads(key), split_heads(value)
    all_keys = key if past_keys is None else torch.cat([past_keys, key], dim=2)
    all_values = value if past_values is None else torch.cat([past_values, value], dim=2)
    attended = F.scaled_dot_product_attention(query, all_keys, all_values, attn_mask=mask)
    attended = attention.out_proj(attended.transpose(1, 2).reshape(count, length, width))
    x = x + block.ls_1(attended)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, key, value
