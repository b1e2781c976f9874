"""Alignment checkpoints: the trained module M with what it was trained for, as safetensors.

A checkpoint file holds M's weights, the (K, D) class text features t_k it was aligned to, the
class list, module config, Stage-2 training settings, the method settings (``FMbSegSettings``)
it was trained with, and a version; files written during
training also hold the optimiser, scheduler and shuffle state to resume from. Files are written
atomically (temporary file, then ``os.replace``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from .alignment import AlignmentModule, AlignmentModuleConfig

if TYPE_CHECKING:
    from .training import TrainingSettings

__all__ = [
    "CHECKPOINT_FORMAT",
    "FEATURE_SETTINGS",
    "AlignmentCheckpoint",
    "CheckpointError",
    "check_feature_settings",
    "load_alignment_checkpoint",
    "save_alignment_checkpoint",
]

CHECKPOINT_FORMAT = "fmbseg-alignment/1"

# The FMbSegSettings fields that change what M sees, so serving must use the training values:
#   dinov2_image_size: the DINOv2 input side; it sets the patch grid (h, w) = side / 14 and the
#       patch features x themselves (interpolated position embeddings, other image detail), and
#       M's self-attention runs over those h*w patches.
#   prompt_template: the text of each class, hence the CLIP text features t_k that M's outputs z
#       were aligned to (Eq. 1) and that prediction scores them against (z . t_k).
# The other fields only shape Stage 1 pseudo-labels (training data) or the SAM refinement at
# prediction time: serving may change them.
FEATURE_SETTINGS = ("dinov2_image_size", "prompt_template")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: not ours, damaged, or for other classes/settings."""


@dataclass(frozen=True)
class AlignmentCheckpoint:
    """A trained (or partly trained) alignment module and what it was trained for.

    module: the AlignmentModule (eval mode); classes: the K class names, in label order;
    text_embeddings: (K, D) the text features it was trained against; epochs_completed;
    loss_history: the mean loss of each completed epoch; version: "<content hash>-<UTC time>";
    method_settings: ``FMbSegSettings.to_dict()`` of the training run ({} when not recorded, as
    in files written before it was), for ``check_feature_settings``.
    """

    module: AlignmentModule
    classes: tuple[str, ...]
    text_embeddings: torch.Tensor
    module_config: AlignmentModuleConfig
    settings: TrainingSettings
    epochs_completed: int
    loss_history: tuple[float, ...]
    version: str
    method_settings: dict[str, Any] = field(default_factory=dict)  # JSON values


