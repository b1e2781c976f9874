"""Group a Label Studio result list into regions: one mask plus its per-region answers.

All results of one region share one ``id``; a per-region TextArea or Choices links to the
brush by that id::

    {"id": "r1", "from_name": "segment", "type": "brushlabels",
     "original_width": W, "original_height": H,
     "value": {"format": "rle", "rle": [...], "brushlabels": ["segment"]}}
    {"id": "r1", "from_name": "caption", "type": "textarea", "value": {"text": ["a cat"]}}
    {"id": "r1", "from_name": "rating", "type": "choices", "value": {"choices": ["2"]}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from label_studio_sdk.converter.brush import decode_rle

from plugin.errors import PluginError
from plugin.schema import LabelingSchema

# A decoded brush is an RGBA image; the region is where its alpha is at least this value.
# Label Studio paints brushes with alpha 255; a mask encoded from 0/1 values has alpha 1
# and is invisible in the editor, so it is (rightly) not counted as drawn.
VISIBLE_ALPHA = 128


@dataclass
class Region:
    """One brush region of an annotation or prediction.

    Attributes:
        id: the region id shared by its results.
        control: ``from_name`` of the BrushLabels tag that drew it.
        labels: its brush labels.
        mask: ``(H, W)`` bool, True inside the region.
        texts: per-region TextArea answers, ``{control name: [text, ...]}``.
        choices: per-region Choices answers, ``{control name: [choice, ...]}``.
    """

    id: str
    control: str
    labels: list[str]
    mask: np.ndarray
    texts: dict[str, list[str]] = field(default_factory=dict)
    choices: dict[str, list[str]] = field(default_factory=dict)


def decode_brush(value: Mapping, height: int, width: int) -> np.ndarray:
    """Decode a brush value (``format: rle``) into an ``(height, width)`` bool mask.

    Raises:
        PluginError: another format, or an RLE whose size is not ``height * width * 4``.
    """
    if value.get("format") != "rle" or "rle" not in value:
        raise PluginError(f"brush format {value.get('format')!r} is not supported (expected 'rle')")
    flat = np.asarray(decode_rle(value["rle"]), dtype=np.uint8)
    if flat.size != height * width * 4:
        raise PluginError(
            f"brush RLE decodes to {flat.size} values, expected {height}x{width}x4 = {height * width * 4}"
        )
    return flat.reshape(height, width, 4)[:, :, 3] >= VISIBLE_ALPHA


def regions_from_result(result: Sequence[Mapping], schema: LabelingSchema) -> list[Region]:
    """The brush regions of one result list, in the order their brushes appear.

    Results of unknown controls are ignored; text or choices whose region has no brush
    are dropped (there is no mask to attach them to). Two brush results with the same id
    are merged (union of masks, labels concatenated).
    """
    regions: dict[str, Region] = {}
    answers: dict[str, list[Mapping]] = {}
    for item in result:
        region_id = str(item.get("id", ""))
        control = item.get("from_name")
        value = item.get("value") or {}
        if control in schema.brush_controls:
            height, width = int(item["original_height"]), int(item["original_width"])
            mask = decode_brush(value, height, width)
            labels = list(value.get("brushlabels") or [])
            if region_id in regions:
                previous = regions[region_id]
                if previous.mask.shape != mask.shape:
                    raise PluginError(f"region {region_id}: brush results of different sizes")
                previous.mask |= mask
                previous.labels.extend(label for label in labels if label not in previous.labels)
            else:
                regions[region_id] = Region(id=region_id, control=control, labels=labels, mask=mask)
        elif control in schema.text_controls or control in schema.choice_controls:
            answers.setdefault(region_id, []).append(item)
    for region_id, items in answers.items():
        region = regions.get(region_id)
        if region is None:
            continue
        for item in items:
            value = item.get("value") or {}
            if item["from_name"] in schema.text_controls:
                region.texts.setdefault(item["from_name"], []).extend(value.get("text") or [])
            else:
                region.choices.setdefault(item["from_name"], []).extend(value.get("choices") or [])
    return list(regions.values())


def rating_of(region: Region, rating_control: str) -> int | None:
    """The region's 0-3 rating from the per-region Choices ``rating_control``, if given."""
    chosen = region.choices.get(rating_control) or []
    if len(chosen) != 1:
        return None
    try:
        return int(chosen[0])
    except ValueError:
        return None
