"""Tiled FMbSeg base prediction for large images (``python -m backend.prelabel --tiles 518``).

The backend shows FMbSeg an image of at most ``MODEL_MAX_PIXELS`` (1 MP), and FMbSeg squashes it
to DINOv2's ``dinov2_image_size`` (518 px): in a 4000x3000 photo an object of 40 px becomes 5 px,
then 0.7 of a 14-px patch, and is lost. In tiled mode each class-mask tag of the label config is
predicted on the image at its original resolution, cut into overlapping square tiles of
``size`` px (by default the model's resolution, so each tile is seen pixel for pixel), each
tile predicted by FMbSeg's Stage 2 base prediction (the alignment checkpoint, no SAM refinement),
and the tiles' label maps stitched: every pixel takes the label of the tile whose *core* holds it
(the tile minus half of each overlap), so no pixel is decided at a tile's border.

Only with an alignment checkpoint: Stage 1 (SAM, CLIP crops) costs tens of seconds a tile on a CPU.
Tiled predictions carry their own model version (the backend's, plus ``-tiled<size>o<overlap>``);
zero-guidance tags are predicted as by ``/predict``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..service.images import LoadedImage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileSpec:
    size: int = 518
    overlap: int = 64

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"tiles must be at least 32 px, got {self.size}")
        if not 0 <= self.overlap <= self.size // 2:
            raise ValueError(f"the tile overlap must be in [0, {self.size // 2}], got {self.overlap}")

    @classmethod
    def parse(cls, text: str) -> "TileSpec":
        """``"518"`` or ``"518:64"`` (size:overlap, pixels)."""
        size, _, overlap = str(text).partition(":")
        return cls(int(size), int(overlap) if overlap else cls.overlap)

    @property
    def suffix(self) -> str:
        return f"tiled{self.size}o{self.overlap}"


def tile_starts(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``size`` covering ``length`` with at least ``overlap`` shared."""
    if length <= size:
        return [0]
    stride = size - overlap
    starts = list(range(0, length - size, stride))
    starts.append(length - size)
    return starts


def core_bounds(starts: list[int], size: int, length: int) -> list[tuple[int, int]]:
    """For each tile, the part it decides: from the middle of its overlap with the previous tile to
    the middle of its overlap with the next one (the whole tile at the image's edges)."""
    bounds = []
    for index, start in enumerate(starts):
        end = min(start + size, length)
        low = start if index == 0 else (start + min(starts[index - 1] + size, length)) // 2
        high = end if index == len(starts) - 1 else (starts[index + 1] + end) // 2
        bounds.append((low, high))
    return bounds


def tile_boxes(
    width: int, height: int, spec: TileSpec
) -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """``[((x0, y0, x1, y1) of the tile, (x0, y0, x1, y1) of its core), ...]`` row by row."""
    xs, ys = tile_starts(width, spec.size, spec.overlap), tile_starts(height, spec.size, spec.overlap)
    x_cores, y_cores = core_bounds(xs, spec.size, width), core_bounds(ys, spec.size, height)
    boxes = []
    for y, (cy0, cy1) in zip(ys, y_cores):
        for x, (cx0, cx1) in zip(xs, x_cores):
            boxes.append(((x, y, min(x + spec.size, width), min(y + spec.size, height)), (cx0, cy0, cx1, cy1)))
    return boxes


def stitch(height: int, width: int, boxes: list, label_maps: list[np.ndarray], no_label: int = -1) -> np.ndarray:
    """The tiles' label maps in one ``(height, width)`` map, each pixel from the tile whose core holds it."""
    stitched = np.full((height, width), no_label, dtype=np.int64)
    for ((x0, y0, _, _), (cx0, cy0, cx1, cy1)), labels in zip(boxes, label_maps):
        stitched[cy0:cy1, cx0:cx1] = labels[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return stitched


class TiledClassMasks:
    """A class-mask adapter whose FMbSeg call is tiled (everything else is the adapter's own)."""

    def __init__(self, adapter: Any, spec: TileSpec, full_resolution: Callable[[LoadedImage], LoadedImage]) -> None:
        self._adapter = adapter
        self.spec = spec
        self._full_resolution = full_resolution

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)

    def __repr__(self) -> str:
        return f"TiledClassMasks({self._adapter!r}, {self.spec})"

    def version_inputs(self) -> dict[str, Any]:
        return {**self._adapter.version_inputs(), "tiles": {"size": self.spec.size, "overlap": self.spec.overlap}}

    def predict_regions(self, image: LoadedImage, cache: dict) -> list[dict]:
        adapter = self._adapter
        predictor = adapter.runtime.fmbseg(adapter.settings, adapter.project)
        trained = predictor.trained_classes()
        if trained is None:
            raise ValueError(
                "tiled FMbSeg predicts with an alignment checkpoint (Stage 2 base); this project has none "
                "(train one, or set FMBSEG_CHECKPOINT), or run without --tiles"
            )
        classes, open_vocabulary = (adapter.classes, True) if adapter.open_vocabulary else (list(trained), False)
        full = self._full_resolution(image)
        height, width = full.pixels.shape[:2]
        boxes = tile_boxes(width, height, self.spec)
        label_maps = []
        for (x0, y0, x1, y1), _ in boxes:
            with adapter.runtime.inference_lock:
                output = predictor.predict(
                    np.ascontiguousarray(full.pixels[y0:y1, x0:x1]),
                    classes=classes,
                    refine=False,
                    open_vocabulary=open_vocabulary,
                )
            # the tile's class indices -> indices into ``classes`` (a tile may return fewer classes)
            lookup = np.array([classes.index(c) if c in classes else -1 for c in output.classes] + [-1], dtype=np.int64)
            label_maps.append(lookup[np.asarray(output.label_map, dtype=np.int64)])
        label_map = stitch(height, width, boxes, label_maps)
        logger.debug("tiled FMbSeg: %d tiles of %d px over %dx%d", len(boxes), self.spec.size, width, height)
        results: list[dict] = []
        for prompt, label in adapter.vocabulary.prompt_to_label.items():
            if prompt not in classes:
                continue  # reported by the adapter's own vocabulary check (closed setting)
            mask = label_map == classes.index(prompt)
            if not mask.any() or int(mask.sum()) < adapter.min_area:
                continue
            results.extend(
                adapter.shape_results(full, mask, label, score=None)[: adapter.label_options[label].max_regions]
            )
        return results
