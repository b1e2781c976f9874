"""Small image and mask helpers shared by the foundation models."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["check_image", "image_to_tensor", "resize_masks"]


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an (H, W, 3) uint8 RGB image and return it unchanged."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", None)
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {shape} and dtype {dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    return image


def image_to_tensor(
    image: np.ndarray, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, size[0], size[1]) float, resized (bicubic, antialiased) and normalised."""
    check_image(image)
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    if tuple(pixels.shape[1:]) != tuple(size):
        pixels = F.interpolate(pixels[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0]
        pixels = pixels.clamp_(0.0, 1.0)
    mean_t = torch.tensor(mean, dtype=pixels.dtype)[:, None, None]
    std_t = torch.tensor(std, dtype=pixels.dtype)[:, None, None]
    return (pixels - mean_t) / std_t


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(K, H, W) masks in [0, 1] -> (K, size[0], size[1]) by area interpolation (soft result)."""
    if tuple(masks.shape[1:]) == tuple(size):
        return masks.float()
    mode = "area" if masks.shape[1] >= size[0] and masks.shape[2] >= size[1] else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(masks[:, None].float(), size=size, mode=mode, **kwargs)[:, 0].clamp_(0.0, 1.0)
