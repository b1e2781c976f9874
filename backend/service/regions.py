"""Label Studio results -> regions: the one decoder of brush and polygon annotations.

Used by retraining (``backend.service.retraining``) and by ``plugin/`` (export, rating), so both see
the same mask for one annotation. All results of one region share an ``id``; a per-region
TextArea or Choices links to its brush or polygon by that id::

    {"id": "r1", "from_name": "segment", "type": "brushlabels",
     "original_width": W, "original_height": H,
     "value": {"format": "rle", "rle": [...], "brushlabels": ["segment"]}}
    {"id": "r1", "from_name": "caption", "type": "textarea", "value": {"text": ["a cat"]}}
    {"id": "r1", "from_name": "rating", "type": "choices", "value": {"choices": ["2"]}}

Brushes decode by the one alpha rule of :func:`backend.service.masks.rle_to_mask`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .masks import VISIBLE_ALPHA, polygon_to_mask, rle_to_mask

__all__ = ["VISIBLE_ALPHA", "Region", "decode_brush", "regions_from_results"]

BRUSH_TYPES = ("brushlabels", "brush")
POLYGON_TYPES = ("polygonlabels", "polygon")


@dataclass
class Region:
    """One brush or polygon region of an annotation or prediction.

    Attributes:
        id: the region id shared by its results.
        control: ``from_name`` of the tag that drew it (BrushLabels, PolygonLabels).
        labels: its labels.
        mask: ``(original_height, original_width)`` bool, True inside the region.
        texts: per-region TextArea answers, ``{control name: [text, ...]}``.
        choices: per-region Choices answers (e.g. the 0-3 rating), ``{control name: [choice, ...]}``.
    """

    id: str
    control: str
    labels: list[str]
    mask: np.ndarray
    texts: dict[str, list[str]] = field(default_factory=dict)
    choices: dict[str, list[str]] = field(default_factory=dict)


def decode_brush(value: Mapping, height: int, width: int) -> np.ndarray:
    """A brush value (``format: rle``) -> ``(height, width)`` bool mask.

    Raises:
        ValueError: another format, or an RLE of the wrong size.
    """
    if value.get("format", "rle") != "rle" or "rle" not in value:
        raise ValueError(f"brush format {value.get('format')!r} is not supported (expected 'rle')")
    return rle_to_mask(value["rle"], height, width)


def _shape(item: Mapping) -> tuple[np.ndarray, list[str]] | None:
    """The mask and labels of a brush or polygon result; ``None`` for other results."""
    kind = str(item.get("type", "")).lower()
    value = item.get("value") or {}
    if kind not in BRUSH_TYPES + POLYGON_TYPES:
        return None
    try:
        height, width = int(item["original_height"]), int(item["original_width"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"region {item.get('id')}: no original_width/original_height") from None
    if height < 1 or width < 1:
        raise ValueError(f"region {item.get('id')}: image size {width}x{height}")
    if kind in BRUSH_TYPES:
        return decode_brush(value, height, width), list(value.get("brushlabels") or value.get("labels") or [])
    return polygon_to_mask(value.get("points") or [], height, width), list(value.get("polygonlabels") or [])


def regions_from_results(
    results: Sequence[Mapping],
    shape_controls: Collection[str] | None = None,
    answer_controls: Collection[str] | None = None,
) -> list[Region]:
    """The brush and polygon regions of one result list, in the order they appear.

    ``shape_controls`` / ``answer_controls``: the tags to read shapes / per-region answers from
    (``None``: all). Two shape results with one id are one region (masks joined, labels
    concatenated); texts or choices whose region has no shape are dropped.

    Raises:
        ValueError: a shape that does not decode (wrong RLE size, no image size).
    """
    regions: dict[str, Region] = {}
    answers: list[Mapping] = []
    for item in results:
        control = str(item.get("from_name"))
        region_id = str(item.get("id", ""))
        shape = _shape(item) if shape_controls is None or control in shape_controls else None
        if shape is None:
            if answer_controls is None or control in answer_controls:
                answers.append(item)
            continue
        mask, labels = shape
        previous = regions.get(region_id)
        if previous is None:
            regions[region_id] = Region(id=region_id, control=control, labels=labels, mask=mask)
            continue
        if previous.mask.shape != mask.shape:
            raise ValueError(f"region {region_id}: shapes of different image sizes")
        previous.mask |= mask
        previous.labels.extend(label for label in labels if label not in previous.labels)
    for item in answers:
        region = regions.get(str(item.get("id", "")))
        value = item.get("value") or {}
        if region is None or not isinstance(value, Mapping):
            continue
        control = str(item.get("from_name"))
        if "text" in value:
            region.texts.setdefault(control, []).extend(str(text) for text in value["text"] or [])
        elif "choices" in value:
            region.choices.setdefault(control, []).extend(str(choice) for choice in value["choices"] or [])
    return list(regions.values())
