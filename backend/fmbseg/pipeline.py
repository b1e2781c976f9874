"""The FMbSeg facade: pseudo-label, train and predict class masks for a class list."""

from __future__ import annotations

import copy
import os
import threading
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from ..models.images import check_image
from .alignment import AlignmentModuleConfig
from .checkpoints import AlignmentCheckpoint, CheckpointError, check_feature_settings, load_alignment_checkpoint
from .inference import align_patch_grid, base_label_map, refined_label_map
from ..timing import timed
from .pseudo_labels import PseudoLabeler, PseudoLabels, resize_square
from .results import ClassMaskPrediction, LabelledMask
from .settings import FMbSegSettings
from .training import (
    TrainingExample,
    TrainingProgress,
    TrainingSettings,
    patch_labels_from_masks,
    train_alignment_module,
)

__all__ = ["ClassMaskPrediction", "FMbSegPredictor", "LabelledMask"]  # the result types live in results.py


class FMbSegPredictor:
    """FMbSeg with the foundation models of one preset.

    Without an alignment checkpoint, ``predict`` serves Stage 1 (training-free pseudo-labels);
    with one, Stage 2 (base, or SAM-refined). ``load_checkpoint`` swaps the module in place, so a
    retrained module is served without a restart.

    Args:
        models: ``FoundationModels`` (CLIP, SAM, DINOv2).
        settings: :class:`FMbSegSettings`; default: the paper's with the preset's overrides.
        checkpoint: an alignment checkpoint file or record, or ``None``.
    """

    def __init__(self, models, settings: FMbSegSettings | None = None, checkpoint=None):
        self.models = models
        self.settings = settings or FMbSegSettings.for_preset(models.method_overrides("fmbseg"))
        self.pseudo_labeler = PseudoLabeler(models, self.settings)
        self._checkpoint: AlignmentCheckpoint | None = None
        self._serving_module: torch.nn.Module | None = None  # the checkpoint's module in the models' dtype
        self._lock = threading.Lock()
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)

    # ------------------------------------------------------------------ state
    @property
    def checkpoint(self) -> AlignmentCheckpoint | None:
        return self._checkpoint

    def load_checkpoint(self, checkpoint: AlignmentCheckpoint | str | os.PathLike) -> AlignmentCheckpoint:
        """Serve this alignment module from now on (thread-safe).

        Raises CheckpointError if it maps other feature sizes than this preset's, or was trained
        with other feature settings (``FEATURE_SETTINGS``: DINOv2 input size, prompt template).
        """
        if not isinstance(checkpoint, AlignmentCheckpoint):
            path = Path(checkpoint)
            if not path.exists():
                raise CheckpointError(f"no alignment checkpoint at {path}")
            checkpoint = load_alignment_checkpoint(path, map_location=self.models.device)
        config = checkpoint.module_config
        if config.in_dim != self.models.dinov2.embed_dim or config.out_dim != self.models.clip.embed_dim:
            raise CheckpointError(
                f"the checkpoint maps {config.in_dim}-d to {config.out_dim}-d features, but preset "
                f"{self.models.preset.name!r} has {self.models.dinov2.embed_dim}-d DINOv2 and "
                f"{self.models.clip.embed_dim}-d CLIP features"
            )
        check_feature_settings(checkpoint, self.settings.to_dict())
        checkpoint.module.to(self.models.device).eval()
        serving = checkpoint.module
        dtype = getattr(self.models, "dtype", torch.float32)
        if dtype != torch.float32:  # a copy: the checkpoint's own module stays float32 (training resumes from it)
            serving = copy.deepcopy(checkpoint.module).to(dtype).eval()
        with self._lock:
            self._checkpoint = checkpoint
            self._serving_module = serving
        return checkpoint

    def trained_classes(self) -> list[str] | None:
        """The class list the served alignment module was trained for, in label order (None: Stage 1)."""
        with self._lock:
            checkpoint = self._checkpoint
        return None if checkpoint is None else list(checkpoint.classes)

    @property
    def model_version(self) -> str:
        checkpoint = self._checkpoint
        stage = f"align-{checkpoint.version}" if checkpoint else "stage1"
        return f"fmbseg-{self.models.preset.name}-{self.settings.fingerprint()}-{stage}"

    def module_config(self, kind: str = "transformer") -> AlignmentModuleConfig:
        """An alignment module config for this preset's DINOv2 and CLIP sizes."""
        return AlignmentModuleConfig(kind=kind, in_dim=self.models.dinov2.embed_dim, out_dim=self.models.clip.embed_dim)

    def text_embeddings(self, classes: Sequence[str]) -> torch.Tensor:
        return self.pseudo_labeler.text_embeddings(classes)

    # ---------------------------------------------------------------- stage 1
    def pseudo_label(
        self,
        image: np.ndarray,
        classes: Sequence[str],
        image_labels: Sequence[str] | None = None,
        timings: dict[str, float] | None = None,
    ) -> PseudoLabels:
        """Stage 1.1 + 1.2 pseudo-labels for one image (``timings``: see ``PseudoLabeler``)."""
        return self.pseudo_labeler(image, classes, image_labels=image_labels, timings=timings)

    # ---------------------------------------------------------------- stage 2
    def patch_features(self, image: np.ndarray) -> torch.Tensor:
        """Frozen DINOv2 patch features (h, w, C) of the image squashed to ``dinov2_image_size``."""
        return self.models.dinov2(image, self.settings.dinov2_image_size)

    def training_example(
        self, image: np.ndarray, masks: Sequence[LabelledMask], classes: Sequence[str], seed: int | Sequence[int] = 0
    ) -> TrainingExample:
        """One image's Stage 2 example: DINOv2 patch features and patch pseudo-labels.

        Human corrections (``source="human"``) are trained like Stage 1.1 masks: always kept and
        painted over Stage 1.2 masks.
        """
        check_image(image)
        features = self.patch_features(image)
        grid = features.shape[:2]
        unknown = sorted({m.class_name for m in masks} - set(classes))
        if unknown:
            raise ValueError(f"masks carry classes {unknown} that are not in the class list {list(classes)}")
        if masks:
            stack = np.stack([m.mask for m in masks])
            labels = patch_labels_from_masks(
                stack,
                [list(classes).index(m.class_name) for m in masks],
                ["1.2" if m.source == "1.2" else "1.1" for m in masks],
                grid,
                seed=seed,
                stage12_keep_fraction=self.settings.stage12_fraction,
            )
        else:
            labels = torch.full(grid, -1, dtype=torch.long)
        return TrainingExample(
            patch_features=features.reshape(-1, features.shape[-1]).cpu(), patch_labels=labels.flatten()
        )

    def train(
        self,
        examples: Sequence[TrainingExample],
        classes: Sequence[str],
        checkpoint_path: str | os.PathLike,
        *,
        training_settings: TrainingSettings = TrainingSettings(),
        module_kind: str = "transformer",
        resume: bool = True,
        callback: Callable[[TrainingProgress], None] | None = None,
        progress_bar: bool = True,
        serve: bool = True,
    ) -> AlignmentCheckpoint:
        """Train the alignment module on prepared examples; optionally serve it right away."""
        checkpoint = train_alignment_module(
            examples,
            list(classes),
            self.text_embeddings(classes).cpu(),
            self.module_config(module_kind),
            training_settings,
            checkpoint_path=checkpoint_path,
            resume=resume,
            callback=callback,
            progress_bar=progress_bar,
            device=self.models.device,
            method_settings=self.settings.to_dict(),
        )
        if serve:
            self.load_checkpoint(checkpoint)
        return checkpoint

    def examples_from_pseudo_labels(
        self, images: Iterable[tuple[np.ndarray, PseudoLabels]], classes: Sequence[str], seed: int = 0
    ) -> list[TrainingExample]:
        """Stage 2 examples from (image, Stage 1 pseudo-labels) pairs."""
        examples = []
        for index, (image, pseudo) in enumerate(images):
            masks = [LabelledMask(m.mask, m.class_name, m.source) for m in pseudo.masks]
            examples.append(self.training_example(image, masks, classes, seed=(seed, index)))
        return examples

    # --------------------------------------------------------------- predict
    def predict(
        self,
        image: np.ndarray,
        classes: Sequence[str],
        refine: bool | None = None,
        open_vocabulary: bool = False,
        timings: dict[str, float] | None = None,
        stage1_agreement: bool = False,
    ) -> ClassMaskPrediction:
        """Class masks for ``classes`` (the vocabulary, e.g. a Label Studio project's labels).

        With an alignment checkpoint the class list must hold the same classes as the checkpoint
        (any order), unless ``open_vocabulary``: the module maps patches into CLIP's text space,
        so any class list can be scored (the paper's zero-shot evaluation on other datasets).
        Without a checkpoint, Stage 1 pseudo-labels are served. ``timings``, if given, is filled
        with the seconds of each step (``dinov2``, ``alignment``, ``label_map``, ``sam_embedding``,
        ``sam_automatic``, ``overlay``; Stage 1's steps without a checkpoint). ``stage1_agreement``:
        with a checkpoint, also run Stage 1 (SAM: seconds on a CPU) and report the share of the
        pixels both label with the same class (``ClassMaskPrediction.stage1_agreement``).
        """
        check_image(image)
        classes = list(dict.fromkeys(classes))
        if not classes:
            raise ValueError("the class list is empty")
        refine = self.settings.refine if refine is None else refine
        with self._lock:
            checkpoint, module = self._checkpoint, self._serving_module
        version = self.model_version
        if checkpoint is None:
            label_map = self.pseudo_label(image, classes, timings=timings).label_map()
            return ClassMaskPrediction(label_map, classes, "stage1", version, self.models.random_weights)
        if not open_vocabulary and set(classes) != set(checkpoint.classes):
            raise CheckpointError(
                f"the class list {sorted(classes)} differs from the alignment checkpoint's {sorted(checkpoint.classes)}: "
                "retrain for these classes, or predict with the checkpoint's class list"
            )
        with torch.inference_mode():
            with timed(timings, "dinov2"):
                features = self.patch_features(image)
            with timed(timings, "alignment"):
                patches = align_patch_grid(module, features)
            with timed(timings, "label_map"):
                label_map = base_label_map(patches, self.text_embeddings(classes), image.shape[:2])
        source = "stage2-base"
        if refine:
            sam_image = resize_square(image, self.settings.sam_image_size)
            embed = getattr(self.models.sam, "embed", None)
            if embed is not None:
                with timed(timings, "sam_embedding"):
                    embed(sam_image)
            with timed(timings, "sam_automatic"):
                records = self.models.sam.automatic_masks(
                    sam_image, output_size=image.shape[:2], **self.settings.automatic_mask_options()
                )
            if records:
                with timed(timings, "overlay"):
                    masks = np.stack([r["segmentation"] for r in records])  # at the image's size
                    label_map = refined_label_map(label_map, masks)
            source = "stage2-refined"
        agreement = None
        if stage1_agreement:
            stage1 = self.pseudo_label(image, classes).label_map()
            both = (stage1 >= 0) & (label_map >= 0)
            agreement = float((stage1[both] == label_map[both]).mean()) if both.any() else None
        return ClassMaskPrediction(label_map, classes, source, version, self.models.random_weights, agreement)
