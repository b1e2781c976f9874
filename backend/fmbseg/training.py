"""Stage 2 training of the alignment module (section 3.3, section 4.1, appendix 2).

Inputs are precomputed frozen-encoder features: the encoder (DINOv2) never trains, so its patch
features are computed once per image and Stage 2 only runs the small alignment module M.

1. ``patch_labels_from_masks`` turns one image's Stage-1 masks (image resolution, each with a
   class and a source, "1.1" or "1.2") into pseudo labels y on the encoder's patch grid.
2. ``train_alignment_module`` optimises M with the Stage-2 loss (``loss.py``): SGD, cosine
   annealing, 5 images a batch, 10 epochs (section 4.1). It writes a checkpoint after every
   epoch (``checkpoints.py``: safetensors, atomically) and resumes from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .alignment import AlignmentModule, AlignmentModuleConfig, build_from_config
from .checkpoints import (  # noqa: F401 (re-exported: callers import checkpoint names from here)
    CHECKPOINT_FORMAT,
    AlignmentCheckpoint,
    CheckpointError,
    _check_classes,
    _checkpoint_payload,
    _new_version,
    _parse_checkpoint,
    _read_checkpoint,
    _write_atomically,
    load_alignment_checkpoint,
    save_alignment_checkpoint,
)
from .loss import LossSettings, alignment_loss

STAGE_1_1 = "1.1"  # masks from SAM queried with CLIP points (section 3.2.1)
STAGE_1_2 = "1.2"  # SAM automatic masks classified with CLIP (section 3.2.2)
MASK_SOURCES = (STAGE_1_1, STAGE_1_2)
IGNORE_LABEL = -1


# ---------------------------------------------------------------------------------------------
# Pseudo labels on the patch grid
# ---------------------------------------------------------------------------------------------


def select_stage12_masks(mask_sources: Sequence[str], keep_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of the masks kept for training: every Stage-1.1 mask and a random
    ``round(keep_fraction * M_1.2)`` of the image's M_1.2 Stage-1.2 masks (appendix 2.1, Table 2:
    75%). Rounding is half up, so a lone Stage-1.2 mask is kept at 75%."""
    sources = list(mask_sources)
    unknown = sorted({s for s in sources if s not in MASK_SOURCES})
    if unknown:
        raise ValueError(f"Unknown mask sources {unknown}; expected {MASK_SOURCES}.")
    stage11 = [i for i, s in enumerate(sources) if s == STAGE_1_1]
    stage12 = np.array([i for i, s in enumerate(sources) if s == STAGE_1_2], dtype=np.int64)
    keep_count = int(math.floor(keep_fraction * len(stage12) + 0.5))
    kept12 = rng.choice(stage12, size=keep_count, replace=False) if keep_count else stage12[:0]
    return np.sort(np.concatenate([np.array(stage11, dtype=np.int64), kept12]))


