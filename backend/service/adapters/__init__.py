"""Control-tag adapters: one class per (Label Studio tag, method) pair.

A new tag is one class plus one entry in :data:`AVAILABLE_ADAPTERS`. :func:`detect_adapters`
walks the label config's controls and lets the first matching adapter take each one.
"""

from __future__ import annotations

import logging
from typing import Any

from ..config import ServiceConfig
from ..runtime import Runtime
from .base import CLASSES, ZERO_GUIDANCE, ControlAdapter, LabelConfigError, control_mode
from .class_masks import ClassBoxAdapter, ClassBrushAdapter, ClassMaskAdapter, ClassPolygonAdapter
from .zero_guidance import ZeroGuidanceBoxAdapter, ZeroGuidanceBrushAdapter, ZeroGuidancePolygonAdapter

logger = logging.getLogger(__name__)

AVAILABLE_ADAPTERS: list[type[ControlAdapter]] = [
    ZeroGuidanceBrushAdapter,
    ClassBrushAdapter,
    ClassPolygonAdapter,
    ZeroGuidancePolygonAdapter,
    ClassBoxAdapter,
    ZeroGuidanceBoxAdapter,
]

EXAMPLE_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="segment" toName="image" model_mode="zero-guidance"><Label value="segment"/></BrushLabels>
  <TextArea name="caption" toName="image" perRegion="true" editable="true"/>
  <BrushLabels name="class_mask" toName="image"><Label value="cat"/><Label value="sky"/></BrushLabels>
</View>"""


def detect_adapters(
    interface: Any, config: ServiceConfig, runtime: Runtime, project: int | None = None
) -> list[ControlAdapter]:
    """The adapters serving ``interface``'s controls (skipped and unsupported tags left out)."""
    adapters: list[ControlAdapter] = []
    for control in interface.controls or []:
        for adapter_class in AVAILABLE_ADAPTERS:
            if adapter_class.is_control_matched(control, interface):
                adapter = adapter_class.create(control, interface, config, runtime, project)
                if adapter is not None:
                    adapters.append(adapter)
                    logger.debug("control %s served by %r", control.name, adapter)
                break
    return adapters


def no_adapter_message() -> str:
    tags = sorted({cls.tag for cls in AVAILABLE_ADAPTERS})
    return (
        f"the label config has no control this backend can predict: add one of {tags} "
        f'pointing at an <Image> (and without model_skip="true"), for example:\n{EXAMPLE_CONFIG}'
    )


__all__ = [
    "AVAILABLE_ADAPTERS",
    "CLASSES",
    "ZERO_GUIDANCE",
    "ClassBoxAdapter",
    "ClassBrushAdapter",
    "ClassMaskAdapter",
    "ClassPolygonAdapter",
    "ControlAdapter",
    "LabelConfigError",
    "ZeroGuidanceBoxAdapter",
    "ZeroGuidanceBrushAdapter",
    "ZeroGuidancePolygonAdapter",
    "control_mode",
    "detect_adapters",
    "no_adapter_message",
]