def _content_hash(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def _new_version(module: torch.nn.Module) -> str:
    return f"{_content_hash(module)}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"


def _write_atomically(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write to a temporary file in the same folder, then ``os.replace``: a crash mid-write
    leaves the previous checkpoint untouched."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, temporary, metadata)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _checkpoint_payload(
    checkpoint: AlignmentCheckpoint,
    training_state: dict[str, Any] | None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = {f"module.{k}": v for k, v in checkpoint.module.state_dict().items()}
    tensors["text_embeddings"] = checkpoint.text_embeddings
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "version": checkpoint.version,
        "classes": json.dumps(list(checkpoint.classes)),
        "module": json.dumps(checkpoint.module_config.to_dict()),
        "settings": json.dumps(checkpoint.settings.to_dict()),
        "epochs_completed": str(checkpoint.epochs_completed),
        "loss_history": json.dumps(list(checkpoint.loss_history)),
        "method_settings": json.dumps(checkpoint.method_settings),
    }
    if training_state is not None:
        optimizer_state = training_state["optimizer"]
        for index, values in optimizer_state["state"].items():
            for key, value in values.items():
                if not torch.is_tensor(value):
                    raise TypeError(f"Optimizer state {key!r} is not a tensor; cannot store it.")
                tensors[f"optimizer.state.{index}.{key}"] = value
        tensors["rng.shuffle"] = training_state["shuffle_rng"]
        metadata["optimizer_param_groups"] = json.dumps(optimizer_state["param_groups"])
        metadata["scheduler"] = json.dumps(training_state["scheduler"])
        metadata["data_fingerprint"] = training_state["data_fingerprint"]
    return tensors, metadata


def save_alignment_checkpoint(checkpoint: AlignmentCheckpoint, path: str | os.PathLike) -> Path:
    """Write a checkpoint (module, classes, text features, settings, version) without training
    state, atomically. Returns the path."""
    path = Path(path)
    tensors, metadata = _checkpoint_payload(checkpoint, None)
    _write_atomically(path, tensors, metadata)
    return path


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    if not path.is_file():
        raise FileNotFoundError(f"No FMbSeg alignment checkpoint at {str(path)!r}.")
    try:
        with safe_open(str(path), framework="pt") as reader:
            metadata = dict(reader.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file: {error}") from error
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not an FMbSeg alignment checkpoint "
            f"(format {metadata.get('format')!r}, expected {CHECKPOINT_FORMAT!r})."
        )
    return tensors, metadata


def _check_classes(expected: Sequence[str], stored: Sequence[str], path: Path) -> None:
    expected, stored = list(expected), list(stored)
    if expected == stored:
        return
    only_expected = [c for c in expected if c not in stored]
    only_stored = [c for c in stored if c not in expected]
    detail = (
        "same classes in a different order"
        if not only_expected and not only_stored and len(expected) == len(stored)
        else f"missing from the checkpoint: {only_expected}; only in the checkpoint: {only_stored}"
    )
    raise CheckpointError(
        f"Class list differs from checkpoint {str(path)!r} ({detail}).\n"
        f"  requested ({len(expected)}): {expected}\n  checkpoint ({len(stored)}): {stored}"
    )


def _parse_checkpoint(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> AlignmentCheckpoint:
    from .training import TrainingSettings  # training.py imports this module

    try:
        classes = tuple(json.loads(metadata["classes"]))
        module_config = AlignmentModuleConfig.from_dict(json.loads(metadata["module"]))
        settings = TrainingSettings.from_dict(json.loads(metadata["settings"]))
        epochs_completed = int(metadata["epochs_completed"])
        loss_history = tuple(float(v) for v in json.loads(metadata["loss_history"]))
        version = metadata["version"]
        text_embeddings = tensors["text_embeddings"]
        method_settings = json.loads(metadata.get("method_settings", "{}"))  # absent in older files
        if not isinstance(method_settings, dict):
            raise TypeError(f"method_settings is a {type(method_settings).__name__}, not a JSON object")
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"Checkpoint {str(path)!r} has damaged metadata: {error!r}") from error
    module = AlignmentModule(module_config)
    state = {k[len("module.") :]: v for k, v in tensors.items() if k.startswith("module.")}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"Checkpoint {str(path)!r} does not fit its module config: {error}") from error
    module.eval()
    return AlignmentCheckpoint(
        module=module,
        classes=classes,
        text_embeddings=text_embeddings,
        module_config=module_config,
        settings=settings,
        epochs_completed=epochs_completed,
        loss_history=loss_history,
        version=version,
        method_settings=method_settings,
    )


def load_alignment_checkpoint(
    path: str | os.PathLike,
    *,
    expected_classes: Sequence[str] | None = None,
    map_location: str | torch.device = "cpu",
) -> AlignmentCheckpoint:
    """Read a checkpoint written by training or ``save_alignment_checkpoint``.

    Raises FileNotFoundError if there is no file, CheckpointError if it is not an FMbSeg
    alignment checkpoint, or if ``expected_classes`` (when given) differs from the stored class
    list (the message lists both).
    """
    path = Path(path)
    tensors, metadata = _read_checkpoint(path)
    checkpoint = _parse_checkpoint(path, tensors, metadata)
    if expected_classes is not None:
        _check_classes(expected_classes, checkpoint.classes, path)
    checkpoint.module.to(map_location)
    return dataclasses.replace(checkpoint, text_embeddings=checkpoint.text_embeddings.to(map_location))


def check_feature_settings(checkpoint: AlignmentCheckpoint, settings: Mapping[str, Any]) -> None:
    """Raise CheckpointError if ``settings`` (``FMbSegSettings.to_dict()`` of the predictor that
    would serve ``checkpoint``) differ from the training run's in a ``FEATURE_SETTINGS`` field.

    Only recorded values are compared: a checkpoint without method settings passes.
    """
    stored = checkpoint.method_settings
    changed = [
        f"{name}: {stored[name]!r} in the checkpoint, {settings.get(name)!r} here"
        for name in FEATURE_SETTINGS
        if name in stored and stored[name] != settings.get(name)
    ]
    if changed:
        raise CheckpointError(
            f"alignment checkpoint {checkpoint.version} was trained with other feature settings "
            f"({'; '.join(changed)}): serve it with the training values, or retrain"
        )