def patch_labels_from_masks(
    masks: np.ndarray | torch.Tensor,
    mask_classes: Sequence[int],
    mask_sources: Sequence[str],
    grid_shape: tuple[int, int],
    *,
    seed: int | Sequence[int] = 0,
    stage12_keep_fraction: float = 0.75,
    min_area_fraction: float = 0.5,
) -> torch.Tensor:
    """Pseudo labels y on the patch grid from one image's Stage-1 masks.

    masks: (M, H, W) bool at image resolution; mask_classes: M class indices in [0, K);
    mask_sources: M strings, "1.1" or "1.2"; grid_shape: (h, w) of the encoder's patch grid
    (DINOv2 at 518x518: (37, 37)). Returns (h, w) int64, -1 where no label is given;
    ``.flatten()`` is the encoder's row-major patch order.

    1. Stage-1.2 masks are subsampled (``select_stage12_masks``; appendix 2.1: 75%), with
       ``numpy.random.default_rng(seed)``: pass e.g. ``seed=(settings_seed, image_index)`` for a
       fixed, order-independent split per image.
    2. Masks are painted into a pixel label map: the kept Stage-1.2 masks first, then the
       Stage-1.1 masks on top (Stage 1.1 takes precedence where they overlap: it comes from CLIP's
       detection of the class itself). Within one source, larger masks are painted first, so a
       smaller mask inside a larger one keeps its own label (ties: mask order).
    3. Area vote: each patch covers a cell of pixels (bins of ``adaptive_avg_pool2d``); it takes
       the class covering the largest share of its pixels if that share is at least
       ``min_area_fraction`` (ours: 0.5), else -1. Ties go to the lower class index.
    """
    mask_array = torch.as_tensor(np.asarray(masks) if not torch.is_tensor(masks) else masks)
    if mask_array.ndim != 3:
        raise ValueError(f"masks must be (M, H, W), got shape {tuple(mask_array.shape)}.")
    mask_array = mask_array.bool()
    count, height, width = mask_array.shape
    classes = [int(c) for c in mask_classes]
    if len(classes) != count or len(mask_sources) != count:
        raise ValueError(f"Got {count} masks but {len(classes)} classes and {len(mask_sources)} sources.")
    if any(c < 0 for c in classes):
        raise ValueError(f"mask_classes must be >= 0, got {classes}.")
    grid_h, grid_w = (int(v) for v in grid_shape)
    if grid_h <= 0 or grid_w <= 0 or grid_h > height or grid_w > width:
        raise ValueError(
            f"grid_shape {tuple(grid_shape)} must be positive and at most the mask size {(height, width)}."
        )
    if not 0.0 <= stage12_keep_fraction <= 1.0:
        raise ValueError(f"stage12_keep_fraction must be in [0, 1], got {stage12_keep_fraction}.")
    if not 0.0 < min_area_fraction <= 1.0:
        raise ValueError(f"min_area_fraction must be in (0, 1], got {min_area_fraction}.")

    kept = select_stage12_masks(mask_sources, stage12_keep_fraction, np.random.default_rng(seed))
    areas = mask_array.flatten(1).sum(dim=1).tolist()
    source_rank = {STAGE_1_2: 0, STAGE_1_1: 1}  # painted later wins
    order = sorted(kept.tolist(), key=lambda i: (source_rank[mask_sources[i]], -areas[i], i))
    pixel_labels = torch.full((height, width), IGNORE_LABEL, dtype=torch.long)
    for index in order:
        pixel_labels[mask_array[index]] = classes[index]

    patch_labels = torch.full((grid_h, grid_w), IGNORE_LABEL, dtype=torch.long)
    present = torch.unique(pixel_labels[pixel_labels >= 0])
    if present.numel() == 0:
        return patch_labels
    one_hot = (pixel_labels[None] == present[:, None, None]).float()  # (U, H, W)
    shares = F.adaptive_avg_pool2d(one_hot[None], (grid_h, grid_w))[0]  # (U, h, w) area fractions
    best_share, best = shares.max(dim=0)
    labelled = best_share >= min_area_fraction - 1e-6
    patch_labels[labelled] = present[best[labelled]]
    return patch_labels


# ---------------------------------------------------------------------------------------------
# Settings and records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingExample:
    """One image for Stage 2.

    patch_features: (N, C_in) frozen encoder patch features (cls token dropped), row-major grid.
    patch_labels: (N,) int64 pseudo labels in [0, K), -1 for none.
    """

    patch_features: torch.Tensor
    patch_labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.patch_features.ndim != 2:
            raise ValueError(f"patch_features must be (N, C_in), got {tuple(self.patch_features.shape)}.")
        if self.patch_labels.shape != self.patch_features.shape[:1]:
            raise ValueError(
                f"patch_labels must be (N,) = ({self.patch_features.shape[0]},), "
                f"got {tuple(self.patch_labels.shape)}."
            )


