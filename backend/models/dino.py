"""Dense self-supervised ViT features: DINO v1 keys with a dense stride, DINOv2 patch tokens."""

from __future__ import annotations

import threading

import numpy as np
import torch
import torch.nn.functional as F

from .images import image_to_tensor

__all__ = ["DinoKeyExtractor", "Dinov2Extractor", "dense_grid_size", "dino_load_size"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dense_grid_size(image_size: int, patch_size: int, stride: int) -> int:
    """Tokens per side of a ViT whose patch embedding moves by ``stride``: (H - P) / S + 1."""
    if stride < 1 or stride > patch_size:
        raise ValueError(f"stride must be in [1, patch size {patch_size}], got {stride}")
    if image_size < patch_size or (image_size - patch_size) % stride:
        raise ValueError(
            f"image size {image_size} does not fit patch {patch_size} with stride {stride}: "
            f"(image_size - patch_size) must be a multiple of the stride"
        )
    return (image_size - patch_size) // stride + 1


def dino_load_size(
    image_shape: tuple[int, ...], image_size: int, patch_size: int, stride: int, keep_aspect: bool
) -> tuple[int, int]:
    """(height, width) DINO sees an image at: ``image_size`` squared, or with the aspect ratio kept.

    ``keep_aspect`` (Amir et al.'s extractor, which the zero-guidance authors use: the shorter side
    resized to ``image_size``): the longer side in proportion, trimmed down to the last whole
    stride step, (side - P) a multiple of S, so that the token grid covers the image exactly.
    """
    dense_grid_size(image_size, patch_size, stride)  # the shorter side must fit exactly
    if not keep_aspect:
        return image_size, image_size
    height, width = int(image_shape[0]), int(image_shape[1])
    short, long = sorted((height, width))
    long_side = max(image_size, round(image_size * long / short))
    long_side -= (long_side - patch_size) % stride
    return (image_size, long_side) if height <= width else (long_side, image_size)


class DinoKeyExtractor:
    """DINO v1 "key" features of the last attention block, with a dense patch stride.

    Following Amir et al. (Deep ViT Features as Dense Visual Descriptors), the patch embedding
    convolution moves by ``stride`` < patch size, the position embeddings are resampled once per
    grid so that token i keeps the position of old coordinate i * stride / patch
    (bicubic, ``align_corners=True``), and the keys of the last block, heads concatenated, are the
    features. The last block's attention and MLP never run.

    Args:
        model: a timm ``VisionTransformer`` with one class token (DINO v1).
        name: model identity, for versions and caches.
    """

    def __init__(self, model, name: str):
        self.model = model.eval()
        self.name = name
        self.patch_size: int = model.patch_embed.proj.kernel_size[0]
        self.base_grid: int = int(round((model.pos_embed.shape[1] - model.num_prefix_tokens) ** 0.5))
        self.embed_dim: int = model.embed_dim
        self._pos_cache: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()
        if model.num_prefix_tokens != 1 or getattr(model, "no_embed_class", False):
            raise ValueError("DinoKeyExtractor expects a ViT with one class token inside pos_embed (DINO v1)")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _position_embeddings(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embeddings resampled to ``grid`` (rows, columns), bicubic in float32, in the model's dtype."""
        with self._lock:
            if grid not in self._pos_cache:
                pos = self.model.pos_embed.float()
                cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
                patch_pos = patch_pos.reshape(1, self.base_grid, self.base_grid, -1).permute(0, 3, 1, 2)
                patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=True)
                patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
                self._pos_cache[grid] = torch.cat([cls_pos, patch_pos], dim=1).detach().to(self.dtype)
            return self._pos_cache[grid]

    def load_size(self, image_shape: tuple[int, ...], image_size: int, stride: int, keep_aspect: bool = False):
        """The (height, width) this extractor resizes an image of ``image_shape`` to (:func:`dino_load_size`)."""
        return dino_load_size(image_shape, image_size, self.patch_size, stride, keep_aspect)

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, image_size: int, stride: int, keep_aspect: bool = False) -> torch.Tensor:
        """Key features (gh, gw, C), float32, of the image resized to :meth:`load_size`
        (``image_size`` squared, or its shorter side ``image_size`` with ``keep_aspect``), a grid of
        g = (side - P) / S + 1 tokens a side."""
        height, width = self.load_size(image.shape, image_size, stride, keep_aspect)
        grid = (dense_grid_size(height, self.patch_size, stride), dense_grid_size(width, self.patch_size, stride))
        model = self.model
        pixels = image_to_tensor(image, (height, width), IMAGENET_MEAN, IMAGENET_STD)
        pixels = pixels.to(self.device, self.dtype)
        proj = model.patch_embed.proj
        x = F.conv2d(pixels[None], proj.weight, proj.bias, stride=stride)  # (1, C, gh, gw)
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self._position_embeddings(grid)
        x = model.norm_pre(x)
        for block in model.blocks[:-1]:
            x = block(x)
        last = model.blocks[-1]
        qkv = last.attn.qkv(last.norm1(x))  # (1, N, 3 * C)
        batch, tokens, _ = qkv.shape
        heads = last.attn.num_heads
        keys = qkv.reshape(batch, tokens, 3, heads, -1)[:, :, 1]  # (1, N, heads, head_dim)
        if hasattr(last.attn, "k_norm"):
            keys = last.attn.k_norm(keys.transpose(1, 2)).transpose(1, 2)
        keys = keys.reshape(batch, tokens, -1)[0, 1:]  # drop the class token
        return keys.reshape(*grid, -1).float()


class Dinov2Extractor:
    """DINOv2 patch tokens (after the final norm), the frozen encoder of FMbSeg Stage 2.

    Args:
        model: a timm DINOv2 ``VisionTransformer`` built with ``dynamic_img_size=True``.
        name: model identity.
    """

    def __init__(self, model, name: str):
        self.model = model.eval()
        self.name = name
        self.patch_size: int = model.patch_embed.patch_size[0]
        self.embed_dim: int = model.embed_dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, image_size: int) -> torch.Tensor:
        """Patch features (g, g, C), float32, of the image resized to ``image_size`` squared, g = size // patch."""
        return self.batch([image], image_size)[0]

    @torch.inference_mode()
    def batch(self, images: list[np.ndarray], image_size: int) -> torch.Tensor:
        """Patch features (B, g, g, C), float32, of several images."""
        if image_size % self.patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of the patch size {self.patch_size}")
        pixels = torch.stack(
            [image_to_tensor(im, (image_size, image_size), IMAGENET_MEAN, IMAGENET_STD) for im in images]
        ).to(self.device, self.dtype)
        tokens = self.model.forward_features(pixels)[:, self.model.num_prefix_tokens :]
        grid = image_size // self.patch_size
        return tokens.reshape(len(images), grid, grid, -1).float()
