"""What the methods' settings classes share: paper defaults, an allow-list, resolution, a fingerprint.

Settings are frozen dataclasses whose defaults are the papers' values. This module and every
settings module import no torch: the service's HTTP process resolves and checks settings before
any model runs.

Who may set what (docs/architecture.md):

* the **operator** (environment variables such as ``ZEROGUIDE_SETTINGS``, command-line flags):
  any field, paths included;
* a **project** (a label config's ``model_settings`` attribute, which anyone who can reach
  ``/setup`` or ``/predict`` can send): only the fields marked :func:`tunable` -- numbers,
  booleans and enums within documented bounds -- and the tunable fields of nested settings
  (:func:`nested`). Paths, file names, free text and unknown keys are refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, TypeVar

__all__ = [
    "MethodSettings",
    "SettingsError",
    "Tunable",
    "check_project_overrides",
    "merge_overrides",
    "nested",
    "tunable",
    "tunable_fields",
]

SettingsT = TypeVar("SettingsT", bound="MethodSettings")

TUNABLE = "tunable"
NESTED = "nested"


class SettingsError(ValueError):
    """A settings override that is refused: unknown, not tunable by a project, or out of bounds."""


@dataclass(frozen=True)
class Tunable:
    """A field a project may set, and its bounds.

    Numbers must lie in ``[minimum, maximum]``; enums (and booleans) must be one of ``choices``;
    ``optional`` also allows ``null`` (e.g. "no limit").
    """

    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] = ()
    optional: bool = False
    integer: bool = False

    def describe(self) -> str:
        if self.choices:
            text = " | ".join(json.dumps(choice) for choice in self.choices)
        else:
            kind = "whole number" if self.integer else "number"
            text = f"{kind} in [{_number(self.minimum)}, {_number(self.maximum)}]"
        return text + (" | null" if self.optional else "")

    def check(self, value: Any, name: str) -> None:
        if value is None and self.optional:
            return
        if self.choices:
            if isinstance(value, bool) != isinstance(self.choices[0], bool) or value not in self.choices:
                raise SettingsError(f"{name} must be one of {self.describe()}, got {json.dumps(value)}")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SettingsError(f"{name} must be a {'whole ' if self.integer else ''}number, got {json.dumps(value)}")
        if self.integer and value != int(value):
            raise SettingsError(f"{name} must be a whole number, got {value}")
        if not self.minimum <= value <= self.maximum:
            raise SettingsError(f"{name} must be in [{_number(self.minimum)}, {_number(self.maximum)}], got {value}")


def _number(value: float | None) -> str:
    return "-inf" if value is None else (str(int(value)) if float(value).is_integer() else str(value))


def tunable(
    default: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[Any, ...] = (),
    optional: bool = False,
    integer: bool | None = None,
) -> Any:
    """A dataclass field a project may override within these bounds (booleans: both values).

    ``integer``: whole numbers only; default: when ``default`` is an ``int``.
    """
    if isinstance(default, bool) and not choices:
        choices = (False, True)
    if not choices and (minimum is None or maximum is None):
        raise TypeError("a tunable number needs a minimum and a maximum")
    if integer is None:
        integer = isinstance(default, int) and not isinstance(default, bool)
    spec = Tunable(minimum, maximum, tuple(choices), optional, integer)
    return field(default=default, metadata={TUNABLE: spec})


def nested(default_factory: Any) -> Any:
    """A field holding settings of their own (a dataclass); its tunable fields are tunable here."""
    return field(default_factory=default_factory, metadata={NESTED: True})


def tunable_fields(settings_class: type) -> dict[str, Tunable]:
    """The fields of ``settings_class`` a project may set (not the nested ones)."""
    return {f.name: f.metadata[TUNABLE] for f in dataclasses.fields(settings_class) if TUNABLE in f.metadata}


def _allowed_keys(settings_class: type) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(settings_class) if TUNABLE in f.metadata or NESTED in f.metadata)


def check_project_overrides(
    settings_class: type, overrides: Mapping[str, Any], context: Mapping[str, Any] | None = None, prefix: str = ""
) -> None:
    """Refuse a project's override that is not on ``settings_class``'s allow-list or out of bounds.

    ``context``: the other settings in force (to tell which class a nested field holds, e.g. the
    captioner's). Raises :class:`SettingsError` naming the field and listing the allowed ones.
    """
    if not isinstance(overrides, Mapping):
        raise SettingsError(f"{prefix.rstrip('.') or 'settings'} must be a JSON object")
    fields = {f.name: f for f in dataclasses.fields(settings_class)}
    context = {**dict(context or {}), **dict(overrides)}
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        spec = fields.get(key)
        if spec is None or not (TUNABLE in spec.metadata or NESTED in spec.metadata):
            reason = "is not a setting" if spec is None else "cannot be set by a project (only by the operator)"
            raise SettingsError(
                f"{name} {reason}; a project may set: {', '.join(_allowed_keys(settings_class)) or 'nothing'}"
            )
        if TUNABLE in spec.metadata:
            spec.metadata[TUNABLE].check(value, name)
        else:
            inner = _nested_class(settings_class, key, context)
            check_project_overrides(inner, value, None, prefix=f"{name}.")


def _nested_class(settings_class: type, key: str, context: Mapping[str, Any]) -> type:
    resolver = getattr(settings_class, "nested_settings_class", None)
    if resolver is None:  # a plain dataclass of settings: its nested fields name their type by default
        field_ = next(f for f in dataclasses.fields(settings_class) if f.name == key)
        return type(field_.default_factory())
    return resolver(key, context)


def merge_overrides(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Later layers win; a nested settings object given as a mapping is merged key by key."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in dict(layer).items():
            previous = merged.get(key)
            if isinstance(value, Mapping) and isinstance(previous, Mapping):
                merged[key] = {**dict(previous), **dict(value)}
            elif isinstance(value, Mapping) and dataclasses.is_dataclass(previous):
                merged[key] = {**_shallow_dict(previous), **dict(value)}
            else:
                merged[key] = value
    return merged


def _shallow_dict(settings: Any) -> dict[str, Any]:
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}


def build_nested(settings_class: type, value: Any, name: str) -> Any:
    """``value`` as an instance of ``settings_class`` (a mapping of its fields, or one already)."""
    if isinstance(value, settings_class):
        return value
    if not isinstance(value, Mapping):
        raise SettingsError(f"{name} must be a JSON object of {settings_class.__name__} fields")
    valid = {f.name for f in dataclasses.fields(settings_class)}
    unknown = sorted(set(value) - valid)
    if unknown:
        raise SettingsError(f"{name}: unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(valid))}")
    return settings_class(**value)


class MethodSettings:
    """Mixin for frozen dataclasses of method settings whose defaults are the paper's values."""

    @classmethod
    def for_preset(cls: type[SettingsT], overrides: Mapping[str, Any] | None = None, **changes: Any) -> SettingsT:
        """The paper's settings with a preset's overrides, then ``changes``, applied."""
        return cls.resolve(overrides or {}, changes)

    @classmethod
    def resolve(
        cls: type[SettingsT],
        preset: Mapping[str, Any],
        operator: Mapping[str, Any] = {},
        project: Mapping[str, Any] = {},
        where: str = "settings",
    ) -> SettingsT:
        """The settings in force: paper defaults < ``preset`` < ``operator`` < ``project``.

        The project's overrides must pass the allow-list (:func:`check_project_overrides`); the
        operator may set any field. Raises :class:`SettingsError` (a ``ValueError``) whose message
        starts with ``where`` and names the field.
        """
        merged = merge_overrides(preset, operator)
        try:
            check_project_overrides(cls, project, merged)
        except SettingsError as error:
            raise SettingsError(f"{where}: {error}") from None
        merged = merge_overrides(merged, project)
        valid = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(merged) - valid)
        if unknown:
            raise SettingsError(
                f"{where}: unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(valid))}"
            )
        try:
            return cls(**merged)
        except (TypeError, ValueError) as error:
            raise SettingsError(f"{where}: {error}") from None

    def replace(self: SettingsT, **changes: Any) -> SettingsT:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    def fingerprint(self) -> str:
        """A short, stable hash of the settings (for model versions and cache keys)."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:8]