@dataclass(frozen=True)
class TrainingSettings:
    """Stage-2 optimisation. The paper fixes the optimiser family, schedule, batch size and
    epochs (section 4.1); learning rate, momentum, weight decay and seed are ours."""

    batch_size: int = 5  # section 4.1: "a batch size of 5 images"
    epochs: int = 10  # section 4.1: "train our alignment module for 10 epochs only"
    learning_rate: float = 0.1  # ours (paper: SGD, value not given)
    momentum: float = 0.9  # ours
    weight_decay: float = 0.0  # ours
    min_learning_rate: float = 0.0  # ours: cosine annealing's floor eta_min
    loss: LossSettings = field(default_factory=LossSettings)  # section 3.3, Eq. 1
    seed: int = 0  # ours: module initialisation and batch order
    shuffle: bool = True  # ours: a new image order every epoch

    def __post_init__(self) -> None:
        for name in ("batch_size", "epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}.")
        if not 0 <= self.min_learning_rate <= self.learning_rate:
            raise ValueError(
                f"min_learning_rate must be in [0, learning_rate={self.learning_rate}], got {self.min_learning_rate}."
            )
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}.")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}.")
        if not isinstance(self.loss, LossSettings):
            raise ValueError(f"loss must be a LossSettings, got {type(self.loss).__name__}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainingSettings":
        values = dict(values)
        values["loss"] = LossSettings(**values.get("loss", {}))
        return cls(**values)


@dataclass(frozen=True)
class TrainingProgress:
    """What the progress callback receives: after every step, and once more at each epoch's end
    (``epoch_finished=True``, ``loss`` = the epoch's mean, ``checkpoint_path`` set if saving)."""

    epoch: int  # 1-based epoch in progress
    epochs: int
    step: int  # optimisation steps done so far, over all epochs
    total_steps: int
    loss: float
    learning_rate: float
    epoch_finished: bool = False
    checkpoint_path: Path | None = None


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _data_fingerprint(examples: Sequence[TrainingExample]) -> str:
    """Hash of the number of images, their feature shapes and their labels (not the features)."""
    digest = hashlib.sha256(str(len(examples)).encode())
    for example in examples:
        digest.update(str(tuple(example.patch_features.shape)).encode())
        digest.update(example.patch_labels.detach().cpu().to(torch.int64).numpy().tobytes())
    return digest.hexdigest()[:16]


def _validate_inputs(
    examples: Sequence[TrainingExample],
    class_names: Sequence[str],
    text_embeddings: torch.Tensor,
    module_config: AlignmentModuleConfig,
) -> None:
    if len(examples) == 0:
        raise ValueError("No training examples.")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"Class names must be unique, got {list(class_names)}.")
    if text_embeddings.ndim != 2 or text_embeddings.shape != (len(class_names), module_config.out_dim):
        raise ValueError(
            f"text_embeddings must be (K, D) = ({len(class_names)}, {module_config.out_dim}), "
            f"got {tuple(text_embeddings.shape)}."
        )
    for index, example in enumerate(examples):
        if not isinstance(example, TrainingExample):
            raise ValueError(f"examples[{index}] is a {type(example).__name__}, not a TrainingExample.")
        labels = example.patch_labels
        if labels.numel() and (int(labels.min()) < IGNORE_LABEL or int(labels.max()) >= len(class_names)):
            raise ValueError(
                f"examples[{index}] has labels in [{int(labels.min())}, {int(labels.max())}]; "
                f"expected -1 (none) or [0, {len(class_names)})."
            )
        if example.patch_features.shape[1] != module_config.in_dim:
            raise ValueError(
                f"examples[{index}] has {example.patch_features.shape[1]}-d features; "
                f"the module expects in_dim={module_config.in_dim}."
            )


