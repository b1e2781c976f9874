"""Segment Anything (segment-anything 1.0): point-prompted masks and automatic masks, without waste.

segment-anything's own ``SamAutomaticMaskGenerator`` decodes every point prompt at full cost and
upsamples every mask to the image size before its quality filters drop most of them. Here, with
the same model weights and the same results (tested against the generator, IoU >= 0.99 a mask):

1. **One image embedding per image.** :meth:`SamModels.embed` runs SAM's image encoder once per
   image content (a small cache keyed by a hash of the pixels): Stage 1.1's point prompts, Stage
   1.2's automatic masks, FMbSeg's refinement (and interactive clicks) on one image share it.
2. **A batched prompt decoder.** :class:`PromptDecoder` runs SAM's ``MaskDecoder`` for a batch of
   prompts, with attention rewritten exactly (same function, other order of operations):

   - the image tokens entering the first two-way block are the same for every prompt (image
     embedding + the "no mask" embedding), so their key, value and query projections are computed
     once per image, and the token-to-image attention of all prompts is one
     ``scaled_dot_product_attention`` over the shared keys;
   - after that the image tokens differ per prompt; their projections are folded into the few
     prompt tokens (``softmax(q (W x + b)^T)`` = ``softmax((q W) x^T)``; ``P (x W^T + b)`` =
     ``(P x) W^T + b`` since the rows of ``P`` sum to 1), so no (N x C) x (C x C/2) product runs per
     prompt: the token-to-image attention is one SDPA per prompt over the raw image tokens, the
     image-to-token attention an explicit softmax over the 7-11 prompt tokens;
   - the predicted IoU needs only the tokens: masks are upscaled (two transposed 2x2
     convolutions, written as matrix products) only for prompts with a mask above
     ``pred_iou_thresh``, and only those masks are produced.
3. **Filters on the low-resolution logits.** The predicted-IoU filter and the stability score
   (and its filter) are computed on the 256x256 logits; only survivors are upsampled, straight
   to the requested size (SAM's upsampling to 1024, crop and resampling is linear and separable:
   composed into one matrix per axis, :func:`upsample_logits`), then the area limits, SAM's box
   NMS and small-region clean-up run as in the generator. The stability score on 256x256 logits
   is close to, not equal to, SAM's on full-resolution logits: a mask near the threshold can fall
   on the other side.

Precision: the image encoder's blocks and the decoder's image-token path run in the model's dtype
(``SamModels.dtype``); the encoder's neck (its LayerNorm2d), the prompt encoder (sines of
coordinates), the prompt-token path, the IoU head, every softmax and LayerNorm's statistics, the
logits and the returned embedding are float32.
"""

from __future__ import annotations

import hashlib
import math
import threading
import types
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .images import bilinear_matrix, check_image

__all__ = [
    "SamModels",
    "SamEmbedding",
    "PromptDecoder",
    "PointPromptResult",
    "AutomaticMaskOptions",
    "build_tiny_sam",
    "prepare_sam",
    "upsample_logits",
]

EMBEDDING_CACHE_SIZE = 2
# prompts per decoder batch: image tokens (B x N x C) of at most 16 MB. The decoder is bound by memory
# traffic over these tensors: 8 prompts a batch (bfloat16) ran 256 prompts in 2.13 s against 2.50 s with 16
# (medians of 10 interleaved runs, 2 threads); 4 in float32, 3.25 s against 3.39 s with 8.
DECODE_BYTES = 1 << 24
UPSCALE_PROMPTS = 16  # prompts upscaled at a time (B x 256 x 256 x C/8 values)
ENCODER_LOGITS = 1 << 20  # attention logits of the image encoder computed at a time (4 MB in float32)


