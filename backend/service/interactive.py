"""Label Studio's interactive mode: the smart tools' clicks and box in, one named region out.

Label Studio's editor sends the current object's smart-tool regions as ``context.result``
(``params.context`` of ``/predict``; some clients put ``context`` at the top level): keypoints
(``{"type": "keypointlabels", "is_positive": bool, "value": {"x": %, "y": %, ...}}``; a negative
click is ``is_positive: false``) and rectangles (``{"type": "rectanglelabels", "value": {"x", "y",
"width", "height" (%), "rotation" (degrees)}}``). :func:`parse_context` checks them once (a
malformed context is a :class:`InteractiveContextError`, answered with 400) into an
:class:`InteractiveContext`; :meth:`InteractiveContext.prompts_for` turns the percentages into
pixels of the image the model sees (:class:`~backend.service.images.LoadedImage`).

:func:`choose_target` decides where the region goes (docs/interactive.md, "The target tag"):

1. the ``BrushLabels`` / ``PolygonLabels`` served here that has a label equal to the smart tool's
   label (Label Studio's SAM convention), labelled with it;
2. else the class-mask tag, labelled with the nearest class;
3. else the zero-guidance tag, labelled with its label.

The text goes into a per-region ``TextArea`` that can attach to that tag and label (the
zero-guidance adapter's rules: same image, ``whenTagName`` and ``whenLabelValue`` if set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .adapters import CLASSES, ZERO_GUIDANCE, ClassMaskAdapter, ControlAdapter, LabelConfigError
from ..interactive.settings import ClickSettings
from .adapters.base import TagOptions, applies_to_label, is_smart_tool, label_studio_score, per_region_text_areas
from .config import ServiceConfig
from .images import LoadedImage
from .method_settings import PROJECT_SETTINGS_ATTRIBUTE, click_settings
from .webhooks import PayloadError

__all__ = [
    "MAX_POINTS",
    "ClickPrompts",
    "InteractiveContext",
    "InteractiveContextError",
    "Target",
    "check_smart_tools",
    "choose_target",
    "click_settings_for",
    "parse_context",
    "smart_tools",
    "text_result",
]

MASK_TAGS = ("BrushLabels", "PolygonLabels")  # the tags a clicked object's mask can go into
POINT_TYPES = ("keypointlabels", "keypoint")
BOX_TYPES = ("rectanglelabels", "rectangle")
MAX_POINTS = 64  # clicks on one object; more is not an annotator clicking
PERCENT_TOLERANCE = 1e-3  # Label Studio's percentages may overshoot 100 by rounding


class InteractiveContextError(PayloadError):
    """The interactive context is malformed (answered with 400; the message says what to fix)."""


@dataclass(frozen=True)
class ClickPrompts:
    """SAM's prompts in pixels of the model's image: points (P, 2) x, y; labels (P,) 1/0; box (4,)."""

    points: np.ndarray | None
    labels: np.ndarray | None
    box: np.ndarray | None


@dataclass(frozen=True)
class _Point:
    x: float  # percent of the image width
    y: float  # percent of the image height
    positive: bool


@dataclass(frozen=True)
class _Box:
    x: float
    y: float
    width: float
    height: float
    rotation: float  # degrees, clockwise about (x, y), as Label Studio draws it


@dataclass(frozen=True)
class InteractiveContext:
    """The prompts of one object, checked.

    Attributes:
        points: the clicks, in percent of the image, in order.
        box: the box, in percent of the image, or ``None``.
        labels: the smart tools' labels (``keypointlabels`` / ``rectanglelabels`` values).
        from_names: the smart tools' control names; to_names: the images they are on.
    """

    points: tuple[_Point, ...]
    box: _Box | None
    labels: tuple[str, ...]
    from_names: tuple[str, ...]
    to_names: tuple[str, ...]

    def prompts_for(self, image: LoadedImage) -> ClickPrompts:
        """Pixels of ``image.pixels`` (the model's size; the percentages are of the original's,
        which has the same aspect)."""
        width, height = image.model_size
        points = labels = box = None
        if self.points:
            points = np.array([[p.x / 100 * width, p.y / 100 * height] for p in self.points], np.float32)
            labels = np.array([1 if p.positive else 0 for p in self.points], np.int64)
        if self.box is not None:
            box = _box_pixels(self.box, image, width, height)
        return ClickPrompts(points, labels, box)


def _box_pixels(box: _Box, image: LoadedImage, width: int, height: int) -> np.ndarray:
    """x0, y0, x1, y1 in model pixels: the rectangle's axis-aligned bounds (rotation in original pixels)."""
    scale_x, scale_y = image.original_width / 100, image.original_height / 100
    x0, y0 = box.x * scale_x, box.y * scale_y
    w, h = box.width * scale_x, box.height * scale_y
    angle = math.radians(box.rotation)
    cos, sin = math.cos(angle), math.sin(angle)
    corners = [(x0 + dx * cos - dy * sin, y0 + dx * sin + dy * cos) for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    xs = [min(max(x, 0.0), image.original_width) for x, _ in corners]
    ys = [min(max(y, 0.0), image.original_height) for _, y in corners]
    to_model_x, to_model_y = width / image.original_width, height / image.original_height
    bounds = [min(xs) * to_model_x, min(ys) * to_model_y, max(xs) * to_model_x, max(ys) * to_model_y]
    return np.array(bounds, np.float32)


def _number(value: Any, where: str, minimum: float | None = None, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InteractiveContextError(f"{where} must be a finite number, got {value!r}")
    value = float(value)
    if minimum is not None and value < minimum - PERCENT_TOLERANCE:
        raise InteractiveContextError(f"{where} must be >= {minimum:g}, got {value:g}")
    if maximum is not None and value > maximum + PERCENT_TOLERANCE:
        raise InteractiveContextError(f"{where} must be <= {maximum:g}, got {value:g}")
    return value


def _labels(value: dict, kind: str, where: str) -> list[str]:
    found: list[str] = []
    for key in (kind, "labels"):
        labels = value.get(key)
        if labels is None:
            continue
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise InteractiveContextError(f"{where}.value.{key} must be a list of label names, got {labels!r}")
        found.extend(label for label in labels if label not in found)
    return found


def parse_context(context: Any) -> InteractiveContext | None:
    """The prompts in Label Studio's interactive ``context``, or ``None`` when it holds none.

    ``None``, ``{}`` and ``{"result": []}`` hold no prompts: the request is an ordinary
    ``/predict``. Raises :class:`InteractiveContextError` for anything malformed.
    """
    if context is None:
        return None
    if not isinstance(context, dict):
        raise InteractiveContextError(f"context must be a JSON object, got {type(context).__name__}")
    results = context.get("result")
    if results is None:
        return None
    if not isinstance(results, list):
        raise InteractiveContextError(
            f"context.result must be a list of smart-tool results, got {type(results).__name__}"
        )
    points: list[_Point] = []
    boxes: list[_Box] = []
    labels: list[str] = []
    from_names: list[str] = []
    to_names: list[str] = []
    for index, result in enumerate(results):
        where = f"context.result[{index}]"
        if not isinstance(result, dict):
            raise InteractiveContextError(f"{where} must be a JSON object, got {type(result).__name__}")
        kind = result.get("type")
        value = result.get("value")
        if not isinstance(value, dict):
            raise InteractiveContextError(f"{where}.value must be a JSON object")
        if kind in POINT_TYPES:
            positive = result.get("is_positive", True)
            if not isinstance(positive, bool):
                raise InteractiveContextError(f"{where}.is_positive must be true or false, got {positive!r}")
            x = _number(value.get("x"), f"{where}.value.x", 0, 100)
            y = _number(value.get("y"), f"{where}.value.y", 0, 100)
            points.append(_Point(min(x, 100.0), min(y, 100.0), positive))
        elif kind in BOX_TYPES:
            x = _number(value.get("x"), f"{where}.value.x", 0, 100)
            y = _number(value.get("y"), f"{where}.value.y", 0, 100)
            width = _number(value.get("width"), f"{where}.value.width", 0, 100)
            height = _number(value.get("height"), f"{where}.value.height", 0, 100)
            rotation = _number(value.get("rotation", 0), f"{where}.value.rotation")
            if width <= 0 or height <= 0:
                raise InteractiveContextError(f"{where}: a box needs a width and a height > 0")
            boxes.append(_Box(x, y, width, height, rotation))
        else:
            raise InteractiveContextError(
                f"{where}.type must be one of {', '.join(POINT_TYPES + BOX_TYPES)} (a smart tool's click or box), "
                f"got {kind!r}"
            )
        labels.extend(label for label in _labels(value, str(kind), where) if label not in labels)
        for key, bucket in (("from_name", from_names), ("to_name", to_names)):
            name = result.get(key)
            if name is not None and not isinstance(name, str):
                raise InteractiveContextError(f"{where}.{key} must be a string, got {name!r}")
            if name and name not in bucket:
                bucket.append(name)
    if not points and not boxes:
        return None
    if len(points) > MAX_POINTS:
        raise InteractiveContextError(f"context.result holds {len(points)} clicks; at most {MAX_POINTS} per object")
    if len(boxes) > 1:
        raise InteractiveContextError(f"context.result holds {len(boxes)} boxes; SAM takes one box per object")
    if points and not any(p.positive for p in points) and not boxes:
        raise InteractiveContextError("context.result holds only negative clicks: add a positive click or a box")
    return InteractiveContext(
        tuple(points), boxes[0] if boxes else None, tuple(labels), tuple(from_names), tuple(to_names)
    )


# ---- where the region goes ------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The tag the region goes into, and how it is labelled and scored.

    ``label``: a fixed label, or ``None`` for the nearest class (``classes`` then holds the
    class-mask tag's prompts). ``score``: ``"text"`` (text_score), ``"class"`` (class_score)
    or ``"sam"`` (SAM's predicted IoU).
    """

    adapter: ControlAdapter
    label: str | None
    score: str
    interface: Any
    classes: tuple[str, ...] = ()

    def text_area_for(self, label: str) -> Any | None:
        """A per-region TextArea on the tag's image that attaches to its regions labelled ``label``
        (the zero-guidance adapter's own ``model_text_area`` first; ``whenTagName`` and
        ``whenLabelValue`` respected), or ``None``."""
        own = getattr(self.adapter, "text_area", None)
        areas = ([own] if own is not None else []) + per_region_text_areas(self.interface, self.adapter.control)
        for area in areas:
            if applies_to_label(area, label):
                return area
        return None

    def label_for(self, class_name: str | None) -> str:
        if self.label is not None:
            return self.label
        prompt_to_label = getattr(self.adapter, "prompt_to_label", {})
        if class_name not in prompt_to_label:
            raise RuntimeError(f"the click segmenter returned {class_name!r}, not one of {sorted(prompt_to_label)}")
        return prompt_to_label[class_name]

    def region_score(self, text_score: float, class_score: float | None, sam_score: float) -> float | None:
        value = {"text": text_score, "class": class_score, "sam": sam_score}[self.score]
        return label_studio_score(value)


def _labels_of(adapter: ControlAdapter) -> list[str]:
    return list(adapter.control.labels or [])


def choose_target(adapters: Sequence[ControlAdapter], interface: Any, context: InteractiveContext) -> Target:
    """The tag, label and text area for the region of ``context`` (module docstring's rules).

    Raises :class:`~backend.service.adapters.LabelConfigError` when no served tag is on the smart
    tools' image.
    """
    candidates = [a for a in adapters if a.tag in MASK_TAGS and (not context.to_names or a.to_name in context.to_names)]
    if not candidates:
        raise LabelConfigError(
            f"no BrushLabels or PolygonLabels served here is on the smart tools' image {list(context.to_names)}"
        )
    for adapter in candidates:  # 1. the tag with the smart tool's label
        for label in context.labels:
            if label in _labels_of(adapter):
                score = "text" if adapter.mode == ZERO_GUIDANCE else "sam"
                return Target(adapter, label, score, interface)
    for adapter in candidates:  # 2. the class-mask tag, nearest class
        if adapter.mode == CLASSES and isinstance(adapter, ClassMaskAdapter):
            return Target(adapter, None, "class", interface, tuple(adapter.classes))
    adapter = next((a for a in candidates if a.mode == ZERO_GUIDANCE), candidates[0])  # 3. zero-guidance
    label = getattr(adapter, "label", None) or _labels_of(adapter)[0]
    return Target(adapter, label, "text", interface)


def text_result(region: dict, text_area: Any, text: str) -> dict:
    """The TextArea result attached to ``region`` (same id)."""
    return {
        "id": region["id"],
        "from_name": text_area.name,
        "to_name": region["to_name"],
        "type": "textarea",
        "original_width": region["original_width"],
        "original_height": region["original_height"],
        "image_rotation": 0,
        "value": {"text": [text]},
    }


SMART_TOOL_TAGS = ("KeyPointLabels", "RectangleLabels", "KeyPoint", "Rectangle")


def smart_tools(interface: Any) -> list[Any]:
    """The label config's smart tools: keypoint and rectangle tags with ``smart`` / ``smartOnly="true"``."""
    controls = interface.controls or []
    return [control for control in controls if control.tag in SMART_TOOL_TAGS and is_smart_tool(control)]


def _tool_settings(control: Any, config: ServiceConfig) -> ClickSettings:
    return TagOptions(control, config).project_settings(
        PROJECT_SETTINGS_ATTRIBUTE, lambda project, where: click_settings(config, project, where)
    )


def check_smart_tools(interface: Any, config: ServiceConfig) -> None:
    """Raise :class:`LabelConfigError` (400 at ``/setup``) for a smart tool's refused ``model_settings``."""
    for control in smart_tools(interface):
        _tool_settings(control, config)


def click_settings_for(interface: Any, context: InteractiveContext, config: ServiceConfig) -> ClickSettings:
    """The click settings in force: the operator's (``CLICK_SETTINGS``), with the ``model_settings``
    of the smart tool tag that sent the context (a project's: the allow-list applies)."""
    for control in smart_tools(interface):
        if control.name in context.from_names:
            return _tool_settings(control, config)
    return click_settings(config)
