"""The Label Studio ML backend service: adapts the segmentation methods to Label Studio 1.23.

``create_app(config)`` builds the Flask app (``backend.service.app``); ``python -m backend``
serves it with gunicorn (``backend.service.server``). See docs/service.md.

Exports are resolved lazily so that light modules (e.g. ``backend.service.annotation_store``) can be
imported without Flask or label-studio-sdk.
"""

from typing import Any

__all__ = ["ServiceConfig", "SegmentationMLBackend", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "ServiceConfig":
        from .config import ServiceConfig

        return ServiceConfig
    if name == "SegmentationMLBackend":
        from .segmentation_model import SegmentationMLBackend

        return SegmentationMLBackend
    raise AttributeError(f"module 'backend.service' has no attribute {name!r}")
