"""The default training hook: retrain FMbSeg's alignment module on the human corrections.

Label Studio sends ``START_TRAINING`` (the "Start training" button, or after every saved
annotation when the project trains on annotation updates). The service stores every annotation
safely (``annotation_store``) and runs this hook in its background queue, next to the models:

1. the project's class-mask controls (BrushLabels / PolygonLabels in ``classes`` mode) give the
   vocabulary: their labels' prompts, as the class-mask adapter sends them to FMbSeg;
2. each stored annotation's regions of those controls become masks (``LabelledMask``, source
   ``"human"``), resized onto the image the models see; the task's image is fetched with the
   service's Label Studio credentials;
3. the alignment module is trained (FMbSeg Stage 2: TSupCon, SGD, cosine annealing, 5 images a
   batch, 10 epochs) into ``MODEL_DIR/training/``, resumable after a crash;
4. only when training has finished is the checkpoint moved (atomically) into the checkpoint
   folder: the next prediction serves it, and its name enters ``model_version``, so Label Studio
   re-predicts. A crash leaves the previous checkpoint in service.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .adapters.base import control_mode
from .adapters.class_masks import label_prompt
from .training import TrainingRequest, annotation_regions

logger = logging.getLogger(__name__)

__all__ = ["ClassVocabulary", "class_vocabulary", "retrain_fmbseg"]

CLASSES_MODE = "classes"


@dataclass
class ClassVocabulary:
    """The class-mask controls of a label config and their labels' FMbSeg prompts."""

    controls: dict[str, str]  # control name -> the image field it labels (task data key)
    label_to_prompt: dict[str, str]

    @property
    def classes(self) -> list[str]:
        return list(dict.fromkeys(self.label_to_prompt.values()))


def class_vocabulary(label_config: str) -> ClassVocabulary:
    """Read the class-mask controls of a Label Studio config (``ValueError`` when there is none)."""
    from label_studio_sdk.label_interface import LabelInterface

    interface = LabelInterface(label_config)
    controls: dict[str, str] = {}
    label_to_prompt: dict[str, str] = {}
    for control in interface.controls:
        if control.tag not in ("BrushLabels", "PolygonLabels") or control_mode(control, interface) != CLASSES_MODE:
            continue
        image = interface.get_object(control.to_name[0])
        controls[control.name] = str(image.value).lstrip("$")
        attributes = control.labels_attrs or {}
        for label in control.labels or []:
            prompt = label_prompt(label, dict(getattr(attributes.get(label), "attr", None) or {}))
            if prompt:
                label_to_prompt[label] = prompt
    if not controls:
        raise ValueError("the label config has no class-mask control (BrushLabels/PolygonLabels with class labels)")
    if not label_to_prompt:
        raise ValueError("the class-mask controls have no labels to train")
    return ClassVocabulary(controls, label_to_prompt)


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from ..fmbseg.pseudo_labels import resize_mask

    return resize_mask(mask, shape)


def retrain_fmbseg(request: TrainingRequest, *, training_settings=None, progress_bar: bool = False) -> dict[str, Any]:
    """Train a new alignment module on the project's human corrections; returns a summary.

    Raises:
        ValueError: no label config, no class-mask control, no annotated class mask, or no way
            to fetch the images; the previous checkpoint stays in service.
    """
    from ..fmbseg import FMbSegPredictor, LabelledMask
    from ..fmbseg.loss import LossSettings
    from ..fmbseg.training import CheckpointError, TrainingSettings
    from ..models import load_models

    if not request.label_config:
        raise ValueError("START_TRAINING without a label config: nothing to train for")
    if request.images is None:
        raise ValueError("no image source: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY so task images can be fetched")
    vocabulary = class_vocabulary(request.label_config)
    classes = vocabulary.classes
    predictor = FMbSegPredictor(load_models(request.preset))
    fetcher = request.images.fetcher()
    examples, regions_used, skipped = [], 0, []
    for index, record in enumerate(request.annotations):
        task = record.get("task") or {}
        corrections = [
            (region, region.labels[0])
            for region in annotation_regions(record)
            if region.from_name in vocabulary.controls and region.labels and region.labels[0] in vocabulary.label_to_prompt
        ]
        if not corrections:
            continue
        field = vocabulary.controls[corrections[0][0].from_name]
        reference = (task.get("data") or {}).get(field)
        try:
            image = fetcher.load(reference).pixels
        except Exception as error:  # one unreachable image must not lose the others
            skipped.append(f"task {task.get('id')}: {error}")
            logger.warning("retraining: skipped task %s: %s", task.get("id"), error)
            continue
        masks = [
            LabelledMask(_resize_mask(region.mask, image.shape[:2]), vocabulary.label_to_prompt[label], "human")
            for region, label in corrections
        ]
        examples.append(predictor.training_example(image, masks, classes, seed=(0, index)))
        regions_used += len(masks)
    if not examples:
        raise ValueError(
            "no human class masks to train on" + (f" ({len(skipped)} tasks skipped: {skipped[0]})" if skipped else "")
        )
    work_dir = Path(request.model_dir) / "training"
    work_dir.mkdir(parents=True, exist_ok=True)
    work_path = work_dir / f"fmbseg-project-{request.project_id}.in-progress.safetensors"
    # Eq. 1 read literally gives the text terms ~K/(B*N) of the weight, and in our synthetic
    # checks the patches then drift away from their class text (docs/fmbseg-stage2.md): the
    # service balances the two terms. The paper's form stays the library's default.
    settings = training_settings or TrainingSettings(loss=LossSettings(balance_terms=True))
    try:
        checkpoint = predictor.train(examples, classes, work_path, training_settings=settings, progress_bar=progress_bar,
                                     serve=False)
    except CheckpointError:
        # an unfinished run for other data or classes: start over
        work_path.unlink(missing_ok=True)
        checkpoint = predictor.train(examples, classes, work_path, training_settings=settings, progress_bar=progress_bar,
                                     serve=False)
    target_dir = Path(request.checkpoint_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"fmbseg-project-{request.project_id}-{checkpoint.version}.safetensors"
    os.replace(work_path, target)  # same file system: atomic; prediction sees the finished file only
    logger.info("retraining: %d images, %d regions -> %s", len(examples), regions_used, target)
    return {
        "checkpoint": str(target),
        "version": checkpoint.version,
        "classes": classes,
        "images": len(examples),
        "regions": regions_used,
        "skipped_tasks": skipped,
        "loss_per_epoch": [round(v, 5) for v in checkpoint.loss_history],
    }
