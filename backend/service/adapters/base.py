"""Shared machinery of the control-tag adapters: tag options, region results, mode selection.

An adapter maps one Label Studio control tag (``BrushLabels``, ``PolygonLabels``) onto one method
(zero-guidance segmentation or FMbSeg). Which adapter takes a tag is decided by
:func:`control_mode`; options come from ``model_*`` attributes on the tag, falling back to the
service-wide environment defaults in :class:`~backend.service.config.ServiceConfig`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, TypeVar

import numpy as np

from ..config import ServiceConfig, parse_bool
from ..images import LoadedImage
from ..masks import mask_to_boxes, mask_to_polygons, mask_to_rle
from ..runtime import Runtime

logger = logging.getLogger(__name__)

SettingsT = TypeVar("SettingsT")

# The two modes, spelt one way everywhere (the ``model_mode`` attribute, version hashes, logs).
ZERO_GUIDANCE = "zero-guidance"
CLASSES = "classes"
MODES = (ZERO_GUIDANCE, CLASSES)


class LabelConfigError(ValueError):
    """The project's label config cannot be served (the message shows how to fix it)."""


def new_region_id() -> str:
    """A fresh region id; every result of one region shares it (brush + its TextArea)."""
    return uuid.uuid4().hex[:10]


def is_per_region(control: Any) -> bool:
    return str(control.attr.get("perRegion", "false")).lower() == "true"


def image_object(control: Any) -> Any | None:
    """The first ``Image`` object tag the control points at, or ``None``."""
    for obj in control.objects or []:
        if obj.tag.lower() == "image":
            return obj
    return None


def per_region_text_areas(interface: Any, control: Any) -> list[Any]:
    """``TextArea perRegion="true"`` tags on the same image that can attach to ``control``'s regions."""
    target = image_object(control)
    if target is None:
        return []
    found = []
    for other in interface.controls:
        if other.tag != "TextArea" or not is_per_region(other) or target.name not in other.to_name:
            continue
        when_tag = other.attr.get("whenTagName")
        if when_tag and when_tag != control.name:
            continue
        found.append(other)
    return found


def applies_to_label(control: Any, label: str) -> bool:
    """Whether a per-region tag shows for regions labelled ``label``: Label Studio's
    ``whenLabelValue`` rule (absent; the label; or a comma-separated list naming it, split at each
    comma with no trimming, as the editor does)."""
    when_label = control.attr.get("whenLabelValue")
    return when_label is None or when_label == label or label in when_label.split(",")


def is_smart_tool(control: Any) -> bool:
    """A ``smart="true"`` / ``smartOnly="true"`` tag: the annotator's prompt tool for interactive
    clicks and boxes, not a place for pre-annotations."""
    return any(str(control.attr.get(name, "false")).lower() == "true" for name in ("smart", "smartOnly"))


def control_mode(control: Any, interface: Any) -> str:
    """``"zero-guidance"`` or ``"classes"`` for a BrushLabels/PolygonLabels control.

    1. The ``model_mode`` attribute decides when present (``zero-guidance`` or ``classes``).
    2. Otherwise a control with exactly one label and a per-region ``TextArea`` on the same
       image is zero-guidance (free-text segments); every other control is classes (FMbSeg,
       its labels are the vocabulary).
    """
    raw = control.attr.get("model_mode")
    if raw is not None:
        mode = str(raw).strip().lower()
        if mode not in MODES:
            raise LabelConfigError(
                f'<{control.tag} name="{control.name}" model_mode="{raw}">: model_mode must be '
                f'"zero-guidance" or "classes"'
            )
        return mode
    labels = list(control.labels or [])
    if len(labels) == 1 and per_region_text_areas(interface, control):
        return ZERO_GUIDANCE
    return CLASSES


def segment_category(control: Any, interface: Any) -> str | None:
    """The one category a zero-guidance tag's labels stand for (they are a colour palette,
    backend/service/palette.py): its ``model_label``, else its first label; ``None`` for any other
    tag, or one whose ``model_mode`` is not valid."""
    try:
        mode = control_mode(control, interface)
    except LabelConfigError:
        return None
    labels = list(control.labels or [])
    if mode != ZERO_GUIDANCE or not labels:
        return None
    return control.attr.get("model_label") or labels[0]