def build_tiny_sam(image_size: int = 256) -> torch.nn.Module:
    """SAM's architecture at a tiny size (random weights): tests only."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    prompt_dim, patch = 32, 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size,
            patch_size=patch,
            embed_dim=64,
            depth=2,
            num_heads=2,
            mlp_ratio=2,
            out_chans=prompt_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=4,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(image_size // patch, image_size // patch),
            input_image_size=(image_size, image_size),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=prompt_dim, mlp_dim=64, num_heads=2),
            transformer_dim=prompt_dim,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        ),
    )
    return sam.eval()


def _neck_in_float32(module: torch.nn.Module, args: tuple) -> tuple:
    return (args[0].float(),)


def _encoder_attention(self, x: torch.Tensor) -> torch.Tensor:
    """SAM's image-encoder ``Attention.forward``, a block of query rows at a time.

    The same function as segment-anything's, softmax(q k^T scale + rel_h + rel_w) v with the
    decomposed relative positions computed from the unscaled queries, but the (N x N) logits are
    never held for all heads at once (the global blocks' 64 x 64 grid: 12 x 4096^2 logits, 0.8 GB in
    float32): about ``ENCODER_LOGITS`` logits at a time, which stay in the CPU's cache. The
    products q k^T and P v run in the weights' dtype; the relative-position terms, their sum with
    the logits and the softmax run in float32.
    """
    from segment_anything.modeling.image_encoder import get_rel_pos

    batch, height, width, _ = x.shape
    tokens = height * width
    heads = self.num_heads
    dtype = x.dtype
    qkv = self.qkv(x).reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = (t.reshape(batch * heads, tokens, -1) for t in qkv.unbind(0))  # (B heads, N, d)
    rel_h = rel_w = None
    if self.use_rel_pos:
        grid = q.float().reshape(batch * heads, height, width, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", grid, get_rel_pos(height, height, self.rel_pos_h).float())
        rel_w = torch.einsum("bhwc,wkc->bhwk", grid, get_rel_pos(width, width, self.rel_pos_w).float())
        rel_h, rel_w = rel_h.reshape(batch * heads, tokens, height), rel_w.reshape(batch * heads, tokens, width)
    q = q * self.scale
    keys_t = k.transpose(1, 2).contiguous()  # (B heads, d, N), laid out once, not once a block of rows
    out = torch.empty(q.shape, dtype=dtype, device=q.device)

    def attend(pairs: slice, rows: slice) -> None:
        logits = torch.matmul(q[pairs, rows], keys_t[pairs]).float()  # (p, r, N)
        if rel_h is not None:
            grid_logits = logits.view(logits.shape[0], logits.shape[1], height, width)
            grid_logits.add_(rel_h[pairs, rows, :, None]).add_(rel_w[pairs, rows, None, :])
        out[pairs, rows] = torch.matmul(torch.softmax(logits, dim=-1).to(dtype), v[pairs])

    if tokens * tokens <= ENCODER_LOGITS:  # small windows: several (window, head) pairs at a time
        step = ENCODER_LOGITS // (tokens * tokens)
        for start in range(0, batch * heads, step):
            attend(slice(start, start + step), slice(None))
    else:  # global attention: one head, some query rows at a time
        step = max(1, ENCODER_LOGITS // tokens)
        for pair in range(batch * heads):
            for start in range(0, tokens, step):
                attend(slice(pair, pair + 1), slice(start, start + step))
    out = out.view(batch, heads, height, width, -1).permute(0, 2, 3, 1, 4)
    return self.proj(out.reshape(batch, height, width, -1))


def prepare_sam(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast a ``Sam`` to ``dtype`` for the heavy parts, keeping the delicate ones float32 (in place).

    ``dtype`` parts: the image encoder's patch embedding and blocks (their attention rewritten,
    :func:`_encoder_attention`), the mask decoder's transformer and upscaling. float32: the pixel
    normalisation, the encoder's neck (convolutions and LayerNorm2d; a pre-hook casts its input),
    the prompt encoder, the IoU head and the hypernetwork MLPs. ``model.image_encoder(x)`` then
    takes ``dtype`` pixels and returns a float32 embedding.
    """
    model.to(dtype)
    if dtype != torch.float32:
        model.pixel_mean = model.pixel_mean.float()
        model.pixel_std = model.pixel_std.float()
        model.image_encoder.neck.float()
        model.prompt_encoder.float()
        model.mask_decoder.iou_prediction_head.float()
        model.mask_decoder.output_hypernetworks_mlps.float()
        model.mask_decoder.iou_token.float()
        model.mask_decoder.mask_tokens.float()
    if not getattr(model.image_encoder.neck, "_float32_hook", False):
        model.image_encoder.neck.register_forward_pre_hook(_neck_in_float32)
        model.image_encoder.neck._float32_hook = True
    for block in model.image_encoder.blocks:
        block.attn.forward = types.MethodType(_encoder_attention, block.attn)
    return model.eval()


# ---------------------------------------------------------------------------------- embedding
@dataclass
class SamEmbedding:
    """SAM's embedding of one image, and what the decoder derives from it once.

    Attributes:
        features: (1, C, h, w) float32 image embedding (``SamPredictor.features``).
        input_size: (H', W') of the image resized to SAM's input (longest side ``img_size``).
        original_size: (H, W) of the image.
        shared: per-image projections of the decoder's first block (computed on first use).
    """

    features: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    shared: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


def _image_key(image: np.ndarray) -> tuple:
    contiguous = np.ascontiguousarray(image)
    return contiguous.shape, hashlib.blake2b(contiguous.data, digest_size=16).digest()


# ---------------------------------------------------------------------------------- decoder
def _linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    """``layer(x)`` in ``x``'s dtype (the weights are cast if they differ; they are small)."""
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return F.linear(x, layer.weight.to(x.dtype), bias)


def _layer_norm(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """LayerNorm over the last dimension (statistics in float32 for bfloat16 inputs)."""
    return F.layer_norm(x, (x.shape[-1],), norm.weight.to(x.dtype), norm.bias.to(x.dtype), norm.eps)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, C) -> (B, heads, T, C / heads)."""
    batch, tokens, channels = x.shape
    return x.reshape(batch, tokens, heads, channels // heads).transpose(1, 2)


def _token_attention(attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SAM's ``Attention`` among the prompt tokens (float32, SDPA)."""
    heads = attention.num_heads
    out = F.scaled_dot_product_attention(
        _heads(_linear(q, attention.q_proj), heads),
        _heads(_linear(k, attention.k_proj), heads),
        _heads(_linear(v, attention.v_proj), heads),
    )
    batch, _, tokens, _ = out.shape
    return _linear(out.transpose(1, 2).reshape(batch, tokens, -1), attention.out_proj)


