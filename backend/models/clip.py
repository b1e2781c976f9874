"""CLIP (open_clip) as the two methods use it: text, whole images, segments and dense patches."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .images import image_to_tensor, resize_masks
from .segment_attention import run_masked_block, token_masks
from .settings import DenseClipSettings, SegmentEncoding

__all__ = ["SegmentEncoding", "DenseClipSettings", "DenseClipFeatures", "ClipModel"]


@dataclass
class DenseClipFeatures:
    """Patch features of one image stitched from crops.

    Attributes:
        patches: (h, w, D) unit-norm patch embeddings in CLIP's joint space, covering the image.
        crop_embeddings: (C, D) unit-norm class-token embeddings, one per crop, row-major.
        crop_boxes: (C, 4) crop boxes (x0, y0, x1, y1) in the oversampled image.
        image_size: side of the oversampled image the map covers.
    """

    patches: torch.Tensor
    crop_embeddings: torch.Tensor
    crop_boxes: np.ndarray
    image_size: int


class ClipModel:
    """An open_clip CLIP model with the operations both methods need.

    Args:
        model: an open_clip ``CLIP`` in eval mode, its weights in the dtype it computes in (float32
            or bfloat16, see :mod:`backend.models.precision`).
        tokenizer: its tokenizer (``open_clip.get_tokenizer``).
        name: architecture and weights, for model versions and caches.
        mean, std: the model's image normalisation.

    Every embedding returned is float32, normalised in float32, whatever the weights' dtype.
    """

    def __init__(self, model, tokenizer, name: str, mean: Sequence[float], std: Sequence[float]):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.mean = tuple(mean)
        self.std = tuple(std)
        visual = model.visual
        self.input_size: int = visual.image_size[0]
        self.patch_size: int = visual.patch_size[0]
        self.grid_size: tuple[int, int] = tuple(visual.grid_size)
        self.num_blocks: int = len(visual.transformer.resblocks)
        self._text_cache: dict[str, torch.Tensor] = {}
        self._text_lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def embed_dim(self) -> int:
        return int(self.model.visual.output_dim)

    # ------------------------------------------------------------------ text
    @torch.inference_mode()
    def encode_text(self, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Unit-norm text embeddings, (n, D), cached per prompt.

        Sequences are trimmed to the longest prompt of a batch instead of padded to the context
        length: exact for CLIP's causal text tower, and about 10x faster on CPU.
        """
        prompts = list(prompts)
        with self._text_lock:
            missing = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            embeddings = self._encode_text_uncached(chunk)
            with self._text_lock:
                self._text_cache.update(zip(chunk, embeddings))
        with self._text_lock:
            if not prompts:
                return torch.empty(0, self.embed_dim, device=self.device, dtype=torch.float32)
            return torch.stack([self._text_cache[p] for p in prompts])

    def _encode_text_uncached(self, prompts: list[str]) -> torch.Tensor:
        model = self.model
        tokens = self.tokenizer(prompts).to(self.device)
        if getattr(model, "text_pool_type", "argmax") != "argmax" or not hasattr(model, "token_embedding"):
            return F.normalize(model.encode_text(tokens).float(), dim=-1)
        # The end-of-text token has the largest id: its position is the last one that matters.
        length = int(tokens.argmax(dim=-1).max()) + 1
        tokens = tokens[:, :length]
        x = model.token_embedding(tokens) + model.positional_embedding[:length]
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        projection = model.text_projection
        pooled = projection(pooled) if isinstance(projection, torch.nn.Linear) else pooled @ projection
        return F.normalize(pooled.float(), dim=-1)

    # ----------------------------------------------------------------- image
    def _pixels(self, image: np.ndarray, size: int | None = None) -> torch.Tensor:
        size = size or self.input_size
        return image_to_tensor(image, (size, size), self.mean, self.std).to(self.device, self.dtype)

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled tokens -> unit-norm float32 embeddings in the joint space."""
        proj = self.model.visual.proj
        return F.normalize((pooled @ proj if proj is not None else pooled).float(), dim=-1)

    @torch.inference_mode()
    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        """Unit-norm embedding (D,) of the whole image, resized (not cropped) to CLIP's input."""
        return F.normalize(self.model.encode_image(self._pixels(image)[None]).float(), dim=-1)[0]

    # -------------------------------------------------------------- segments
    @torch.inference_mode()
    def segment_prefix(self, image: np.ndarray, settings: SegmentEncoding = SegmentEncoding()) -> torch.Tensor:
        """The tokens (1, L, C) entering the first masked block: the part of
        :meth:`encode_segments` that depends on the image alone. Pass it back as ``prefix`` to
        encode more segments of the same image without running those blocks again."""
        if settings.masked_layers > self.num_blocks:
            raise ValueError(f"masked_layers={settings.masked_layers} exceeds the model's {self.num_blocks} blocks")
        visual = self.model.visual
        tokens = visual._embeds(self._pixels(image)[None])
        for block in visual.transformer.resblocks[: self.num_blocks - settings.masked_layers]:
            tokens = block(tokens)
        return tokens

    @torch.inference_mode()
    def encode_segments(
        self,
        image: np.ndarray,
        masks: np.ndarray | torch.Tensor,
        settings: SegmentEncoding = SegmentEncoding(),
        prefix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One unit-norm embedding per segment, (K, D) (zero-guidance section 3.2).

        The image is resized (not cropped) to CLIP's input so that every segment is seen; the
        masks follow the same geometry. With ``method="attention"`` the blocks before the first
        masked one run once per image and the masked blocks run for all K segments as one batch.

        Args:
            image: (H, W, 3) uint8 RGB.
            masks: (K, H, W) soft (float in [0, 1]) or hard (bool) masks at image resolution.
            settings: see :class:`SegmentEncoding`.
            prefix: :meth:`segment_prefix` of this image with these settings, if already computed.
        """
        masks_t = torch.as_tensor(np.asarray(masks) if not torch.is_tensor(masks) else masks)
        if masks_t.ndim != 3 or masks_t.shape[1:] != image.shape[:2]:
            raise ValueError(f"masks must be (K, H, W) with (H, W) = {image.shape[:2]}, got {tuple(masks_t.shape)}")
        if masks_t.shape[0] == 0:
            return torch.empty(0, self.embed_dim, device=self.device, dtype=torch.float32)
        masks_t = masks_t.float().clamp(0, 1).to(self.device)
        if settings.method == "crop":
            return self._encode_crops(image, masks_t)
        visual = self.model.visual
        blocks = visual.transformer.resblocks
        first_masked = self.num_blocks - settings.masked_layers
        tokens = self.segment_prefix(image, settings) if prefix is None else prefix
        key_weights = token_masks(resize_masks(masks_t, (self.input_size, self.input_size)), self.grid_size)
        # (1, L, C): every segment enters the first masked block with the image's own tokens, so
        # that block projects them and attends unmasked once; the masks make the K rows differ
        pooled_by_class_token = visual.attn_pool is None and visual.pool_type == "tok"
        masked_blocks = blocks[first_masked:]
        for index, block in enumerate(masked_blocks):
            tokens = run_masked_block(
                block,
                tokens,
                key_weights,
                subtract_global=settings.subtract_global,
                sigma_squared=settings.sigma_squared,
                # the pooled embedding reads the class token only: skip the rest of the last block
                class_token_only=pooled_by_class_token and index == len(masked_blocks) - 1,
            )
        pooled, _ = visual._pool(tokens.expand(masks_t.shape[0], -1, -1))  # (K, ...) even with no masked block
        return self._project(pooled)

    def _encode_crops(self, image: np.ndarray, masks: torch.Tensor) -> torch.Tensor:
        """Crop-and-mask baseline: each segment's bounding box, background set to the mean colour."""
        pixels = image_to_tensor(image, image.shape[:2], self.mean, self.std).to(self.device)  # (3, H, W) float32
        crops = []
        for mask in masks:
            ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
            if len(ys) == 0:
                ys, xs = torch.nonzero(mask > 0, as_tuple=True)
            if len(ys) == 0:
                raise ValueError("an empty mask cannot be encoded")
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
            # Normalised pixels are zero at the mean colour: multiplying by the mask fills the background.
            crop = (pixels * mask)[:, y0:y1, x0:x1]
            crops.append(F.interpolate(crop[None], size=(self.input_size,) * 2, mode="bicubic", align_corners=False)[0])
        return F.normalize(self.model.encode_image(torch.stack(crops).to(self.dtype)).float(), dim=-1)

    # ----------------------------------------------------------------- dense
    @torch.inference_mode()
    def dense_features(self, image: np.ndarray, settings: DenseClipSettings = DenseClipSettings()) -> DenseClipFeatures:
        """Patch features aligned with text, stitched from high-resolution crops (FMbSeg app. 1.1).

        The image is resized to ``settings.image_size`` (rounded up to whole crops) and cut into
        non-overlapping crops of CLIP's input size, processed as one batch. Patch tokens pass the
        last block as ``settings.last_block`` says; class tokens take the normal path.
        """
        crops_per_side = max(1, math.ceil(settings.image_size / self.input_size))
        side = crops_per_side * self.input_size
        pixels = self._pixels(image, side)  # (3, side, side)
        crops, boxes = [], []
        for row in range(crops_per_side):
            for col in range(crops_per_side):
                y0, x0 = row * self.input_size, col * self.input_size
                crops.append(pixels[:, y0 : y0 + self.input_size, x0 : x0 + self.input_size])
                boxes.append((x0, y0, x0 + self.input_size, y0 + self.input_size))
        visual = self.model.visual
        blocks = visual.transformer.resblocks
        tokens = visual._embeds(torch.stack(crops))
        for block in blocks[:-1]:
            tokens = block(tokens)
        last = blocks[-1]
        pooled, _ = visual._pool(last(tokens))
        crop_embeddings = self._project(pooled)
        if settings.last_block == "value":
            attn = last.attn
            width = tokens.shape[-1]
            value_weight = attn.in_proj_weight[2 * width :]
            value_bias = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
            values = F.linear(last.ln_1(tokens), value_weight, value_bias)
            tokens = tokens + last.ls_1(F.linear(values, attn.out_proj.weight, attn.out_proj.bias))
        patches = self._project(visual.ln_post(tokens[:, 1:]))  # (C, h*w, D)
        grid_h, grid_w = self.grid_size
        patches = patches.reshape(crops_per_side, crops_per_side, grid_h, grid_w, -1)
        patches = patches.permute(0, 2, 1, 3, 4).reshape(crops_per_side * grid_h, crops_per_side * grid_w, -1)
        return DenseClipFeatures(patches, crop_embeddings, np.asarray(boxes), side)
