"""The rating task's picture (appendix F, Fig. 21): input image | segmented image with the region in green."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from plugin.errors import PluginError

# Appendix F / Fig. 21: "a segmented image with a green highlighted region".
HIGHLIGHT_RGB = (0, 255, 0)
HIGHLIGHT_ALPHA = 0.5  # share of green in the region's pixels (not given in the paper)
OUTLINE_FRACTION = 1 / 200  # outline width as a share of the shorter image side, at least 1 px
PANEL_GAP_PX = 8  # white gap between the two panels


def _erode(mask: np.ndarray) -> np.ndarray:
    """One step of 4-neighbour binary erosion; pixels outside the image count as background."""
    padded = np.pad(mask, 1, constant_values=False)
    return padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def segment_outline(mask: np.ndarray, width: int) -> np.ndarray:
    """``(H, W)`` bool: the pixels of ``mask`` within ``width`` erosion steps of its border."""
    inner = mask
    for _ in range(width):
        inner = _erode(inner)
    return mask & ~inner


def highlight_segment(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The segmented image: ``mask`` tinted green, its border drawn in solid green.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        mask: ``(H, W)`` bool.

    Returns:
        ``(H, W, 3)`` uint8: outside the mask the image unchanged; inside
        ``(1 - α) * pixel + α * green`` rounded half up, with α = ``HIGHLIGHT_ALPHA``; the outline
        (``OUTLINE_FRACTION`` of the shorter side, at least 1 px) pure green.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match image {image.shape[:2]}")
    mask = mask.astype(bool)
    green = np.asarray(HIGHLIGHT_RGB, dtype=np.float64)
    out = image.copy()
    blended = (1.0 - HIGHLIGHT_ALPHA) * image[mask].astype(np.float64) + HIGHLIGHT_ALPHA * green
    out[mask] = np.floor(blended + 0.5).astype(np.uint8)  # rounded half up
    width = max(1, round(min(mask.shape) * OUTLINE_FRACTION))
    out[segment_outline(mask, width)] = HIGHLIGHT_RGB
    return out


def rating_image(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fig. 21's two panels side by side: input image | white gap | segmented image.

    Returns:
        ``(H, 2W + PANEL_GAP_PX, 3)`` uint8.
    """
    height, width = image.shape[:2]
    canvas = np.full((height, 2 * width + PANEL_GAP_PX, 3), 255, dtype=np.uint8)
    canvas[:, :width] = image
    canvas[:, width + PANEL_GAP_PX :] = highlight_segment(image, mask)
    return canvas


def decode_image(data: bytes, where: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB from image file bytes, EXIF orientation applied (as browsers show it)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.uint8).copy()
    except (OSError, Image.DecompressionBombError, ValueError) as error:
        raise PluginError(f"{where}: not a readable image ({error})") from error
