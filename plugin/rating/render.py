"""The rating task's picture (appendix F, Fig. 21): input image | segmented image with the region highlighted.

The paper shows "a segmented image with a green highlighted region". A green tint is not
visible on every background (on green the region and its surroundings stay alike) and changes
the colours the label may name (a red object tinted green turns olive). Here the region keeps
its own pixels, the rest of the image is dimmed to ``DIM_FACTOR`` of its brightness, and the
region is outlined outside its border by two bands: black next to the region, white around it.
The white band stands out against the dimmed surroundings whatever their colour, and the black
band against the white one, so the outline is visible on any background.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

from plugin.errors import PluginError

DIM_FACTOR = 0.35  # brightness kept outside the region (and its outline)
OUTLINE_INNER_RGB = (0, 0, 0)  # the band next to the region
OUTLINE_OUTER_RGB = (255, 255, 255)  # the band around it
OUTLINE_FRACTION = 1 / 60  # width of each band as a share of the shorter image side
OUTLINE_MIN_PX = 2  # each band at least this wide
PANEL_GAP_PX = 8  # white gap between the two panels


def outline_width(shape: tuple[int, int]) -> int:
    """Width in pixels of each of the outline's two bands for an image of ``(H, W)``."""
    return max(OUTLINE_MIN_PX, round(min(shape) * OUTLINE_FRACTION))


def outline_bands(mask: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(inner, outer)``: ``(H, W)`` bool bands outside ``mask``.

    ``inner`` holds the pixels at a Euclidean distance in ``(0, width]`` from the mask, ``outer``
    those in ``(width, 2 * width]``. Neither touches the mask's own pixels.
    """
    if not mask.any():
        empty = np.zeros(mask.shape, dtype=bool)
        return empty, empty.copy()
    distance = ndimage.distance_transform_edt(~mask)
    inner = (distance > 0) & (distance <= width)
    outer = (distance > width) & (distance <= 2 * width)
    return inner, outer


def highlight_segment(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The segmented image: the region as it is, the rest dimmed, a two-tone outline around it.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        mask: ``(H, W)`` bool.

    Returns:
        ``(H, W, 3)`` uint8: inside the mask the image unchanged; outside ``DIM_FACTOR * pixel``
        rounded half up; over that, the `outline_bands` of `outline_width` in
        ``OUTLINE_INNER_RGB`` (black, next to the region) and ``OUTLINE_OUTER_RGB`` (white).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match image {image.shape[:2]}")
    mask = mask.astype(bool)
    out = np.floor(image.astype(np.float64) * DIM_FACTOR + 0.5).astype(np.uint8)  # rounded half up
    out[mask] = image[mask]
    inner, outer = outline_bands(mask, outline_width(mask.shape))
    out[inner] = OUTLINE_INNER_RGB
    out[outer] = OUTLINE_OUTER_RGB
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
