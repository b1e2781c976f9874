"""Self-attention, softmax(q k^T / sqrt(d)) v, at its fastest on each device and dtype.

On a CPU in bfloat16 PyTorch's fused kernel (``F.scaled_dot_product_attention``) does not multiply
bfloat16 natively, and the plain path (q k^T for every query at once) writes a (heads, N, N) score
tensor that leaves the cache: 22 MB a block for DINOv2 ViT-S/14 at 518 px (1,370 tokens).
:func:`attention` takes the plain path one block of queries at a time instead, so that each block's
scores stay in cache: DINOv2 ViT-S/14 at 518 px ran in 0.38 s against 0.45 s fused and 0.51 s
plain (AVX-512-BF16, 2 threads, medians of 12 interleaved runs). Everywhere else (float32, CUDA)
the fused kernel is the fastest and is used.

:class:`QueryBlockedAttention` puts :func:`attention` into timm's ViT attention
(:func:`use_query_blocked_attention`); the FMbSeg alignment module calls :func:`attention` itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention

__all__ = ["QUERY_BLOCK", "attention", "QueryBlockedAttention", "use_query_blocked_attention"]

QUERY_BLOCK = 256  # queries a block: 6 heads x 256 x 1,370 bfloat16 scores = 4 MB (measured flat from 128 to 512)


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, query_block: int = QUERY_BLOCK):
    """softmax(q k^T / sqrt(d)) v for (B, heads, N, d) queries, keys and values -> (B, heads, N, d).

    bfloat16 on a CPU: the products in bfloat16, the softmax with float32 statistics (PyTorch's
    CPU kernel), ``query_block`` queries at a time. Otherwise PyTorch's fused kernel.
    """
    if not (query.dtype == torch.bfloat16 and query.device.type == "cpu"):
        return F.scaled_dot_product_attention(query, key, value)
    scale = query.shape[-1] ** -0.5
    keys_transposed = key.transpose(-2, -1).contiguous()
    value = value.contiguous()
    out = torch.empty_like(query, memory_format=torch.contiguous_format)
    for start in range(0, query.shape[-2], query_block):
        rows = slice(start, start + query_block)
        scores = torch.matmul(query[..., rows, :] * scale, keys_transposed)
        out[..., rows, :] = torch.matmul(torch.softmax(scores, dim=-1), value)
    return out


class QueryBlockedAttention(Attention):
    """timm's ViT ``Attention`` with :func:`attention` at its core, the same numbers otherwise.

    Falls back to timm's own forward for what it does not cover (an attention mask, causal
    attention, a gate, training).
    """

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        if attn_mask is not None or is_causal or self.training or getattr(self, "gate", None) is not None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        query, key = self.q_norm(query), self.k_norm(key)
        x = attention(query, key, value).transpose(1, 2).reshape(batch, tokens, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(x)))


def use_query_blocked_attention(model: torch.nn.Module) -> int:
    """Give every timm ``Attention`` of ``model`` the forward of :class:`QueryBlockedAttention`.

    Only modules of exactly timm's class are switched (a subclass may compute differently).
    Returns how many were switched.
    """
    switched = 0
    for module in model.modules():
        if type(module) is Attention:
            module.__class__ = QueryBlockedAttention
            switched += 1
    return switched
