"""Reading images and writing results for the command lines: COCO RLE, label PNGs, overlays."""

from __future__ import annotations

import colorsys
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

__all__ = [
    "ImageReadError",
    "read_image",
    "ReadableImages",
    "encode_rle",
    "decode_rle",
    "palette",
    "draw_overlay",
    "write_json",
    "IMAGE_SUFFIXES",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 64_000_000


class ImageReadError(ValueError):
    """An image file that cannot be used: missing, corrupt, or too large."""


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a file, EXIF orientation applied, with a decompression-bomb guard."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.width * image.height > max_pixels:
                raise ImageReadError(
                    f"{path}: {image.width}x{image.height} pixels exceeds the limit of {max_pixels} pixels"
                )
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except (OSError, Image.DecompressionBombError, ValueError) as error:
        raise ImageReadError(f"{path}: not a readable image ({error})") from error


class ReadableImages:
    """``for path, image in ReadableImages(paths, "task"):`` with a progress bar; an unreadable
    image is logged and counted in :attr:`failures`, and the loop goes on."""

    def __init__(self, paths: Sequence[Path], description: str, logger: logging.Logger | None = None):
        self.paths = list(paths)
        self.description = description
        self.logger = logger or logging.getLogger(__name__)
        self.failures = 0

    def __iter__(self) -> Iterator[tuple[Path, np.ndarray]]:
        from tqdm import tqdm

        for path in tqdm(self.paths, desc=self.description, unit="image"):
            try:
                image = read_image(path)
            except ImageReadError as error:
                self.logger.error("skipped: %s", error)
                self.failures += 1
                continue
            yield Path(path), image


def encode_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of an (H, W) bool mask: column-major run lengths, starting with 0s."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    boundaries = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(boundaries).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def decode_rle(rle: dict) -> np.ndarray:
    """Inverse of :func:`encode_rle`."""
    height, width = rle["size"]
    values = np.zeros(len(rle["counts"]), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, rle["counts"])
    if flat.size != height * width:
        raise ValueError(f"RLE counts sum to {flat.size}, expected {height * width}")
    return flat.reshape((height, width), order="F")


def palette(count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct colours (golden-ratio hues)."""
    colours = []
    for i in range(count):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def _label_anchor(mask: np.ndarray) -> tuple[int, int]:
    """The point of the mask farthest from its border (x, y): where its text reads best."""
    distance = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y)


def draw_overlay(
    image: np.ndarray,
    masks: Sequence[np.ndarray],
    texts: Sequence[str],
    banner: str | None = None,
    alpha: float = 0.5,
) -> Image.Image:
    """The image with each mask coloured and its text written on it; an optional banner on top."""
    base = image.astype(np.float32)
    colours = palette(len(masks))
    for mask, colour in zip(masks, colours):
        base[mask] = (1 - alpha) * base[mask] + alpha * np.asarray(colour, dtype=np.float32)
    for mask in masks:
        edges = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        base[edges] = 255
    canvas = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    font_size = max(10, min(canvas.width, canvas.height) // 30)
    font = ImageFont.load_default(size=font_size)
    for mask, text, colour in zip(masks, texts, colours):
        if not mask.any() or not text:
            continue
        x, y = _label_anchor(mask)
        box = draw.textbbox((x, y), text, font=font, anchor="mm")
        draw.rectangle(box, fill=(0, 0, 0))
        draw.text((x, y), text, fill=colour, font=font, anchor="mm")
    if banner:
        box = draw.textbbox((4, 4), banner, font=font)
        draw.rectangle(box, fill=(200, 0, 0))
        draw.text((4, 4), banner, fill=(255, 255, 255), font=font)
    return canvas


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write JSON atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump(payload, handle, indent=1)
        temporary = handle.name
    os.replace(temporary, path)
    return path
