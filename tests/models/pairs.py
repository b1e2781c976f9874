"""The ``tiny`` and ``cpu`` architectures with the same seeded random weights in float32 and bfloat16,
built once per test session (the ``cpu`` pair takes tens of seconds)."""

from __future__ import annotations

from functools import lru_cache

from backend.models.registry import FoundationModels


@lru_cache(maxsize=None)
def model_pair(preset: str) -> tuple[FoundationModels, FoundationModels]:
    """(float32, bfloat16) models of ``preset``'s architectures; parts are built on first use."""
    return (
        FoundationModels(preset, device="cpu", random_weights=True, dtype="float32"),
        FoundationModels(preset, device="cpu", random_weights=True, dtype="bfloat16"),
    )
