"""The default training hook: retrain FMbSeg's alignment module on the human corrections.

Label Studio sends ``START_TRAINING`` (the "Start training" button, or after every saved
annotation when the project trains on annotation updates). The service stores every annotation
safely (``annotation_store``) and runs this hook in its background queue, next to the models:

1. the project's class-mask tags, as serving resolved them (``request.class_mask_tags``: the
   class vocabulary with ``model_prompt``, ``model_skip`` and the duplicate-prompt rule, and the
   FMbSeg settings with the preset's, the operator's and the tag's overrides) give the classes
   and the settings: the module is trained on the features and classes it will serve;
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

from ..fmbseg.settings import FMbSegSettings
from .hooks import TrainingRequest
from .runtime import project_checkpoint_prefix
from .training import annotation_regions
from .vocabulary import ClassMaskTag

logger = logging.getLogger(__name__)

__all__ = ["TrainingVocabulary", "training_vocabulary", "retrain_fmbseg"]


@dataclass(frozen=True)
class TrainingVocabulary:
    """What one retraining run trains: the served tags' classes, under one set of FMbSeg settings.

    Attributes:
        tags: the class-mask tags by name.
        classes: FMbSeg's class list: every tag's prompts, in tag then label order, once each.
        settings: the FMbSeg settings every tag is served with.
    """

    tags: dict[str, ClassMaskTag]
    classes: list[str]
    settings: FMbSegSettings

    def prompt(self, tag_name: str, label: str) -> str | None:
        """The class a region of ``tag_name`` labelled ``label`` trains, or ``None`` (not served)."""
        tag = self.tags.get(tag_name)
        return None if tag is None else tag.vocabulary.label_to_prompt.get(label)


def training_vocabulary(tags: tuple[ClassMaskTag, ...]) -> TrainingVocabulary:
    """One class list and one set of settings for the served class-mask tags.

    Raises:
        ValueError: no class-mask tag, or tags served with different FMbSeg settings (one
            alignment module cannot be trained on two kinds of features).
    """
    if not tags:
        raise ValueError("the label config has no class-mask control (BrushLabels/PolygonLabels with class labels)")
    first = tags[0]
    for tag in tags[1:]:
        if tag.settings != first.settings:
            changed = {
                k: (v, tag.settings.to_dict()[k])
                for k, v in first.settings.to_dict().items()
                if tag.settings.to_dict()[k] != v
            }
            raise ValueError(
                f"class-mask tags {first.from_name!r} and {tag.from_name!r} are served with different FMbSeg settings "
                f"{changed}: one alignment module serves them all; give them the same model_settings"
            )
    classes = list(dict.fromkeys(prompt for tag in tags for prompt in tag.vocabulary.classes))
    return TrainingVocabulary({tag.from_name: tag for tag in tags}, classes, first.settings)


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
    from ..fmbseg.checkpoints import CheckpointError
    from ..fmbseg.training import TrainingSettings
    from ..models import load_models

    if not request.label_config:
        raise ValueError("START_TRAINING without a label config: nothing to train for")
    if request.images is None:
        raise ValueError("no image source: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY so task images can be fetched")
    vocabulary = training_vocabulary(request.class_mask_tags)
    classes = vocabulary.classes
    predictor = FMbSegPredictor(load_models(request.preset), vocabulary.settings)
    fetcher = request.images.fetcher()
    examples, regions_used, skipped = [], 0, []
    for index, record in enumerate(request.annotations):
        task = record.get("task") or {}
        try:
            regions = annotation_regions(record)
        except ValueError as error:  # a damaged annotation must not lose the others
            skipped.append(f"task {task.get('id')}: {error}")
            logger.warning("retraining: skipped task %s: %s", task.get("id"), error)
            continue
        corrections = [
            (region, prompt)
            for region in regions
            if region.labels and (prompt := vocabulary.prompt(region.control, region.labels[0])) is not None
        ]
        if not corrections:
            continue
        image_key = vocabulary.tags[corrections[0][0].control].image_key
        reference = (task.get("data") or {}).get(image_key)
        try:
            image = fetcher.load(reference).pixels
        except Exception as error:  # one unreachable image must not lose the others
            skipped.append(f"task {task.get('id')}: {error}")
            logger.warning("retraining: skipped task %s: %s", task.get("id"), error)
            continue
        masks = [
            LabelledMask(_resize_mask(region.mask, image.shape[:2]), prompt, "human") for region, prompt in corrections
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
        checkpoint = predictor.train(
            examples, classes, work_path, training_settings=settings, progress_bar=progress_bar, serve=False
        )
    except CheckpointError:
        # an unfinished run for other data or classes: start over
        work_path.unlink(missing_ok=True)
        checkpoint = predictor.train(
            examples, classes, work_path, training_settings=settings, progress_bar=progress_bar, serve=False
        )
    target_dir = Path(request.checkpoint_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{project_checkpoint_prefix(request.project_id)}{checkpoint.version}.safetensors"
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
