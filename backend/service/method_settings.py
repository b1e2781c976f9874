"""The method settings in force for a tag: paper < preset < operator (environment) < project (tag).

One function a method, used by the adapters (serving), hence by retraining, which gets the
adapters' resolved settings. The operator's ``ZEROGUIDE_SETTINGS`` / ``FMBSEG_SETTINGS`` /
``CLICK_SETTINGS`` (interactive mode) may set
any field and are checked when the service starts (:func:`check_operator_settings`); a project's
``model_settings`` passes the allow-list of :mod:`backend.settings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..fmbseg.settings import FMbSegSettings
from ..interactive.settings import ClickSettings
from ..models.presets import get_preset
from ..zeroguide.settings import ZeroGuideSettings
from .config import ServiceConfig

__all__ = ["check_operator_settings", "click_settings", "fmbseg_settings", "zero_guidance_settings"]

PROJECT_SETTINGS_ATTRIBUTE = "model_settings"


def zero_guidance_settings(
    config: ServiceConfig, project: Mapping[str, Any] = {}, where: str = "ZEROGUIDE_SETTINGS"
) -> ZeroGuideSettings:
    """Zero-guidance settings for ``config``'s preset and environment, and a tag's ``project`` overrides.

    Raises:
        backend.settings.SettingsError: an override is refused; the message starts with ``where``.
    """
    preset = get_preset(config.model_preset).method_overrides.get("zeroguide", {})
    return ZeroGuideSettings.resolve(preset, config.zeroguide_settings, project, where=where)


def fmbseg_settings(
    config: ServiceConfig, project: Mapping[str, Any] = {}, where: str = "FMBSEG_SETTINGS"
) -> FMbSegSettings:
    """FMbSeg settings for ``config``'s preset and environment, and a tag's ``project`` overrides."""
    preset = get_preset(config.model_preset).method_overrides.get("fmbseg", {})
    return FMbSegSettings.resolve(preset, config.fmbseg_settings, project, where=where)


def click_settings(
    config: ServiceConfig, project: Mapping[str, Any] = {}, where: str = "CLICK_SETTINGS"
) -> ClickSettings:
    """Interactive-mode settings for ``config``'s environment, and a smart tool tag's ``project`` overrides."""
    preset = get_preset(config.model_preset).method_overrides.get("interactive", {})
    return ClickSettings.resolve(preset, config.click_settings, project, where=where)


def check_operator_settings(config: ServiceConfig) -> None:
    """Raise ``ValueError`` naming the variable when ``MODEL_PRESET`` or a method's settings are bad."""
    zero_guidance_settings(config)
    fmbseg_settings(config)
    click_settings(config)
