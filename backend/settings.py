"""What the methods' settings classes share: paper defaults, preset overrides, a fingerprint."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping, TypeVar

__all__ = ["MethodSettings"]

SettingsT = TypeVar("SettingsT", bound="MethodSettings")


class MethodSettings:
    """Mixin for frozen dataclasses of method settings whose defaults are the paper's values."""

    @classmethod
    def for_preset(cls: type[SettingsT], overrides: Mapping[str, Any] | None = None, **changes: Any) -> SettingsT:
        """The paper's settings with a preset's overrides, then ``changes``, applied."""
        return cls(**{**dict(overrides or {}), **changes})

    def replace(self: SettingsT, **changes: Any) -> SettingsT:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=dict))

    def fingerprint(self) -> str:
        """A short, stable hash of the settings (for model versions)."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:8]