class TagOptions:
    """Reads ``model_*`` attributes of one control tag, with environment fallbacks."""

    def __init__(self, control: Any, config: ServiceConfig) -> None:
        self.control = control
        self.config = config

    def _raw(self, attribute: str) -> str | None:
        value = self.control.attr.get(attribute)
        return None if value is None or str(value).strip() == "" else str(value).strip()

    def _where(self, attribute: str) -> str:
        if self.control.tag == "Label":
            return f'<Label value="{self.control.name}" {attribute}=...>'
        return f'<{self.control.tag} name="{self.control.name}" {attribute}=...>'

    def flag(self, attribute: str, default: bool | None) -> bool | None:
        raw = self._raw(attribute)
        if raw is None:
            return default
        try:
            return parse_bool(raw, self._where(attribute))
        except ValueError as error:
            raise LabelConfigError(str(error)) from None

    def number(self, attribute: str, default: float, minimum: float = 0.0, maximum: float = math.inf) -> float:
        raw = self._raw(attribute)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise LabelConfigError(f"{self._where(attribute)} must be a number, got {raw!r}") from None
        if not minimum <= value <= maximum:
            raise LabelConfigError(f"{self._where(attribute)} must be in [{minimum}, {maximum}], got {raw!r}")
        return value

    def integer(self, attribute: str, default: int, minimum: int = 0) -> int:
        value = self.number(attribute, default, minimum=minimum)
        if value != int(value):
            raise LabelConfigError(f"{self._where(attribute)} must be an integer, got {value}")
        return int(value)

    def text(self, attribute: str, default: str | None = None) -> str | None:
        raw = self._raw(attribute)
        return default if raw is None else raw

    def project_settings(self, attribute: str, resolve: Callable[[Mapping[str, Any], str], SettingsT]) -> SettingsT:
        """The method settings in force for this tag: ``resolve(the tag's JSON object, where)``.

        The tag's JSON (``model_settings='{"merge_threshold": 0.7}'``) is a project's: it passes
        the settings' allow-list; a refused or misspelt field is a :class:`LabelConfigError` (400)
        naming it and listing the allowed ones.
        """
        where = self._where(attribute)
        raw = self._raw(attribute)
        overrides: Any = {}
        if raw is not None:
            try:
                overrides = json.loads(raw)
            except (json.JSONDecodeError, RecursionError) as error:
                raise LabelConfigError(f"{where} must be a JSON object: {error}") from None
            if not isinstance(overrides, dict):
                raise LabelConfigError(f"{where} must be a JSON object")
        try:
            return resolve(overrides, where)
        except ValueError as error:
            raise LabelConfigError(str(error)) from None


def label_studio_score(score: float | None) -> float | None:
    """``score`` clamped into [0, 1], the range Label Studio accepts; ``None`` when there is none."""
    if score is None or not math.isfinite(score):
        return None
    return min(1.0, max(0.0, float(score)))


@dataclass(frozen=True)
class LabelOptions:
    """Per-label options: a ``<Label>``'s own ``model_score_threshold`` / ``model_max_regions``, else the tag's."""

    score_threshold: float
    max_regions: int


class _LabelView:
    """Just enough of a ``<Label>`` for :class:`TagOptions` to read its attributes."""

    def __init__(self, label: str, attributes: Mapping[str, Any]) -> None:
        self.tag = "Label"
        self.name = label
        self.attr = dict(attributes)


def label_attributes(control: Any, label: str) -> dict[str, str]:
    """The attributes of ``control``'s ``<Label value=label>``."""
    attributes = getattr((control.labels_attrs or {}).get(label), "attr", None) or {}
    return {str(k): str(v) for k, v in attributes.items()}


