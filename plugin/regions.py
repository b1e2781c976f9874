"""Group a Label Studio result list into regions: one mask plus its per-region answers.

All results of one region share one ``id``; a per-region TextArea or Choices links to the
brush by that id::

    {"id": "r1", "from_name": "segment", "type": "brushlabels",
     "original_width": W, "original_height": H,
     "value": {"format": "rle", "rle": [...], "brushlabels": ["segment"]}}
    {"id": "r1", "from_name": "caption", "type": "textarea", "value": {"text": ["a cat"]}}
    {"id": "r1", "from_name": "rating", "type": "choices", "value": {"choices": ["2"]}}

The decoding itself is the backend's (``backend.service.regions``): one alpha rule for export,
rating and retraining.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from backend.service import regions as shared
from backend.service.regions import VISIBLE_ALPHA, Region
from plugin.errors import PluginError
from plugin.schema import LabelingSchema

__all__ = ["VISIBLE_ALPHA", "Region", "decode_brush", "rating_of", "regions_from_result"]


def decode_brush(value: Mapping, height: int, width: int) -> np.ndarray:
    """Decode a brush value (``format: rle``) into an ``(height, width)`` bool mask.

    The backend's decoder (``backend.service.regions``): alpha >= ``VISIBLE_ALPHA``.

    Raises:
        PluginError: another format, or an RLE whose size is not ``height * width * 4``.
    """
    try:
        return shared.decode_brush(value, height, width)
    except ValueError as error:
        raise PluginError(str(error)) from None


def regions_from_result(result: Sequence[Mapping], schema: LabelingSchema) -> list[Region]:
    """The brush regions of one result list, in the order their brushes appear.

    Results of unknown controls are ignored; text or choices whose region has no brush are
    dropped (there is no mask to attach them to). Two brush results with the same id are
    merged (union of masks, labels concatenated).
    """
    try:
        return shared.regions_from_results(
            result, schema.brush_controls, (*schema.text_controls, *schema.choice_controls)
        )
    except ValueError as error:
        raise PluginError(str(error)) from None


def rating_of(region: Region, rating_control: str) -> int | None:
    """The region's 0-3 rating from the per-region Choices ``rating_control``, if given."""
    chosen = region.choices.get(rating_control) or []
    if len(chosen) != 1:
        return None
    try:
        return int(chosen[0])
    except ValueError:
        return None