def _forward_batch(
    module: AlignmentModule, batch: Sequence[TrainingExample], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run M on each image (attention stays within an image). Returns (P, D) and (P,)."""
    labels = torch.cat([e.patch_labels.to(device=device, dtype=torch.long) for e in batch])
    shapes = {tuple(e.patch_features.shape) for e in batch}
    if len(shapes) == 1:
        features = torch.stack([e.patch_features for e in batch]).to(device)
        embeddings = module(features).flatten(0, 1)
    else:
        embeddings = torch.cat([module(e.patch_features.to(device)) for e in batch])
    return embeddings, labels


def _resume_state(
    path: Path,
    classes: Sequence[str],
    texts: torch.Tensor,
    module_config: AlignmentModuleConfig,
    settings: TrainingSettings,
    fingerprint: str,
) -> tuple[dict[str, torch.Tensor], dict[str, str], AlignmentCheckpoint]:
    tensors, metadata = _read_checkpoint(path)
    checkpoint = _parse_checkpoint(path, tensors, metadata)
    _check_classes(classes, checkpoint.classes, path)
    if not torch.allclose(checkpoint.text_embeddings.float(), texts.cpu(), atol=1e-5):
        raise CheckpointError(
            f"Cannot resume from {str(path)!r}: the class text embeddings differ from the checkpoint's "
            "(another text encoder or prompt?). Use resume=False to start again."
        )
    if checkpoint.module_config != module_config:
        raise CheckpointError(
            f"Cannot resume from {str(path)!r}: module {checkpoint.module_config} differs from {module_config}."
        )
    if checkpoint.settings != settings:
        old, new = checkpoint.settings.to_dict(), settings.to_dict()
        changed = {k: (old[k], new[k]) for k in new if old[k] != new[k]}
        raise CheckpointError(
            f"Cannot resume from {str(path)!r}: settings changed (checkpoint, now): {changed}. "
            "Use resume=False to start again."
        )
    if "scheduler" not in metadata:
        raise CheckpointError(f"Cannot resume from {str(path)!r}: it holds no training state.")
    if metadata["data_fingerprint"] != fingerprint:
        raise CheckpointError(
            f"Cannot resume from {str(path)!r}: the training images or their labels differ "
            "from the checkpoint's. Use resume=False to start again."
        )
    return tensors, metadata, checkpoint


def train_alignment_module(
    examples: Sequence[TrainingExample],
    class_names: Sequence[str],
    text_embeddings: torch.Tensor,
    module_config: AlignmentModuleConfig,
    settings: TrainingSettings = TrainingSettings(),
    *,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = True,
    callback: Callable[[TrainingProgress], None] | None = None,
    progress_bar: bool = True,
    device: str | torch.device = "cpu",
    method_settings: Mapping[str, Any] | None = None,
) -> AlignmentCheckpoint:
    """Train the alignment module M on pseudo-labelled images (section 3.3).

    examples: the images' frozen features and pseudo labels (any sequence; it may load lazily).
    class_names: the K classes, in label order; text_embeddings: (K, D) their CLIP text features.
    checkpoint_path: written after every epoch (atomically). With ``resume=True`` and an existing
        file, training continues after its last completed epoch; classes, module, settings and
        data must match it, else CheckpointError.
    callback: called with a ``TrainingProgress`` after each step and at each epoch's end; an
        exception raised in it stops training, and the last checkpoint stays valid.
    method_settings: the method's settings (``FMbSegSettings.to_dict()``), recorded in the
        checkpoint so serving can check its features match (``check_feature_settings``).
    Returns the trained module (eval mode) with its record, as ``load_alignment_checkpoint``.
    """
    from tqdm.auto import tqdm

    _validate_inputs(examples, class_names, text_embeddings, module_config)
    device = torch.device(device)
    classes = tuple(class_names)
    texts = F.normalize(text_embeddings.detach().float(), dim=-1)
    fingerprint = _data_fingerprint(examples)
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    recorded_settings = dict(method_settings or {})

    module = build_from_config(module_config, seed=settings.seed).to(device)
    optimizer = torch.optim.SGD(
        module.parameters(),
        lr=settings.learning_rate,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    steps_per_epoch = math.ceil(len(examples) / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    # cosine annealing over all steps: lr_s = eta_min + (lr - eta_min)(1 + cos(pi s / S)) / 2
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=total_steps, eta_min=settings.min_learning_rate
    )
    shuffle_rng = torch.Generator().manual_seed(settings.seed)
    start_epoch, loss_history, version = 0, [], None

    if path is not None and resume and path.exists():
        tensors, metadata, stored = _resume_state(path, classes, texts, module_config, settings, fingerprint)
        module.load_state_dict(stored.module.state_dict())
        optimizer_state: dict[str, Any] = {"state": {}, "param_groups": json.loads(metadata["optimizer_param_groups"])}
        for name, value in tensors.items():
            if name.startswith("optimizer.state."):
                index, key = name[len("optimizer.state.") :].split(".", 1)
                optimizer_state["state"].setdefault(int(index), {})[key] = value.to(device)
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(json.loads(metadata["scheduler"]))
        shuffle_rng.set_state(tensors["rng.shuffle"])
        start_epoch, loss_history, version = stored.epochs_completed, list(stored.loss_history), stored.version

    module.train()
    bar = tqdm(
        total=total_steps,
        initial=start_epoch * steps_per_epoch,
        disable=not progress_bar,
        desc="FMbSeg stage 2",
        unit="step",
    )
    try:
        for epoch in range(start_epoch, settings.epochs):
            order = (
                torch.randperm(len(examples), generator=shuffle_rng)
                if settings.shuffle
                else torch.arange(len(examples))
            ).tolist()
            epoch_losses = []
            for batch_index in range(steps_per_epoch):
                batch = [
                    examples[i]
                    for i in order[batch_index * settings.batch_size : (batch_index + 1) * settings.batch_size]
                ]
                embeddings, labels = _forward_batch(module, batch, device)
                loss = alignment_loss(embeddings, labels, texts.to(device), settings.loss)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                learning_rate = optimizer.param_groups[0]["lr"]
                scheduler.step()
                epoch_losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{epoch_losses[-1]:.4f}")
                if callback is not None:
                    callback(
                        TrainingProgress(
                            epoch=epoch + 1,
                            epochs=settings.epochs,
                            step=epoch * steps_per_epoch + batch_index + 1,
                            total_steps=total_steps,
                            loss=epoch_losses[-1],
                            learning_rate=learning_rate,
                        )
                    )
            loss_history.append(float(np.mean(epoch_losses)))
            if path is not None:
                record = AlignmentCheckpoint(
                    module=module,
                    classes=classes,
                    text_embeddings=texts,
                    module_config=module_config,
                    settings=settings,
                    epochs_completed=epoch + 1,
                    loss_history=tuple(loss_history),
                    version=_new_version(module),
                    method_settings=recorded_settings,
                )
                version = record.version
                tensors, metadata = _checkpoint_payload(
                    record,
                    {
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "shuffle_rng": shuffle_rng.get_state(),
                        "data_fingerprint": fingerprint,
                    },
                )
                _write_atomically(path, tensors, metadata)
            if callback is not None:
                callback(
                    TrainingProgress(
                        epoch=epoch + 1,
                        epochs=settings.epochs,
                        step=(epoch + 1) * steps_per_epoch,
                        total_steps=total_steps,
                        loss=loss_history[-1],
                        learning_rate=optimizer.param_groups[0]["lr"],
                        epoch_finished=True,
                        checkpoint_path=path,
                    )
                )
    finally:
        bar.close()

    module.eval()
    return AlignmentCheckpoint(
        module=module,
        classes=classes,
        text_embeddings=texts.cpu(),
        module_config=module_config,
        settings=settings,
        epochs_completed=settings.epochs,
        loss_history=tuple(loss_history),
        version=version if path is not None and version is not None else _new_version(module),
        method_settings=recorded_settings,
    )
