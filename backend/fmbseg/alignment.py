"""The Stage-2 alignment module M (section 3.3 "Training the alignment module", section 4.4.2).

M maps frozen DINOv2 patch features x (B, N, C_in) to z = M(x) (B, N, D) in CLIP's text space,
unit-normalised. Three designs (Table 3, left):

- ``"transformer"`` (the paper's): ONE pre-norm transformer block over the image's patches
  (x + MHSA(LN(x)), then + MLP(LN(.)) with GELU), followed by a linear projection C_in -> D.
  Self-attention lets each patch attend to the other patches of the same image; no text
  cross-attention (section 3.3). No positional embedding is added: DINOv2 features already carry
  position, and the module stays resolution-agnostic (ours).
- ``"mlp"``: Linear(C_in, hidden) -> GELU -> Linear(hidden, D), applied to each patch.
- ``"linear"``: Linear(C_in, D), applied to each patch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..models.attention import attention

ALIGNMENT_KINDS = ("transformer", "mlp", "linear")


@dataclass(frozen=True)
class AlignmentModuleConfig:
    """What is needed to rebuild an alignment module (stored in every checkpoint).

    kind: "transformer" (section 3.3, the paper's design), "mlp" or "linear" (Table 3 ablations).
    in_dim: C_in, the frozen image encoder's patch feature size (DINOv2 ViT-L/14: 1024, S/14: 384).
    out_dim: D, CLIP's text embedding size (ViT-L/14: 768, B/16: 512).
    num_heads: attention heads of the transformer block; None -> in_dim / 64 (DINOv2's head
        width, ours), at least 1. Must divide in_dim.
    mlp_ratio: hidden width / in_dim of the block's MLP and of the "mlp" design (4, the ViT
        convention; ours, the paper gives none).
    """

    kind: str = "transformer"  # section 4.4.2: one transformer block (Table 3, best)
    in_dim: int = 1024  # C_in: DINOv2 ViT-L/14 (section 4.1)
    out_dim: int = 768  # D: CLIP ViT-L/14 text space (section 4.1)
    num_heads: int | None = None  # ours: in_dim // 64
    mlp_ratio: float = 4.0  # ours: ViT convention

    def __post_init__(self) -> None:
        if self.kind not in ALIGNMENT_KINDS:
            raise ValueError(f"Unknown alignment module kind {self.kind!r}; choose one of {ALIGNMENT_KINDS}.")
        for name in ("in_dim", "out_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if self.num_heads is not None and (
            not isinstance(self.num_heads, int) or self.num_heads <= 0 or self.in_dim % self.num_heads
        ):
            raise ValueError(f"num_heads must be a positive int dividing in_dim={self.in_dim}, got {self.num_heads!r}.")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}.")

    @property
    def heads(self) -> int:
        """The number of attention heads actually used."""
        if self.num_heads is not None:
            return self.num_heads
        heads = max(1, self.in_dim // 64)
        while self.in_dim % heads:
            heads -= 1
        return heads

    @property
    def hidden_dim(self) -> int:
        return max(1, int(round(self.in_dim * self.mlp_ratio)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "AlignmentModuleConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"Unknown alignment module config keys {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**values)


class TransformerBlock(nn.Module):
    """One pre-norm ViT block: x + Attn(LN(x)), then + MLP(LN(.)). (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, num_heads: int, hidden_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attention_projection = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        qkv = self.qkv(self.norm1(x)).reshape(batch, tokens, 3, self.num_heads, head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, head_dim)
        # softmax(q k^T / sqrt(head_dim)) v over the patches of one image
        attended = attention(query, key, value)
        x = x + self.attention_projection(attended.transpose(1, 2).reshape(batch, tokens, dim))
        return x + self.mlp(self.norm2(x))


class AlignmentModule(nn.Module):
    """M: (B, N, C_in) or (N, C_in) patch features -> same leading shape x D, unit norm.

    The input is cast to the weights' dtype (float32 for training; a bfloat16 copy may serve, see
    ``FMbSegPredictor.load_checkpoint``); the output is normalised in float32 (or float64).
    """

    def __init__(self, config: AlignmentModuleConfig) -> None:
        super().__init__()
        self.config = config
        self.block: nn.Module
        if config.kind == "transformer":
            self.block = TransformerBlock(config.in_dim, config.heads, config.hidden_dim)
            self.projection: nn.Module = nn.Linear(config.in_dim, config.out_dim)
        elif config.kind == "mlp":
            self.block = nn.Identity()
            self.projection = nn.Sequential(
                nn.Linear(config.in_dim, config.hidden_dim),
                nn.GELU(),
                nn.Linear(config.hidden_dim, config.out_dim),
            )
        else:
            self.block = nn.Identity()
            self.projection = nn.Linear(config.in_dim, config.out_dim)

    def forward(self, patch_features: torch.Tensor) -> torch.Tensor:
        if patch_features.ndim not in (2, 3) or patch_features.shape[-1] != self.config.in_dim:
            raise ValueError(
                f"Expected patch features of shape (B, N, {self.config.in_dim}) or (N, {self.config.in_dim}), "
                f"got {tuple(patch_features.shape)}."
            )
        single_image = patch_features.ndim == 2
        x = patch_features[None] if single_image else patch_features
        x = x.to(next(self.parameters()).dtype)
        z = self.projection(self.block(x))
        if z.dtype in (torch.bfloat16, torch.float16):
            z = z.float()  # normalised (and returned) in float32
        z = F.normalize(z, dim=-1)  # z = M(x), ||z|| = 1
        return z[0] if single_image else z

    def extra_repr(self) -> str:
        return f"kind={self.config.kind}, in_dim={self.config.in_dim}, out_dim={self.config.out_dim}"


def build_alignment_module(
    kind: str = "transformer",
    in_dim: int = 1024,
    out_dim: int = 768,
    *,
    num_heads: int | None = None,
    mlp_ratio: float = 4.0,
    seed: int | None = None,
) -> AlignmentModule:
    """Build an alignment module with fresh weights (PyTorch default initialisation).

    seed: if given, the weights are drawn from this seed without touching the global RNG.
    """
    config = AlignmentModuleConfig(kind=kind, in_dim=in_dim, out_dim=out_dim, num_heads=num_heads, mlp_ratio=mlp_ratio)
    return build_from_config(config, seed=seed)


def build_from_config(config: AlignmentModuleConfig, *, seed: int | None = None) -> AlignmentModule:
    """``build_alignment_module`` from a config record."""
    if seed is None:
        return AlignmentModule(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AlignmentModule(config)


def count_parameters(module: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())
