"""Binary masks -> Label Studio region values (brush RLE, polygons).

* Brush: Label Studio decodes an RLE into RGBA pixels and draws the **alpha** channel, so the
  mask handed to ``label_studio_sdk.converter.brush.mask2rle`` must have foreground **255**
  (a 0/1 mask encodes an invisible alpha of 1). Decoding, one rule for the whole project
  (retraining, export, rating): a pixel is in the region where its alpha is at least
  :data:`VISIBLE_ALPHA` = 128, i.e. visibly painted.
* Polygon: Label Studio polygons are points in percent of the image width/height, one simple
  closed ring per region, no holes. :func:`mask_to_polygons` traces the outer boundary of every
  connected component (OpenCV ``RETR_EXTERNAL``), simplifies it with Douglas-Peucker
  (``tolerance`` pixels) and returns one polygon per component, largest first. Holes are filled
  (a donut becomes a disc); components smaller than ``min_area`` pixels are dropped.
  Contour points are pixel centres, ``(x + 0.5) / W * 100``.
"""

from __future__ import annotations

import cv2
import numpy as np

VISIBLE_ALPHA = 128


def _brush_codec():
    """label-studio-sdk's brush codec, imported on first use: importing it imports the whole SDK
    (seconds), which the model process only needs if a training hook decodes annotations."""
    from label_studio_sdk.converter import brush

    return brush


def _as_bool_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.dtype != bool:
        mask = mask > 0
    return mask


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """A ``(H, W)`` boolean mask -> Label Studio brush RLE (foreground alpha 255)."""
    mask = _as_bool_mask(mask)
    return _brush_codec().mask2rle(mask.astype(np.uint8) * 255)


def rle_to_mask(rle: list[int], height: int, width: int) -> np.ndarray:
    """Label Studio brush RLE -> ``(height, width)`` boolean mask (alpha >= :data:`VISIBLE_ALPHA`).

    Raises:
        ValueError: the RLE does not decode to ``height * width`` RGBA pixels.
    """
    decoded = np.asarray(_brush_codec().decode_rle(list(rle)), dtype=np.uint8)
    if decoded.size != height * width * 4:
        raise ValueError(f"brush RLE holds {decoded.size // 4} pixels, expected {height}x{width}")
    return decoded.reshape(height, width, 4)[:, :, 3] >= VISIBLE_ALPHA


def mask_to_polygons(mask: np.ndarray, tolerance: float = 1.0, min_area: float = 0.0) -> list[list[list[float]]]:
    """Outer boundaries of ``mask``'s connected components as Label Studio polygons.

    Returns a list of polygons, each a list of ``[x, y]`` points in percent of the mask's
    width and height, largest component first. A component needs at least 3 points after
    simplification; thin lines and single pixels yield nothing.
    """
    mask = _as_bool_mask(mask)
    if tolerance < 0 or min_area < 0:
        raise ValueError(f"tolerance and min_area must be >= 0, got {tolerance}, {min_area}")
    height, width = mask.shape
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    components = []
    for contour in contours:
        pixel_count = _component_pixels(contour, mask)
        if pixel_count < max(min_area, 1):
            continue
        simplified = cv2.approxPolyDP(contour, tolerance, closed=True) if tolerance > 0 else contour
        points = simplified.reshape(-1, 2)
        if len(points) < 3:
            continue
        polygon = [[float((x + 0.5) / width * 100.0), float((y + 0.5) / height * 100.0)] for x, y in points.tolist()]
        components.append((pixel_count, polygon))
    components.sort(key=lambda item: -item[0])
    return [polygon for _, polygon in components]


def _component_pixels(contour: np.ndarray, mask: np.ndarray) -> int:
    """Number of foreground pixels inside ``contour`` (holes excluded)."""
    x, y, w, h = cv2.boundingRect(contour)
    canvas = np.zeros((h, w), np.uint8)
    cv2.drawContours(canvas, [contour - np.array([x, y])], -1, 1, thickness=cv2.FILLED)
    return int(np.count_nonzero(canvas & mask[y : y + h, x : x + w]))


def polygon_to_mask(polygon: list[list[float]], height: int, width: int) -> np.ndarray:
    """Rasterise a percent polygon back to a ``(height, width)`` bool mask (inverse of the above)."""
    points = np.array([[x / 100.0 * width - 0.5, y / 100.0 * height - 0.5] for x, y in polygon])
    canvas = np.zeros((height, width), np.uint8)
    cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)
    return canvas.astype(bool)


def mask_to_boxes(mask: np.ndarray, min_area: int = 1) -> list[dict[str, float]]:
    """Bounding boxes of ``mask``'s connected components (8-connected), largest component first.

    Each box is a Label Studio rectangle value without its labels: ``x``, ``y``, ``width``,
    ``height`` in percent of the mask's width and height (pixel edges: a box covering pixel
    columns 2..5 of 10 is x=20, width=40), ``rotation`` 0. Components under ``min_area`` pixels
    are dropped.
    """
    mask = _as_bool_mask(mask)
    height, width = mask.shape
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    boxes = []
    for left, top, box_width, box_height, area in stats[1:count].tolist():  # row 0: the background
        if area < max(min_area, 1):
            continue
        box = {
            "x": left / width * 100.0,
            "y": top / height * 100.0,
            "width": box_width / width * 100.0,
            "height": box_height / height * 100.0,
            "rotation": 0,
        }
        boxes.append((area, box))
    boxes.sort(key=lambda item: -item[0])
    return [box for _, box in boxes]
