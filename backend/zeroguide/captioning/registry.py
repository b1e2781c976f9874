"""The captioners by name (zero-guidance paper, section 3.3): their settings classes and where they live.

Torch-free: the service's HTTP process reads names and validates settings here without importing
torch; :func:`build_captioner` imports the captioner class only when it builds one.

```python
from backend.zeroguide.captioning.registry import build_captioner, captioner_settings
settings = captioner_settings("retrieval", {"alternatives": 3}).with_cache_dir("~/.cache/zeroguide")
captioner = build_captioner("retrieval", models, settings)   # fast default
captioner = build_captioner("zerocap", models)               # the paper's ZeroCap (GPU), its defaults
```

Adding a captioner: a :class:`~backend.zeroguide.captioning.base.Captioner` subclass with a
``from_models(models, settings)`` classmethod, its settings class (a frozen
:class:`~backend.zeroguide.captioning.settings.CaptionerSettings` subclass), and one entry in
:data:`CAPTIONERS`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from backend.zeroguide.captioning.settings import CaptionerSettings, RetrievalSettings, ZeroCapSettings

if TYPE_CHECKING:
    from backend.zeroguide.captioning.base import Captioner

__all__ = [
    "CAPTIONERS",
    "CaptionerEntry",
    "build_captioner",
    "captioner_class",
    "captioner_names",
    "captioner_settings",
    "settings_class",
]


@dataclass(frozen=True)
class CaptionerEntry:
    """One captioner of the registry.

    Attributes:
        settings: its settings class.
        captioner: import path of its :class:`Captioner` subclass, ``"package.module:ClassName"``
            (imported only by :func:`build_captioner` / :func:`captioner_class`).
    """

    settings: type[CaptionerSettings]
    captioner: str

    def __post_init__(self) -> None:
        if not (isinstance(self.settings, type) and issubclass(self.settings, CaptionerSettings)):
            raise TypeError(f"settings must be a CaptionerSettings subclass, got {self.settings!r}")
        module, _, name = self.captioner.partition(":")
        if not module or not name:
            raise ValueError(f"captioner must be 'package.module:ClassName', got {self.captioner!r}")


CAPTIONERS: dict[str, CaptionerEntry] = {
    "retrieval": CaptionerEntry(RetrievalSettings, "backend.zeroguide.captioning.retrieval:RetrievalCaptioner"),
    "zerocap": CaptionerEntry(ZeroCapSettings, "backend.zeroguide.captioning.zerocap:ZeroCapCaptioner"),
}


def captioner_names() -> tuple[str, ...]:
    """The registered captioner names, in registry order."""
    return tuple(CAPTIONERS)


def _entry(name: str) -> CaptionerEntry:
    try:
        return CAPTIONERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown captioner {name!r}; valid captioners: {', '.join(captioner_names())}") from None


def settings_class(name: str) -> type[CaptionerSettings]:
    """The settings class of captioner ``name``.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    return _entry(name).settings


def captioner_settings(name: str, options: Mapping[str, Any] | CaptionerSettings | None = None) -> CaptionerSettings:
    """Settings of captioner ``name`` from keyword options, ready settings, or nothing (its defaults).

    Args:
        name: a registered captioner name.
        options: a mapping of settings fields to change from the defaults (e.g. from JSON), an
            instance of the captioner's settings class (returned as is), or None.

    Raises:
        ValueError: unknown name, unknown settings field (the message lists the valid ones),
            settings of another captioner, or a value its settings class rejects.
    """
    cls = settings_class(name)
    if options is None:
        return cls()
    if isinstance(options, CaptionerSettings):
        if type(options) is not cls:
            raise ValueError(f"Captioner {name!r} takes {cls.__name__}, got {type(options).__name__}")
        return options
    if not isinstance(options, Mapping):
        raise ValueError(
            f"Options of captioner {name!r} must be a mapping or {cls.__name__}, got {type(options).__name__}"
        )
    valid = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(str(key) for key in options if key not in valid)
    if unknown:
        raise ValueError(
            f"Unknown {cls.__name__} field(s) for captioner {name!r}: {', '.join(unknown)}; "
            f"valid fields: {', '.join(valid)}"
        )
    try:
        return cls(**options)
    except TypeError as error:  # e.g. a value of the wrong type reaching __post_init__
        raise ValueError(f"Invalid {cls.__name__} for captioner {name!r}: {error}") from error


def captioner_class(name: str) -> type[Captioner]:
    """The :class:`Captioner` subclass of ``name`` (imports its module, hence torch)."""
    from backend.zeroguide.captioning.base import Captioner

    module_name, _, class_name = _entry(name).captioner.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Captioner)):
        raise TypeError(f"{_entry(name).captioner} is not a Captioner subclass")
    return cls


def build_captioner(name: str, models: Any, settings: Mapping[str, Any] | CaptionerSettings | None = None) -> Captioner:
    """Build captioner ``name`` on the foundation models.

    Args:
        name: a registered captioner name (:func:`captioner_names`).
        models: the foundation models (``FoundationModels``); the captioner reads only the ones it
            needs (retrieval: ``models.clip``; ZeroCap: ``models.clip`` and ``models.language``).
        settings: as for :func:`captioner_settings`; default: the captioner's defaults.

    Raises:
        ValueError: unknown name or invalid settings (see :func:`captioner_settings`).
    """
    resolved = captioner_settings(name, settings)
    return captioner_class(name).from_models(models, resolved)
