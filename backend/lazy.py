"""Lazy package exports (PEP 562): a package's names are imported from their submodule on first use.

The service's HTTP process imports the methods' settings and result modules, which import no
torch; a package ``__init__`` that imported its pipeline eagerly would pull torch in with them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` whose ``exports`` map each name to its submodule.

    Usage in a package's ``__init__.py``::

        __getattr__, __dir__ = lazy_exports(__name__, {"Segment": "results", ...})
    """
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        submodule = exports.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{submodule}"), name)
        namespace[name] = value  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
