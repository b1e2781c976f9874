"""Attention masking with global subtraction (zero-guidance segmentation, section 3.2).

Pure tensor functions plus one function that runs an open_clip ``ResidualAttentionBlock`` with a
segment mask. Nothing here knows which model or image it is used on.

Shapes: ``K`` segments, ``L`` tokens (class token first, then the patch grid), ``C`` channels.

Precision: with bfloat16 weights, the projections run in bfloat16 but the two attentions (the
softmax with the mask's log), the saliency and the global-subtraction weights run in float32; the
result is cast back before the output projection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "project_heads",
    "merge_heads",
    "masked_softmax",
    "token_masks",
    "saliency",
    "global_subtraction_weight",
    "masked_attention_outputs",
    "run_masked_block",
]


def project_heads(
    attention: torch.nn.MultiheadAttention, hidden: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values of a packed ``nn.MultiheadAttention``, split into heads.

    Args:
        attention: the attention module (``in_proj_weight``/``in_proj_bias`` packed as q, k, v).
        hidden: (n, T, C) normalised tokens.

    Returns:
        q, k, v, each (n, heads, T, C / heads), unscaled.
    """
    count, length, channels = hidden.shape
    heads = attention.num_heads
    packed = F.linear(hidden, attention.in_proj_weight, attention.in_proj_bias)
    return tuple(t.reshape(count, length, heads, channels // heads).transpose(1, 2) for t in packed.chunk(3, dim=-1))


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(n, heads, T, d) -> (n, T, heads * d): the inverse of the split in :func:`project_heads`."""
    count, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(count, length, heads * head_dim)


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 1: MaskedSoftmax(x, M)_i = exp(x_i) M_i / sum_j exp(x_j) M_j.

    Computed as softmax(x + log M), which is the same for M in [0, 1] and numerically stable.

    Args:
        logits: (..., L) attention logits.
        mask: (..., L) weights in [0, 1], broadcastable to ``logits``; at least one positive
            entry per row.
    """
    return torch.softmax(logits + torch.log(mask.to(logits.dtype)), dim=-1)


def token_masks(masks: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """Segment masks at image resolution -> per-token key weights, class token first.

    The masks are downsampled to the patch grid by area interpolation, then a 1 is prepended for
    the global (class) token, which is never masked (section 3.2.1).

    Args:
        masks: (K, H, W) soft or hard masks in [0, 1], in the geometry of the model input.
        grid_size: (h, w) patch grid of the vision transformer.

    Returns:
        (K, 1 + h*w) float tensor.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be (K, H, W), got shape {tuple(masks.shape)}")
    grid = F.interpolate(masks[:, None].float(), size=grid_size, mode="area")[:, 0]
    ones = torch.ones(masks.shape[0], 1, dtype=grid.dtype, device=grid.device)
    return torch.cat([ones, grid.flatten(1)], dim=1)


def saliency(unmasked: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Eq. 2: S_l = 1/#tokens sum_i cossim(A_i, A_i^masked), one value per segment.

    Args:
        unmasked, masked: (K, L, C) attention outputs of the same layer.

    Returns:
        (K,) saliency values in [-1, 1].
    """
    return F.cosine_similarity(unmasked, masked, dim=-1).mean(dim=-1)


def global_subtraction_weight(saliency_values: torch.Tensor, sigma_squared: float) -> torch.Tensor:
    """Eq. 4: w = exp(-(S_l + 1)^2 / 2σ^2), largest for a segment absent from the global context."""
    return torch.exp(-((saliency_values + 1.0) ** 2) / (2.0 * sigma_squared))


def masked_attention_outputs(
    attention: torch.nn.MultiheadAttention, tokens: torch.Tensor, key_weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked and plain attention outputs of one multi-head attention, before its output projection.

    A^masked = MaskedSoftmax(Q K^T / sqrt(d_k), M) V and A = Softmax(Q K^T / sqrt(d_k)) V, computed
    from the same queries, keys and values.

    Args:
        attention: ``nn.MultiheadAttention`` with packed input projections (``batch_first``).
        tokens: (K, L, C) normalised block input, one row per segment; or (1, L, C) when every
            segment's input is the same (the first masked block): Q, K, V and A are then computed
            once.
        key_weights: (K, L) mask weights over keys (see :func:`token_masks`).

    Returns:
        (masked, unmasked): (K, L, C) and (K or 1, L, C), heads concatenated, float32 whatever the
        weights' dtype (the masked softmax is computed in float32).
    """
    q, k, v = (t.float() for t in project_heads(attention, tokens))
    # Eq. 1 as an additive mask: softmax(x + log M); -inf where M = 0 (the class token keeps rows finite).
    log_mask = torch.log(key_weights.to(q.dtype))[:, None, None, :]
    count = key_weights.shape[0]
    masked = F.scaled_dot_product_attention(*(t.expand(count, -1, -1, -1) for t in (q, k, v)), attn_mask=log_mask)
    unmasked = F.scaled_dot_product_attention(q, k, v)
    return merge_heads(masked), merge_heads(unmasked)


def run_masked_block(
    block: torch.nn.Module,
    tokens: torch.Tensor,
    key_weights: torch.Tensor,
    *,
    subtract_global: bool,
    sigma_squared: float,
    class_token_only: bool = False,
) -> torch.Tensor:
    """One open_clip ``ResidualAttentionBlock`` with masked attention and global subtraction.

    Eq. 3: A_out = A^masked - w A_0, where A_0 is the unmasked attention output of the global
    token and w comes from Eq. 4 with this layer's own saliency S_l (Eq. 2). The subtraction is
    applied to the attention output before the block's output projection.

    Args:
        block: the transformer block (``ln_1``, ``attn``, ``ls_1``, ``ln_2``, ``mlp``, ``ls_2``).
        tokens: (K, L, C) block input, one row per segment, or (1, L, C), the same for every
            segment (see :func:`masked_attention_outputs`).
        key_weights: (K, L) per-token mask weights, class token first.
        subtract_global: apply Eqs. 2-4 (off: plain masked attention, the ablation).
        sigma_squared: σ^2 of Eq. 4.
        class_token_only: return only the class token's output, (K, 1, C). Exact for the last
            block, whose other outputs are never read: the saliency still averages over every
            token's attention output, but the output projection and the MLP (most of a block's
            cost) run for the class token alone.
    """
    masked, unmasked = masked_attention_outputs(block.attn, block.ln_1(tokens), key_weights)  # float32
    if subtract_global:
        weight = global_subtraction_weight(saliency(unmasked, masked), sigma_squared)
        masked = masked - weight[:, None, None] * unmasked[:, :1, :]
    masked = masked.to(tokens.dtype)
    if class_token_only:
        tokens, masked = tokens[:, :1], masked[:, :1]
    attended = F.linear(masked, block.attn.out_proj.weight, block.attn.out_proj.bias)
    tokens = tokens + block.ls_1(attended)
    return tokens + block.ls_2(block.mlp(block.ln_2(tokens)))
