"""The floating-point type the foundation models compute in: the ``DTYPE`` setting.

``DTYPE`` is ``auto`` (the default), ``float32`` or ``bfloat16``. ``auto`` picks bfloat16 where the
hardware multiplies it natively -- a CPU with AMX (``amx_bf16``) or AVX-512-BF16
(``avx512_bf16``), a CUDA GPU that supports it -- and float32 everywhere else, at run time.

What is cast: the *weights* (``model.to(torch.bfloat16)``) and the inputs. ``torch.autocast`` is
not used: on a CPU it casts on every call and measured 4x slower than float32
(``shared/notes/models-on-cpu.md``). Numerically delicate steps stay float32 in the model code:
softmax with a mask's log, saliency and global-subtraction weights (``segment_attention``), SAM's
prompt encoder and its LayerNorm2d, every returned embedding, Ward distances (float64) and the
TSupCon loss (training is float32).

Reading the setting imports no torch (the service's HTTP process may check it);
:func:`resolve_dtype` does.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["DTYPE_CHOICES", "DTYPE_ENV", "check_dtype_name", "cpu_bf16_flags", "resolve_dtype", "dtype_name"]

DTYPE_ENV = "DTYPE"
DTYPE_CHOICES = ("auto", "float32", "bfloat16")
_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16"}
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def check_dtype_name(value: str) -> str:
    """``value`` as one of :data:`DTYPE_CHOICES` (case-insensitive; ``fp32`` and ``bf16`` accepted)."""
    name = str(value).strip().lower()
    name = _ALIASES.get(name, name)
    if name not in DTYPE_CHOICES:
        raise ValueError(f"{DTYPE_ENV} must be one of {', '.join(DTYPE_CHOICES)}, got {value!r}")
    return name


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16_flags() -> list[str]:
    """The flags among ``amx_bf16``/``amx_tile``/``avx512_bf16``/``avx512f`` this CPU has (for reports)."""
    flags = set(cpu_flags())
    try:  # torch's own probe, where /proc/cpuinfo is missing (macOS, containers that hide it)
        import torch

        if torch.cpu._is_avx512_bf16_supported():
            flags.add("avx512_bf16")
        if torch.cpu._is_amx_tile_supported():
            flags.update(("amx_tile", "amx_bf16"))
    except (ImportError, AttributeError):
        pass
    return sorted(flags & {"amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2"})


def _cpu_has_fast_bf16() -> bool:
    return any(flag in cpu_bf16_flags() for flag in BF16_CPU_FLAGS)


def resolve_dtype(dtype: Any = None, device: Any = "cpu") -> "torch.dtype":
    """The dtype to compute in on ``device``.

    Args:
        dtype: ``torch.float32``/``torch.bfloat16``, a name of :data:`DTYPE_CHOICES`, or ``None``
            (read the ``DTYPE`` environment variable; unset means ``auto``).
        device: where the models run; ``auto`` asks this device.
    """
    import torch

    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"the models compute in float32 or bfloat16, not {dtype}")
        return dtype
    if dtype is None:
        dtype = os.environ.get(DTYPE_ENV, "").strip() or "auto"
    name = check_dtype_name(dtype)
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if _cpu_has_fast_bf16() else torch.float32
    return torch.float32


def dtype_name(dtype: "torch.dtype") -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")