class PromptDecoder:
    """SAM's ``MaskDecoder`` for a batch of prompts on one image embedding (see the module doc).

    Every product over the image tokens (N = 64 x 64 for the official models) is a batched matrix
    product in the compute dtype; softmaxes run in float32. Per prompt and block, no projection of
    the N image tokens runs: they are folded into the prompt's T tokens (heads x T < C / 2).

    Args:
        model: a ``Sam`` prepared by :func:`prepare_sam`.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.decoder = model.mask_decoder
        self.transformer = self.decoder.transformer
        self.dtype = next(self.transformer.parameters()).dtype
        self._dense_pe: torch.Tensor | None = None
        self._pe_projections: dict[tuple[int, str], torch.Tensor] = {}

    # ------------------------------------------------------------------ inputs
    def dense_pe(self) -> torch.Tensor:
        """(N, C) positional encoding of the image tokens, in the compute dtype (cached)."""
        if self._dense_pe is None:
            pe = self.model.prompt_encoder.get_dense_pe()  # (1, C, h, w) float32
            self._dense_pe = pe[0].flatten(1).T.contiguous().to(self.dtype)
        return self._dense_pe

    def prompt_tokens(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, T, C) float32: output tokens then point embeddings (SAM pads one "not a point")."""
        return self.prompts(coords, labels)[0]

    def prompts(
        self,
        coords: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """SAM's prompt encoder (float32): the tokens (B, T, C), output tokens first, and the dense
        embedding (B, C, h, w) of ``masks`` (None without masks: the "no mask" embedding, shared)."""
        points = None if coords is None else (coords.float(), labels)
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=masks)
        decoder = self.decoder
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0).float()
        tokens = torch.cat([output_tokens[None].expand(sparse.shape[0], -1, -1), sparse.float()], dim=1)
        return tokens, (None if masks is None else dense.float())

    def _shared(self, embedding: SamEmbedding) -> dict[str, torch.Tensor]:
        """Per-image tensors of the first block: its image tokens and their projections."""
        shared = embedding.shared
        if "keys" not in shared:
            no_mask = self.model.prompt_encoder.no_mask_embed.weight.reshape(1, 1, -1)
            keys = (embedding.features.flatten(2).transpose(1, 2) + no_mask).to(self.dtype)  # (1, N, C)
            with_pe = keys + self.dense_pe()
            shared["keys"] = keys
            if len(self.transformer.layers):
                first = self.transformer.layers[0]
                t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
                shared["t2i_k"] = _heads(_linear(with_pe, t2i.k_proj), t2i.num_heads)  # (1, h, N, d)
                shared["t2i_v"] = _heads(_linear(keys, t2i.v_proj), t2i.num_heads)
                # image queries of the image-to-token attention, scaled, as (h, d, N)
                query = _heads(_linear(with_pe, i2t.q_proj), i2t.num_heads)[0]
                shared["i2t_qT"] = (query / math.sqrt(query.shape[-1])).transpose(1, 2).contiguous()
        return shared

    # ------------------------------------------------------------ attentions
    def _tokens_to_shared_image(self, attention, queries: torch.Tensor, shared: dict) -> torch.Tensor:
        """Token-to-image attention against the shared first-block keys: one SDPA for all prompts."""
        batch, tokens, _ = queries.shape
        heads = attention.num_heads
        q = _heads(_linear(queries, attention.q_proj).reshape(1, batch * tokens, -1), heads)
        out = F.scaled_dot_product_attention(q.to(self.dtype), shared["t2i_k"], shared["t2i_v"])
        out = out.transpose(1, 2).reshape(batch, tokens, -1).float()
        return _linear(out, attention.out_proj)

    def _pe_scores(self, attention, which: str, vectors: torch.Tensor) -> torch.Tensor:
        """(B, h, T, d) per-head vectors -> (B, h T, N): their products with the positional
        encoding's key (``which="k"``) or query (``"q"``) projection, W pe^T, computed once per
        model (no bias: the bias terms are added, or cancel, elsewhere)."""
        key = (id(attention), which)
        if key not in self._pe_projections:
            layer = attention.k_proj if which == "k" else attention.q_proj
            projected = F.linear(self.dense_pe().float(), layer.weight.float())  # (N, C_int)
            per_head = _heads(projected[None], attention.num_heads)[0]  # (h, N, d)
            self._pe_projections[key] = per_head.transpose(1, 2).contiguous().to(self.dtype)  # (h, d, N)
        batch, heads, tokens, _ = vectors.shape
        scores = torch.matmul(vectors.to(self.dtype), self._pe_projections[key])  # (B, h, T, N)
        return scores.reshape(batch, heads * tokens, -1)

    def _tokens_to_image(self, attention, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Token-to-image attention over per-prompt image tokens ``keys`` (B, N, C), projections folded.

        scores_h = (q_h W_k,h / sqrt(d)) (x + pe)^T (the key bias adds a constant per row: it cancels
        in the softmax); out_h = (P_h x) W_v,h^T + b_v,h (the rows of P_h sum to 1).
        """
        batch, tokens, _ = queries.shape
        heads = attention.num_heads
        q = _heads(_linear(queries, attention.q_proj), heads)  # (B, h, T, d)
        head_dim = q.shape[-1]
        q = q / math.sqrt(head_dim)
        w_k = attention.k_proj.weight.float().reshape(heads, head_dim, -1)  # (h, d, C)
        folded = torch.einsum("bhtd,hdc->bhtc", q, w_k).reshape(batch, heads * tokens, -1).to(self.dtype)
        scores = torch.baddbmm(self._pe_scores(attention, "k", q), folded, keys.transpose(1, 2))  # (B, hT, N)
        weights = torch.softmax(scores.float(), dim=-1).to(self.dtype)
        mixed = torch.bmm(weights, keys).reshape(batch, heads, tokens, -1).float()  # P_h x
        w_v = attention.v_proj.weight.float().reshape(heads, head_dim, -1)  # (h, d, C)
        out = torch.einsum("bhtc,hdc->bthd", mixed, w_v).reshape(batch, tokens, -1) + attention.v_proj.bias.float()
        return _linear(out, attention.out_proj)

    def _image_to_tokens(
        self,
        attention,
        keys: torch.Tensor,
        queries: torch.Tensor,
        query_pe: torch.Tensor,
        shared_qT: torch.Tensor | None,
    ) -> torch.Tensor:
        """``keys`` + image-to-token attention (each image token attends to the prompt's few tokens),
        before the block's LayerNorm: (B, N, C) in the compute dtype.

        The tokens' keys and values are small (float32). The image queries are projected once per
        image in the first block (``shared_qT``); afterwards the query projection is folded into
        the tokens' keys: scores = (x + pe) (W_q,h^T k_h) + b_q,h k_h. The output projection is
        folded into the values, and its bias too (each head's weights sum to 1): out = sum_h P_h
        (V_h W_o,h^T + b_o / heads). The residual is added by the same product.
        """
        heads = attention.num_heads
        k = _heads(_linear(queries + query_pe, attention.k_proj), heads)  # (B, h, T, d)
        v = _heads(_linear(queries, attention.v_proj), heads)
        batch, _, tokens, head_dim = k.shape
        w_o = attention.out_proj.weight.float().reshape(-1, heads, head_dim)  # (C, h, d)
        values = torch.einsum("bhtd,chd->bhtc", v, w_o) + attention.out_proj.bias.float() / heads
        values = values.reshape(batch, heads * tokens, -1).to(self.dtype)  # (B, hT, C)
        if shared_qT is not None:  # (h, d, N), already scaled
            scores = torch.matmul(k.to(self.dtype), shared_qT)  # (B, h, T, N)
        else:
            k = k / math.sqrt(head_dim)
            w_q = attention.q_proj.weight.float().reshape(heads, head_dim, -1)  # (h, d, C)
            folded = torch.einsum("bhtd,hdc->bhtc", k, w_q).reshape(batch, heads * tokens, -1).to(self.dtype)
            constant = torch.einsum("bhtd,hd->bht", k, attention.q_proj.bias.float().reshape(heads, head_dim))
            base = self._pe_scores(attention, "q", k) + constant.reshape(batch, heads * tokens, 1).to(self.dtype)
            scores = torch.baddbmm(base, folded, keys.transpose(1, 2))  # (B, hT, N)
        count = scores.shape[-1]
        weights = torch.softmax(scores.float().reshape(batch, heads, tokens, count), dim=2)  # over the T tokens
        weights = weights.to(self.dtype).reshape(batch, heads * tokens, count)
        residual = keys.expand(batch, -1, -1) if keys.shape[0] != batch else keys
        return torch.baddbmm(residual, weights.transpose(1, 2), values)

    # -------------------------------------------------------------- transformer
    @torch.inference_mode()
    def transformer_pass(
        self, embedding: SamEmbedding, tokens: torch.Tensor, dense: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SAM's ``TwoWayTransformer`` and heads for prompts ``tokens`` (B, T, C).

        ``dense``: the prompts' mask embeddings (B, C, h, w); None: no mask input, and the first
        block's image tokens (and their projections) are shared by every prompt.

        Returns:
            hyper_in (B, M_all, C/8) float32 (one row per mask token), iou (B, M_all) float32, and
            the image tokens after the transformer (B, N, C) in the compute dtype.
        """
        shared = self._shared(embedding)
        query_pe = tokens
        queries = tokens
        if dense is None:
            keys = shared["keys"]  # (1, N, C): the same for every prompt until the first image update
        else:
            keys = (embedding.features + dense).flatten(2).transpose(1, 2).to(self.dtype)  # (B, N, C)
        for index, layer in enumerate(self.transformer.layers):
            first = index == 0 and dense is None
            if layer.skip_first_layer_pe:
                queries = _token_attention(layer.self_attn, queries, queries, queries)
            else:
                q = queries + query_pe
                queries = queries + _token_attention(layer.self_attn, q, q, queries)
            queries = _layer_norm(queries, layer.norm1)
            if first:
                attended = self._tokens_to_shared_image(layer.cross_attn_token_to_image, queries + query_pe, shared)
            else:
                attended = self._tokens_to_image(layer.cross_attn_token_to_image, queries + query_pe, keys)
            queries = _layer_norm(queries + attended, layer.norm2)
            mlp = layer.mlp
            queries = _layer_norm(queries + _linear(mlp.act(_linear(queries, mlp.lin1)), mlp.lin2), layer.norm3)
            updated = self._image_to_tokens(
                layer.cross_attn_image_to_token, keys, queries, query_pe, shared["i2t_qT"] if first else None
            )
            keys = _layer_norm(updated, layer.norm4)  # (B, N, C) from here on
        if keys.shape[0] != queries.shape[0]:  # no two-way block (depth 0)
            keys = keys.expand(queries.shape[0], -1, -1)
        final = self._tokens_to_image(self.transformer.final_attn_token_to_image, queries + query_pe, keys)
        queries = _layer_norm(queries + final, self.transformer.norm_final_attn)
        decoder = self.decoder
        iou = decoder.iou_prediction_head(queries[:, 0])
        mask_tokens = queries[:, 1 : 1 + decoder.num_mask_tokens]
        hyper_in = torch.stack(
            [mlp(mask_tokens[:, i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
        )
        return hyper_in.float(), iou.float(), keys

    # ---------------------------------------------------------------- masks
    @torch.inference_mode()
    def upscale(self, keys: torch.Tensor, hyper_in: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Low-resolution mask logits (B, M, 4h, 4w) float32 of the image tokens ``keys`` (B, N, C)
        for the mask rows ``hyper_in`` (B, M, C/8): SAM's ``output_upscaling`` (two 2x2, stride-2
        transposed convolutions, LayerNorm2d and GELU), then the product with the hypernetwork."""
        up = self.decoder.output_upscaling
        first, norm, act1, second, act2 = up[0], up[1], up[2], up[3], up[4]
        batch = keys.shape[0]
        h, w = grid
        mid = first.weight.shape[1]
        # out[o, 2i+a, 2j+b] = bias[o] + sum_c x[c, i, j] W[c, o, a, b]: a product per image token
        w1 = first.weight.permute(0, 2, 3, 1).reshape(first.weight.shape[0], 4 * mid).to(self.dtype)
        y = torch.matmul(keys, w1) + first.bias.to(self.dtype).repeat(4)  # (B, N, (a, b, o))
        y = act1(_layer_norm(y.reshape(batch, h, w, 2, 2, mid), norm))
        out = second.weight.shape[1]
        w2 = second.weight.permute(0, 2, 3, 1).reshape(mid, 4 * out).to(self.dtype)
        z = act2(torch.matmul(y, w2) + second.bias.to(self.dtype).repeat(4))  # (B, h, w, a, b, (a2, b2, o))
        z = z.reshape(batch, h, w, 2, 2, 2, 2, out)
        logits = torch.matmul(z.float().reshape(batch, -1, out), hyper_in.transpose(1, 2))  # (B, h w 16, M)
        masks = hyper_in.shape[1]
        logits = logits.reshape(batch, h, w, 2, 2, 2, 2, masks).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return logits.reshape(batch, masks, 4 * h, 4 * w)


_RESAMPLE_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_RESAMPLE_LOCK = threading.Lock()


def _resampling_matrices(
    low_res: tuple[int, int], input_size: tuple[int, int], image_size: int, output_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(H_out, h) and (W_out, w) float32 matrices of SAM's ``postprocess_masks`` along each axis:
    bilinear to ``image_size``, crop to ``input_size``, bilinear to ``output_size``, composed."""
    key = (tuple(low_res), tuple(input_size), image_size, tuple(output_size))
    with _RESAMPLE_LOCK:
        if key not in _RESAMPLE_CACHE:
            axes = []
            for low, valid, out in zip(low_res, input_size, output_size):
                to_frame = bilinear_matrix(image_size, low)[:valid]  # (valid, low): upsampled, cropped
                axes.append((bilinear_matrix(out, valid) @ to_frame).float())
            if len(_RESAMPLE_CACHE) > 16:
                _RESAMPLE_CACHE.clear()
            _RESAMPLE_CACHE[key] = (axes[0], axes[1])
        return _RESAMPLE_CACHE[key]


def upsample_logits(
    logits: torch.Tensor, input_size: tuple[int, int], image_size: int, output_size: tuple[int, int]
) -> torch.Tensor:
    """Low-resolution logits (M, h, w), covering SAM's padded ``image_size`` frame -> (M, H, W)
    float32 at ``output_size``, straight from the low-resolution logits.

    SAM's ``postprocess_masks`` (bilinear to ``image_size``, crop to ``input_size``, bilinear to
    the image size) is linear and separable: its two axes are composed once into an (H, h) and a
    (W, w) matrix, and each mask is ``R_y L R_x^T``: the same values, without the
    ``image_size``-squared intermediate.
    """
    rows, cols = _resampling_matrices(tuple(logits.shape[-2:]), input_size, image_size, output_size)
    rows, cols = rows.to(logits.device), cols.to(logits.device)
    return torch.matmul(rows, torch.matmul(logits.float(), cols.T))


# ---------------------------------------------------------------------------------- results
@dataclass
class PointPromptResult:
    """SAM's answer to one set of point prompts.

    Attributes:
        masks: (3, H, W) bool, SAM's three candidate masks at image resolution.
        scores: (3,) predicted IoU of each mask (SAM's confidence).
    """

    masks: np.ndarray
    scores: np.ndarray

    @property
    def best(self) -> np.ndarray:
        """The most confident of the three masks, (H, W) bool."""
        return self.masks[int(np.argmax(self.scores))]


@dataclass(frozen=True)
class AutomaticMaskOptions:
    """The automatic mask generator's settings (``SamAutomaticMaskGenerator``'s names and defaults).

    Added here: ``min_area_fraction`` / ``max_area_fraction``, limits on a mask's area as a
    fraction of the image (of the upsampled mask, before NMS; 0 / None: no limit).
    Not supported: crops (``crop_n_layers`` > 0) and outputs other than binary masks.
    """

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0
    point_grids: Sequence[np.ndarray] | None = None
    min_area_fraction: float = 0.0
    max_area_fraction: float | None = None

    _UNSUPPORTED = {
        "crop_n_layers": 0,
        "crop_nms_thresh": None,
        "crop_overlap_ratio": None,
        "crop_n_points_downscale_factor": None,
        "output_mode": "binary_mask",
    }

    @classmethod
    def from_kwargs(cls, **options: Any) -> "AutomaticMaskOptions":
        for name in list(options):
            if name in cls._UNSUPPORTED:
                value = options.pop(name)
                required = cls._UNSUPPORTED[name]
                if required is not None and value != required:
                    raise ValueError(f"automatic masks: {name}={value!r} is not supported (only {required!r})")
        known = {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"automatic masks: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        result = cls(**options)
        if (result.points_per_side is None) == (result.point_grids is None):
            raise ValueError("automatic masks: give exactly one of points_per_side and point_grids")
        return result

    def grid(self) -> np.ndarray:
        """(P, 2) points in [0, 1]^2, SAM's grid order."""
        if self.point_grids is not None:
            return np.asarray(self.point_grids[0], dtype=np.float64)
        from segment_anything.utils.amg import build_point_grid

        return build_point_grid(self.points_per_side)


# ---------------------------------------------------------------------------------- facade
@dataclass
class SamModels:
    """A SAM model with the two ways the methods query it.

    Attributes:
        model: the ``segment_anything.modeling.Sam`` (prepared for ``dtype`` on construction).
        name: registry kind and weights, e.g. ``"vit_b"``.
        automatic_overrides: options of :meth:`automatic_masks` that this model forces over the
            caller's (the ``tiny`` preset's random weights keep no mask unless both thresholds are 0).
        dtype: what the encoder and the decoder's image path compute in.
    """

    model: torch.nn.Module
    name: str
    automatic_overrides: dict[str, Any] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _decoder: PromptDecoder | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        prepare_sam(self.model, self.dtype)
        self._decoder = PromptDecoder(self.model)
        from segment_anything.utils.transforms import ResizeLongestSide

        self.transform = ResizeLongestSide(self.model.image_encoder.img_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_size(self) -> int:
        """Side of SAM's square input frame (1024 for the official models)."""
        return int(self.model.image_encoder.img_size)

    # ------------------------------------------------------------- embedding
    def embed(self, image: np.ndarray) -> SamEmbedding:
        """SAM's embedding of ``image`` ((H, W, 3) uint8 RGB), computed once per image content."""
        check_image(image)
        key = _image_key(image)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
            embedding = self._embed(image)
            self._cache[key] = embedding
            while len(self._cache) > EMBEDDING_CACHE_SIZE:
                self._cache.popitem(last=False)
            return embedding

    def forget_images(self) -> None:
        """Drop the cached image embeddings (the next query on any image runs the encoder)."""
        with self._lock:
            self._cache.clear()

    @torch.inference_mode()
    def _embed(self, image: np.ndarray) -> SamEmbedding:
        """``SamPredictor.set_image``: resize the longest side, normalise and pad, encode."""
        resized = self.transform.apply_image(image)
        pixels = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None].float()
        pixels = self.model.preprocess(pixels)  # float32 normalisation and padding
        features = self.model.image_encoder(pixels.to(self.dtype)).float()
        return SamEmbedding(features, tuple(resized.shape[:2]), tuple(image.shape[:2]))

    def _prompt_coords(self, points_xy: np.ndarray, original_size: tuple[int, int]) -> torch.Tensor:
        """Points in image pixels -> SAM's input frame (``ResizeLongestSide.apply_coords``)."""
        return torch.as_tensor(self.transform.apply_coords(points_xy, original_size), dtype=torch.float32)

    def _decode(self, embedding: SamEmbedding, coords: torch.Tensor, labels: torch.Tensor):
        decoder = self._decoder
        tokens = decoder.prompt_tokens(coords.to(self.device), labels.to(self.device))
        return decoder.transformer_pass(embedding, tokens)

    def _batch_size(self, embedding: SamEmbedding, requested: int) -> int:
        _, channels, h, w = embedding.features.shape
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return max(1, min(requested, DECODE_BYTES // (channels * h * w * itemsize)))

    # ---------------------------------------------------------------- points
    def predict_points(self, image: np.ndarray, points_xy: np.ndarray) -> PointPromptResult:
        """Three masks for positive point prompts ``points_xy`` (P, 2) in image pixel coordinates."""
        return self.predict_point_sets(image, [points_xy])[0]

    def predict_point_sets(
        self, image: np.ndarray, point_sets: list[np.ndarray], output_size: tuple[int, int] | None = None
    ) -> list[PointPromptResult]:
        """One :class:`PointPromptResult` per set of positive points (SAM's ``predict`` with
        ``multimask_output=True``); the image is embedded once, sets of equal size are decoded as
        one batch. Masks come at ``output_size`` (default: the image's size)."""
        check_image(image)
        point_sets = [np.asarray(points, dtype=np.float32).reshape(-1, 2) for points in point_sets]
        if any(len(points) == 0 for points in point_sets):
            raise ValueError("every set of point prompts needs at least one point")
        output_size = tuple(output_size or image.shape[:2])
        results: list[PointPromptResult | None] = [None] * len(point_sets)
        with self._lock, torch.inference_mode():
            embedding = self.embed(image)
            by_size: dict[int, list[int]] = {}
            for index, points in enumerate(point_sets):
                by_size.setdefault(len(points), []).append(index)
            grid = embedding.features.shape[-2:]
            for indices in by_size.values():
                coords = torch.stack([self._prompt_coords(point_sets[i], embedding.original_size) for i in indices])
                labels = torch.ones(coords.shape[:2], dtype=torch.int64)
                hyper_in, iou, keys = self._decode(embedding, coords, labels)
                low_res = self._decoder.upscale(keys, hyper_in[:, 1:], tuple(grid))
                for row, index in enumerate(indices):
                    logits = upsample_logits(low_res[row], embedding.input_size, self.image_size, output_size)
                    masks = (logits > self.model.mask_threshold).cpu().numpy()
                    scores = iou[row, 1:].cpu().numpy().astype(np.float32)
                    results[index] = PointPromptResult(masks=masks, scores=scores)
        return results  # type: ignore[return-value]

    def predict(
        self,
        image: np.ndarray,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        output_size: tuple[int, int] | None = None,
        embedding: SamEmbedding | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """segment-anything's ``SamPredictor.predict`` on the image's cached embedding (clicks).

        Args:
            image: (H, W, 3) uint8 RGB; embedded once per content (shared with the methods).
            point_coords: (P, 2) x, y in image pixels; point_labels: (P,) 1 foreground, 0 background.
            box: (4,) x0, y0, x1, y1 in image pixels.
            mask_input: (1, 256, 256) low-resolution logits of an earlier prediction.
            multimask_output: three masks (True) or one.
            output_size: (H_out, W_out) of the masks (default: the image's).
            embedding: the image's :meth:`embed`, kept by the caller (e.g. a longer-lived click
                cache); default: :meth:`embed` now.

        Returns:
            masks (M, H_out, W_out) bool, predicted IoUs (M,), low-resolution logits (M, 256, 256),
            as ``SamPredictor.predict`` (M = 3 or 1).
        """
        check_image(image)
        if point_coords is not None and point_labels is None:
            raise ValueError("point_labels must be given with point_coords")
        output_size = tuple(output_size or image.shape[:2])
        with self._lock, torch.inference_mode():
            embedding = embedding or self.embed(image)
            coords = labels = boxes = masks = None
            if point_coords is not None:
                points = np.asarray(point_coords, dtype=np.float32).reshape(-1, 2)
                coords = self._prompt_coords(points, embedding.original_size)[None].to(self.device)
                labels = torch.as_tensor(np.asarray(point_labels), dtype=torch.int64).reshape(1, -1).to(self.device)
            if box is not None:
                corners = np.asarray(box, dtype=np.float32).reshape(-1, 4)[:1]
                boxes = self.transform.apply_boxes(corners, embedding.original_size)
                boxes = torch.as_tensor(boxes, dtype=torch.float32, device=self.device)
            if mask_input is not None:
                masks = torch.as_tensor(np.asarray(mask_input), dtype=torch.float32, device=self.device).reshape(
                    1, 1, *np.shape(mask_input)[-2:]
                )
            if coords is None and boxes is None and masks is None:
                raise ValueError("give at least one prompt: points, a box or a mask")
            tokens, dense = self._decoder.prompts(coords, labels, boxes, masks)
            hyper_in, iou, keys = self._decoder.transformer_pass(embedding, tokens, dense)
            chosen = slice(1, None) if multimask_output else slice(0, 1)
            grid = tuple(embedding.features.shape[-2:])
            low_res = self._decoder.upscale(keys, hyper_in[:, chosen], grid)[0]
            logits = upsample_logits(low_res, embedding.input_size, self.image_size, output_size)
            masks_out = (logits > self.model.mask_threshold).cpu().numpy()
            return masks_out, iou[0, chosen].cpu().numpy().astype(np.float32), low_res.cpu().numpy()

    # ------------------------------------------------------------- automatic
    def automatic_masks(
        self, image: np.ndarray, output_size: tuple[int, int] | None = None, **settings: Any
    ) -> list[dict[str, Any]]:
        """SAM's automatic masks (``SamAutomaticMaskGenerator(model, **settings).generate(image)``),
        filtered on the low-resolution logits before anything is upsampled.

        Args:
            image: (H, W, 3) uint8 RGB.
            output_size: (H_out, W_out) of the returned masks (default: the image's); the masks
                are resampled straight from SAM's logits to it. Boxes, areas and
                ``min_mask_region_area`` are in its pixels; ``point_coords`` in the image's.
            settings: :class:`AutomaticMaskOptions` (the generator's keyword arguments, plus area
                limits).

        Returns:
            records as the generator's (``segmentation`` (H_out, W_out) bool, ``area``, ``bbox``
            XYWH, ``predicted_iou``, ``point_coords``, ``stability_score``, ``crop_box``), in
            the generator's order (NMS keeps the highest predicted IoU first).
        """
        from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score
        from torchvision.ops.boxes import batched_nms

        check_image(image)
        options = AutomaticMaskOptions.from_kwargs(**{**settings, **self.automatic_overrides})
        output_size = tuple(output_size or image.shape[:2])
        threshold = self.model.mask_threshold
        with self._lock, torch.inference_mode():
            embedding = self.embed(image)
            grid = tuple(embedding.features.shape[-2:])
            scale = 4 * grid[0] / self.image_size  # low-resolution pixels per input pixel
            valid = (math.ceil(embedding.input_size[0] * scale), math.ceil(embedding.input_size[1] * scale))
            points = options.grid() * np.array(image.shape[:2])[None, ::-1]  # (P, 2) x, y in image pixels
            coords_all = self._prompt_coords(points, embedding.original_size)
            kept_logits, kept_iou, kept_stability, kept_points = [], [], [], []
            batch_size = self._batch_size(embedding, options.points_per_batch)
            for start in range(0, len(points), batch_size):
                coords = coords_all[start : start + batch_size, None, :]
                labels = torch.ones(coords.shape[:2], dtype=torch.int64)
                hyper_in, iou, keys = self._decode(embedding, coords, labels)
                hyper_in, iou = hyper_in[:, 1:], iou[:, 1:]  # multimask output: the three mask tokens
                if options.pred_iou_thresh > 0:
                    keep = iou > options.pred_iou_thresh
                else:
                    keep = torch.ones_like(iou, dtype=torch.bool)
                prompts = torch.nonzero(keep.any(dim=1)).flatten()
                for chunk in prompts.split(UPSCALE_PROMPTS) if len(prompts) else ():
                    rows, masks = torch.nonzero(keep[chunk], as_tuple=True)
                    logits = self._decoder.upscale(keys[chunk], hyper_in[chunk], grid)[rows, masks]  # (m, 4h, 4w)
                    inside = logits[:, : valid[0], : valid[1]]  # the image's part of SAM's padded frame
                    stability = calculate_stability_score(inside, threshold, options.stability_score_offset)
                    if options.stability_score_thresh > 0:
                        good = stability >= options.stability_score_thresh
                    else:
                        good = torch.ones_like(stability, dtype=torch.bool)
                    prompt_index = chunk[rows][good]
                    kept_logits.append(logits[good])
                    kept_iou.append(iou[prompt_index, masks[good]])
                    kept_stability.append(stability[good])
                    kept_points.append(torch.as_tensor(points[(start + prompt_index).cpu().numpy()]))
            if not kept_logits or sum(len(x) for x in kept_logits) == 0:
                return []
            logits = torch.cat(kept_logits)
            iou = torch.cat(kept_iou)
            stability = torch.cat(kept_stability)
            point_coords = torch.cat(kept_points)
            # Survivors only: upsample straight to the output size, threshold, area limits, box, NMS.
            masks = torch.cat(
                [
                    upsample_logits(part, embedding.input_size, self.image_size, output_size) > threshold
                    for part in logits.split(UPSCALE_PROMPTS)
                ]
            )
            area = masks.flatten(1).float().mean(dim=1)
            sized = area >= options.min_area_fraction
            if options.max_area_fraction is not None:
                sized &= area <= options.max_area_fraction
            if not sized.all():
                masks, iou, stability, point_coords = (t[sized] for t in (masks, iou, stability, point_coords))
            boxes = batched_mask_to_box(masks)
            keep_by_nms = batched_nms(boxes.float(), iou, torch.zeros(len(boxes)), iou_threshold=options.box_nms_thresh)
            masks, boxes, iou, stability, point_coords = (
                t[keep_by_nms] for t in (masks, boxes, iou, stability, point_coords)
            )
            masks_np = masks.cpu().numpy()
            boxes_np = boxes.cpu().numpy()
            if options.min_mask_region_area > 0:
                masks_np, boxes_np, order = _remove_small_regions(
                    masks_np, boxes_np, options.min_mask_region_area, options.box_nms_thresh
                )
                iou, stability, point_coords = iou[order], stability[order], point_coords[order]
        height, width = output_size
        records = []
        for index, mask in enumerate(masks_np):
            x0, y0, x1, y1 = (float(v) for v in boxes_np[index])
            records.append(
                {
                    "segmentation": mask,
                    "area": int(mask.sum()),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "predicted_iou": float(iou[index]),
                    "point_coords": [point_coords[index].tolist()],
                    "stability_score": float(stability[index]),
                    "crop_box": [0, 0, width, height],
                }
            )
        return records


def _remove_small_regions(masks: np.ndarray, boxes: np.ndarray, min_area: int, nms_thresh: float):
    """``SamAutomaticMaskGenerator.postprocess_small_regions`` on bool masks: holes and islands
    smaller than ``min_area`` removed, boxes recomputed, NMS preferring unchanged masks.
    Returns (masks, boxes, kept indices)."""
    from segment_anything.utils.amg import batched_mask_to_box, remove_small_regions
    from torchvision.ops.boxes import batched_nms

    new_masks, scores = [], []
    for mask in masks:
        mask, changed_holes = remove_small_regions(mask, min_area, mode="holes")
        mask, changed_islands = remove_small_regions(mask, min_area, mode="islands")
        new_masks.append(mask)
        scores.append(float(not (changed_holes or changed_islands)))
    stack = torch.as_tensor(np.stack(new_masks))
    new_boxes = batched_mask_to_box(stack)
    keep = batched_nms(
        new_boxes.float(), torch.as_tensor(scores), torch.zeros(len(new_boxes)), iou_threshold=nms_thresh
    )
    keep_np = keep.numpy()
    out_boxes = boxes.copy()
    changed = np.asarray(scores) == 0.0
    out_boxes[changed] = new_boxes.numpy()[changed]
    return stack.numpy()[keep_np], out_boxes[keep_np], keep