class ControlAdapter(ABC):
    """One Label Studio control tag served by one method.

    Subclasses set ``tag`` (the control tag they serve) and ``mode``, and implement
    :meth:`predict_regions`. :meth:`create` returns ``None`` for tags with ``model_skip="true"``.
    """

    tag: ClassVar[str]
    mode: ClassVar[str]

    def __init__(
        self, control: Any, interface: Any, config: ServiceConfig, runtime: Runtime, project: int | None = None
    ) -> None:
        image = image_object(control)
        if image is None:  # is_control_matched guarantees one
            raise LabelConfigError(f'<{control.tag} name="{control.name}"> is not attached to an <Image>')
        self.control = control
        self.interface = interface
        self.config = config
        self.runtime = runtime
        self.project = project  # Label Studio's project id: whose alignment checkpoint serves it
        self.from_name: str = control.name
        self.to_name: str = image.name
        self.image_key: str = image.value_name  # "image" for value="$image"
        self.options = TagOptions(control, config)
        self.score_threshold = self.options.number("model_score_threshold", config.score_threshold, 0.0, 1.0)
        self.max_regions = self.options.integer("model_max_regions", config.max_regions, minimum=1)
        self.min_area = self.options.integer("model_min_area", config.min_region_area)
        # A <Label>'s own threshold and region cap win over the tag's (read at every /setup and
        # /predict: a change made in Label Studio applies at once).
        self.label_options: dict[str, LabelOptions] = {
            label: self._label_options(label) for label in (control.labels or [])
        }
        # Problems found while reading the config or predicting (reported in /predict and /metrics).
        self.problems: list[str] = []

    def _label_options(self, label: str) -> LabelOptions:
        options = TagOptions(_LabelView(label, label_attributes(self.control, label)), self.config)
        return LabelOptions(
            score_threshold=options.number("model_score_threshold", self.score_threshold, 0.0, 1.0),
            max_regions=options.integer("model_max_regions", self.max_regions, minimum=1),
        )

    @classmethod
    def is_control_matched(cls, control: Any, interface: Any) -> bool:
        return (
            control.tag == cls.tag
            and image_object(control) is not None
            and not is_smart_tool(control)
            and control_mode(control, interface) == cls.mode
        )

    @classmethod
    def create(
        cls, control: Any, interface: Any, config: ServiceConfig, runtime: Runtime, project: int | None = None
    ) -> "ControlAdapter | None":
        if TagOptions(control, config).flag("model_skip", False):
            logger.info('skipping <%s name="%s">: model_skip="true"', control.tag, control.name)
            return None
        return cls(control, interface, config, runtime, project)

    @abstractmethod
    def predict_regions(self, image: LoadedImage, cache: dict) -> list[dict]:
        """Label Studio results for this tag on ``image``; ``cache`` is shared within one task."""

    def version_inputs(self) -> dict[str, Any]:
        """Everything about this tag that changes predictions (hashed into ``model_version``)."""
        return {
            "tag": self.tag,
            "name": self.from_name,
            "score_threshold": self.score_threshold,
            "min_area": self.min_area,
            "labels": {label: dataclasses.asdict(options) for label, options in self.label_options.items()},
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(from_name={self.from_name!r}, to_name={self.to_name!r})"

    # ---- result building ----------------------------------------------------------------

    def _result(self, region_id: str, image: LoadedImage, value: dict, score: float | None) -> dict:
        result = {
            "id": region_id,
            "from_name": self.from_name,
            "to_name": self.to_name,
            "type": self.control.tag.lower(),
            "original_width": image.original_width,
            "original_height": image.original_height,
            "image_rotation": 0,
            "value": value,
        }
        if score is not None:
            result["score"] = score
        return result

    def shape_results(self, image: LoadedImage, mask: np.ndarray, label: str, score: float | None) -> list[dict]:
        """Regions (one result each) for a full-size ``mask``; brush or polygon by tag."""
        raise NotImplementedError


class BrushShape:
    """Regions as brush RLE: one region per mask."""

    def shape_results(self, image: LoadedImage, mask: np.ndarray, label: str, score: float | None) -> list[dict]:
        value = {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [label]}
        return [self._result(new_region_id(), image, value, score)]


class PolygonShape:
    """Regions as polygons: one region per connected component (holes filled)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.polygon_tolerance = self.options.number("model_polygon_tolerance", self.config.polygon_tolerance)

    def shape_results(self, image: LoadedImage, mask: np.ndarray, label: str, score: float | None) -> list[dict]:
        polygons = mask_to_polygons(mask, tolerance=self.polygon_tolerance, min_area=max(self.min_area, 1))
        return [
            self._result(new_region_id(), image, {"points": points, "closed": True, "polygonlabels": [label]}, score)
            for points in polygons
        ]

    def version_inputs(self) -> dict[str, Any]:
        return {**super().version_inputs(), "polygon_tolerance": self.polygon_tolerance}


class BoxShape:
    """Regions as rectangles: one region per connected component (its bounding box)."""

    def shape_results(self, image: LoadedImage, mask: np.ndarray, label: str, score: float | None) -> list[dict]:
        return [
            self._result(new_region_id(), image, {**box, "rectanglelabels": [label]}, score)
            for box in mask_to_boxes(mask, min_area=self.min_area)
        ]
