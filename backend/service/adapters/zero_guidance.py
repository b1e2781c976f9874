"""Zero-guidance segmentation on a BrushLabels (or PolygonLabels) tag: segments with free text.

Each segment becomes one region: its mask (brush RLE, or one polygon per connected component)
labelled with one of the tag's labels, plus a result of the per-region ``TextArea`` carrying the
generated text under the **same region id**.

The tag's labels are a palette (backend/service/palette.py): all mean "a zero-guidance segment"
and differ only in colour, so each segment gets one and touching segments get different ones.
``model_label="..."`` names a single label for every segment instead (the palette then has one
entry); the first palette entry is the tag's ``label`` (the category exports use).

The region score is the segment's ``text_score``: the CLIP cosine similarity between the segment's
embedding and its text's (section 3.3; about 0.2-0.35 with real CLIP weights), defined for every
segment. Segments are sorted by it (best first), ``model_max_regions`` keeps the first ones and
``model_score_threshold`` drops those below it. (The merge score of section 3.4 only exists for
merged segments and is on another scale: it is not used here.)
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ...zeroguide.results import Segment, ZeroGuidanceResult
from ..images import LoadedImage
from ..method_settings import PROJECT_SETTINGS_ATTRIBUTE, zero_guidance_settings
from ..palette import palette_indices
from .base import (
    ZERO_GUIDANCE,
    BoxShape,
    BrushShape,
    ControlAdapter,
    LabelConfigError,
    PolygonShape,
    applies_to_label,
    label_studio_score,
    per_region_text_areas,
)

logger = logging.getLogger(__name__)


class ZeroGuidanceAdapter(ControlAdapter):
    mode = ZERO_GUIDANCE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        labels = list(self.control.labels or [])
        if not labels:
            raise LabelConfigError(
                f'<{self.tag} name="{self.from_name}"> needs one <Label> for zero-guidance segments, '
                'e.g. <Label value="segment"/>'
            )
        chosen = self.options.text("model_label")
        if chosen is not None and chosen not in labels:
            raise LabelConfigError(
                f'<{self.tag} name="{self.from_name}" model_label="{chosen}">: not one of its labels {labels}'
            )
        self.palette: tuple[str, ...] = (chosen,) if chosen is not None else tuple(labels)
        self.label = self.palette[0]
        self.text_area = self._find_text_area()
        self.settings = self.options.project_settings(
            PROJECT_SETTINGS_ATTRIBUTE, lambda project, where: zero_guidance_settings(self.config, project, where)
        )

    def _find_text_area(self) -> Any | None:
        wanted = self.options.text("model_text_area")
        candidates = per_region_text_areas(self.interface, self.control)
        if wanted is not None:
            for area in candidates:
                if area.name == wanted:
                    return area
            raise LabelConfigError(
                f'<{self.tag} name="{self.from_name}" model_text_area="{wanted}">: no '
                f'<TextArea name="{wanted}" perRegion="true"> on the same image'
            )
        for area in candidates:
            if all(applies_to_label(area, label) for label in self.palette):
                return area
        logger.info('<%s name="%s">: no per-region TextArea, segments get no text', self.tag, self.from_name)
        return None

    def version_inputs(self) -> dict[str, Any]:
        return {
            **super().version_inputs(),
            "method": ZERO_GUIDANCE,
            "label": self.label,
            "palette": list(self.palette),
            "text_area": self.text_area.name if self.text_area is not None else None,
            "settings": self.settings.to_dict(),
        }

    def predict_regions(self, image: LoadedImage, cache: dict) -> list[dict]:
        key = (ZERO_GUIDANCE, image.source, self.settings.fingerprint())
        if key not in cache:
            segmenter = self.runtime.zero_guidance(self.settings)
            with self.runtime.inference_lock:
                cache[key] = segmenter.segment(image.pixels)
        result: ZeroGuidanceResult = cache[key]
        segments = sorted(result.segments, key=lambda segment: -segment.text_score)  # best first
        options = self.label_options[self.label]  # the label's own threshold and cap, else the tag's
        kept: list[tuple[Segment, np.ndarray, float | None]] = []  # segment, mask at the original size, score
        for segment in segments:
            if len(kept) >= options.max_regions:
                break
            score = label_studio_score(segment.text_score)
            if score is not None and score < options.score_threshold:
                continue
            mask = image.mask_to_original(np.asarray(segment.mask))
            if not mask.any() or int(mask.sum()) < self.min_area:
                continue
            kept.append((segment, mask, score))
        # colours from the masks the model saw (cheaper than the originals; the same contacts)
        colours = palette_indices([np.asarray(segment.mask, dtype=bool) for segment, _, _ in kept], len(self.palette))
        results: list[dict] = []
        for (segment, mask, score), colour in zip(kept, colours):
            text = segment.text.strip()
            for shape in self.shape_results(image, mask, self.palette[colour], score):
                results.append(shape)
                if self.text_area is not None and text:
                    results.append(self._text_result(shape, text))
        return results

    def _text_result(self, shape: dict, text: str) -> dict:
        """The TextArea result attached to ``shape`` (same region id)."""
        return {
            "id": shape["id"],
            "from_name": self.text_area.name,
            "to_name": self.to_name,
            "type": "textarea",
            "original_width": shape["original_width"],
            "original_height": shape["original_height"],
            "image_rotation": 0,
            "value": {"text": [text]},
        }


class ZeroGuidanceBrushAdapter(BrushShape, ZeroGuidanceAdapter):
    """``<BrushLabels>`` in zero-guidance mode: a brush mask + text per segment."""

    tag = "BrushLabels"


class ZeroGuidancePolygonAdapter(PolygonShape, ZeroGuidanceAdapter):
    """``<PolygonLabels model_mode="zero-guidance">``: polygons + text per segment."""

    tag = "PolygonLabels"


class ZeroGuidanceBoxAdapter(BoxShape, ZeroGuidanceAdapter):
    """``<RectangleLabels model_mode="zero-guidance">``: a box + text per segment component
    (the segmentation is shared with a mask tag of the same settings)."""

    tag = "RectangleLabels"
