"""Decoded regions -> COCO instances and Ultralytics YOLO-seg labels.

Neither label-studio-sdk's converter nor a registry package does this for brushes the way the
export needs it: the SDK's ``BRUSH_TO_COCO`` writes only polygons (one annotation per contour, its
own alpha > 0 rule, area from the contour) and its YOLO export skips brushes. So the masks come
from the backend's one decoder (``plugin.regions``), RLE, area and box from ``pycocotools``, and
the outlines from OpenCV.

Polygons (:func:`mask_polygons`) follow the **pixel edges**: a vertex ``(x, y)`` is a pixel corner,
pixel ``(c, r)`` spans ``[c, c + 1] x [r, r + 1]``. That is the convention of COCO coordinates
(``pycocotools`` fills a pixel whose centre is inside), so a COCO polygon decodes back to exactly
its piece of the mask, holes filled; and normalised by the image size, 0 and 1 are the image's
borders at any resolution, which is what YOLO's normalised points mean. (Ultralytics' own
``convert_segment_masks_to_yolo_seg`` writes pixel centres, half a pixel inside the edge.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from backend.service.regions import Region

COCO_MASKS = ("rle", "polygon")


def mask_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Outer boundary of each 8-connected piece of ``mask``, along the pixel edges.

    Returns one ``(N, 2)`` int array of ``(x, y)`` pixel corners per piece (N >= 4, no repeated or
    collinear points; a piece touching another only at a corner shares that vertex). Holes are
    not represented: filling every polygon gives the mask with its holes filled.

    How: OpenCV traces the outer contours of the mask scaled by two, where a pixel's four
    sub-pixels have centres a quarter pixel inside its edges; rounding them to the nearest
    corner (``(s + 1) // 2``) puts the contour on the edges.
    """
    mask = np.asarray(mask, dtype=bool)
    doubled = np.repeat(np.repeat(mask.astype(np.uint8), 2, axis=0), 2, axis=1)
    contours, _ = cv2.findContours(doubled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        points = (contour.reshape(-1, 2).astype(np.int64) + 1) // 2
        points = points[np.any(points != np.roll(points, 1, axis=0), axis=1)]
        before, after = points - np.roll(points, 1, axis=0), np.roll(points, -1, axis=0) - points
        points = points[before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0] != 0]
        if len(points) >= 3:
            polygons.append(points)
    return polygons


def rle_of(mask: np.ndarray) -> dict:
    """``pycocotools`` compressed RLE of a bool mask (column-major, as COCO stores masks)."""
    return coco_mask.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))


def coco_segmentation(mask: np.ndarray, masks: str, rle: dict | None = None) -> dict | list[list[float]]:
    """A COCO ``segmentation``: compressed RLE ``{"size": [H, W], "counts": "..."}`` (exact) or
    a list of polygons ``[[x1, y1, x2, y2, ...], ...]``, one per piece (holes filled).

    ``rle``: the mask's :func:`rle_of`, if already computed."""
    if masks == "rle":
        rle = rle or rle_of(mask)
        return {"size": [int(size) for size in rle["size"]], "counts": rle["counts"].decode("ascii")}
    if masks == "polygon":
        return [[float(value) for value in polygon.reshape(-1)] for polygon in mask_polygons(mask)]
    raise ValueError(f"COCO masks must be one of {COCO_MASKS}, not {masks!r}")


def yolo_lines(class_index: int, mask: np.ndarray) -> list[str]:
    """Ultralytics YOLO-seg lines ``class x1 y1 x2 y2 ...`` of a mask: one line per piece, points
    normalised by the image width and height (6 decimals), holes filled."""
    height, width = mask.shape
    lines = []
    for polygon in mask_polygons(mask):
        scaled = polygon / np.array([width, height], dtype=np.float64)
        lines.append(" ".join([str(class_index), *(_decimal(value) for value in scaled.reshape(-1))]))
    return lines


def _decimal(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".")


@dataclass
class Categories:
    """The label -> category table, the same for every task of a project.

    First the labels of the config's BrushLabels tags in config order (each label once: e.g. the
    zero-guidance tag's ``segment``, then the class-mask tag's classes), then labels a region
    carries that the config does not list (a label removed since), in the order they are met.
    ``supercategory`` is the name of the tag that lists the label.

    A zero-guidance tag's labels are a colour palette (backend/service/palette.py), not classes:
    every label of such a tag (``segment_controls``: tag name -> its category, the first label)
    is that one category.
    """

    names: list[str] = field(default_factory=list)
    supercategories: list[str] = field(default_factory=list)
    segment_controls: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_controls(
        cls, controls: Mapping[str, Sequence[str]], segment_controls: Mapping[str, str] | None = None
    ) -> "Categories":
        """``controls``: BrushLabels tag name -> its labels, in config order; ``segment_controls``:
        the zero-guidance tags among them -> the category of all their labels."""
        categories = cls(segment_controls=dict(segment_controls or {}))
        for control, labels in controls.items():
            for label in labels:
                categories.index(label, control)
        return categories

    def index(self, label: str, control: str) -> int:
        """The 0-based index of ``label``'s category (appended if new)."""
        label = self.segment_controls.get(control, label)
        if label not in self.names:
            self.names.append(label)
            self.supercategories.append(control)
        return self.names.index(label)

    def coco(self) -> list[dict]:
        """COCO ``categories``: ids 1..N in table order."""
        return [
            {"id": index + 1, "name": name, "supercategory": supercategory}
            for index, (name, supercategory) in enumerate(zip(self.names, self.supercategories))
        ]


def region_attributes(region: Region, text_controls: Sequence[str], rating: int | None) -> dict:
    """COCO ``attributes`` of a region: ``text`` (its per-region TextAreas' texts, joined by a
    newline, in config order) and ``rating`` (0-3), each only when present."""
    texts = [text for control in text_controls for text in region.texts.get(control, [])]
    texts += [text for control, values in region.texts.items() if control not in text_controls for text in values]
    attributes: dict = {}
    if texts:
        attributes["text"] = "\n".join(texts)
    if rating is not None:
        attributes["rating"] = rating
    return attributes


def coco_annotation(
    annotation_id: int, image_id: int, category_id: int, mask: np.ndarray, masks: str, attributes: dict, extra: dict
) -> dict:
    """One COCO instance: segmentation as ``masks`` says, ``area`` (pixels) and ``bbox``
    (``[x, y, w, h]``) from the mask itself, ``iscrowd`` 0."""
    rle = rle_of(mask)
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": coco_segmentation(mask, masks, rle),
        "area": int(coco_mask.area(rle)),
        "bbox": [float(value) for value in coco_mask.toBbox(rle)],
        "iscrowd": 0,
        "attributes": attributes,
        **extra,
    }
