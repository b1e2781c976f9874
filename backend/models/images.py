"""Small image and mask helpers shared by the foundation models."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["check_image", "image_to_tensor", "resize_masks", "bilinear_matrix"]


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


def bilinear_matrix(out_size: int, in_size: int) -> torch.Tensor:
    """(out, in) float64 matrix of ``F.interpolate(mode="bilinear", align_corners=False)`` along one
    axis: output o reads source s = max(0, (o + 0.5) in/out - 0.5) = i0 + f and takes
    (1 - f) x[i0] + f x[i1], with i1 = min(i0 + 1, in - 1)."""
    source = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    first = source.floor().long().clamp(max=in_size - 1)
    second = (first + 1).clamp(max=in_size - 1)
    fraction = source - first
    rows = torch.arange(out_size)
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    matrix.index_put_((rows, first), 1 - fraction, accumulate=True)
    matrix.index_put_((rows, second), fraction, accumulate=True)
    return matrix
