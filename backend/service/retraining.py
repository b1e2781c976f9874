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
4. **the guard**: with at least ``GUARD_MIN_TASKS`` corrected tasks, a fixed share of them
   (``HOLDOUT_PERCENT``, chosen by a hash of the task id, so the same tasks stay out run after
   run) is held out of training; the new module and the one serving now (or Stage 1 when none
   is) label the held-out images, and the new module is served only if its mIoU against the
   human masks is not lower. Otherwise the old one stays and the run's result (``/metrics``,
   ``training.last_result``) says why;
5. only when training has finished (and the guard passed) is the checkpoint moved (atomically)
   into the checkpoint folder: the next prediction serves it, and its name enters
   ``model_version``, so Label Studio re-predicts. A crash leaves the previous checkpoint in service.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ..fmbseg.settings import FMbSegSettings
from .hooks import TrainingRequest
from .runtime import project_checkpoint_prefix
from .training import annotation_regions
from .vocabulary import ClassMaskTag

logger = logging.getLogger(__name__)

__all__ = ["TrainingVocabulary", "training_vocabulary", "retrain_fmbseg", "is_held_out", "HOLDOUT_PERCENT"]

HOLDOUT_PERCENT = 20  # of the corrected tasks, held out of training to judge the new module
GUARD_MIN_TASKS = 5  # fewer corrected tasks: train on all of them, no guard


def is_held_out(task_id: Any) -> bool:
    """Whether a task is in the held-out share (by a hash of its id: stable across runs)."""
    digest = hashlib.sha256(str(task_id).encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HOLDOUT_PERCENT


def _human_label_map(masks, classes: list[str], shape: tuple[int, int]) -> np.ndarray:
    """Class index per pixel from human masks (later ones on top); -1 where none."""
    label_map = np.full(shape, -1, dtype=np.int64)
    for mask in masks:
        label_map[mask.mask] = classes.index(mask.class_name)
    return label_map


def held_out_miou(predict, held_out, classes: list[str]) -> float | None:
    """mIoU of ``predict(image) -> label map`` against the human masks of the held-out images
    (pixels no human mask covers are not scored; per class, intersections and unions summed
    over images; the mean over classes with a non-empty union)."""
    intersection = np.zeros(len(classes))
    union = np.zeros(len(classes))
    for image, masks in held_out:
        truth = _human_label_map(masks, classes, image.shape[:2])
        scored = truth >= 0
        predicted = predict(image)
        for index in range(len(classes)):
            p, t = (predicted == index) & scored, truth == index
            intersection[index] += np.logical_and(p, t).sum()
            union[index] += np.logical_or(p, t).sum()
    present = union > 0
    return float((intersection[present] / union[present]).mean()) if present.any() else None


def _serving_checkpoint(checkpoint_dir: Path, project_id: int | None) -> Path | None:
    """The checkpoint the project is served with now (as ``CheckpointLocator``, without ``FMBSEG_CHECKPOINT``)."""
    from .runtime import CHECKPOINT_SUFFIXES, PROJECT_CHECKPOINT_PREFIX

    if not checkpoint_dir.is_dir():
        return None
    files = [p for p in checkpoint_dir.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES]
    own = [p for p in files if p.name.startswith(project_checkpoint_prefix(project_id))]
    shared = [p for p in files if not p.name.startswith(PROJECT_CHECKPOINT_PREFIX)]
    candidates = own or shared
    return max(candidates, key=lambda p: (p.stat().st_mtime_ns, p.name)) if candidates else None


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
    regions_used, skipped = 0, []
    # Training examples are made as the tasks come (an image is dropped once its example exists);
    # only the tasks the guard may hold out keep their image, until it is known whether it applies.
    examples_at: dict[int, Any] = {}  # task position -> training example
    candidates: list[tuple[int, np.ndarray, list]] = []  # (position, image, human masks): held out if guarded
    corrected = 0
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
        corrected += 1
        regions_used += len(masks)
        if is_held_out(task.get("id")):
            candidates.append((index, image, masks))
        else:
            examples_at[index] = predictor.training_example(image, masks, classes, seed=(0, index))
    held_out = [(image, masks) for _, image, masks in candidates]
    if corrected < GUARD_MIN_TASKS or not examples_at:  # too few to judge, or nothing left to train on
        held_out = []
        for index, image, masks in candidates:
            examples_at[index] = predictor.training_example(image, masks, classes, seed=(0, index))
    examples = [examples_at[index] for index in sorted(examples_at)]  # in task order, as before
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
    guard = _guard(predictor, load_models(request.preset), vocabulary, work_path, target_dir, request, held_out)
    summary = {
        "version": checkpoint.version,
        "classes": classes,
        "images": len(examples),
        "held_out_images": len(held_out),
        "regions": regions_used,
        "skipped_tasks": skipped,
        "loss_per_epoch": [round(v, 5) for v in checkpoint.loss_history],
        "guard": guard,
    }
    if not guard["served"]:
        work_path.unlink(missing_ok=True)
        logger.warning("retraining: the new module is not served: %s", guard["reason"])
        return {**summary, "checkpoint": None}
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{project_checkpoint_prefix(request.project_id)}{checkpoint.version}.safetensors"
    os.replace(work_path, target)  # same file system: atomic; prediction sees the finished file only
    logger.info("retraining: %d images, %d regions -> %s", len(examples), regions_used, target)
    return {**summary, "checkpoint": str(target)}


def _guard(predictor, models, vocabulary, work_path: Path, target_dir: Path, request, held_out) -> dict[str, Any]:
    """Whether the new module (in ``work_path``) may be served: its held-out mIoU is not lower
    than the serving module's (or Stage 1's)."""
    from ..fmbseg import FMbSegPredictor

    if not held_out:
        return {"served": True, "reason": f"unguarded: fewer than {GUARD_MIN_TASKS} corrected tasks to hold some out"}
    classes = vocabulary.classes
    new = FMbSegPredictor(models, vocabulary.settings)
    new.load_checkpoint(work_path)
    from ..fmbseg.checkpoints import CheckpointError

    serving_path = _serving_checkpoint(target_dir, request.project_id)
    serving = FMbSegPredictor(models, vocabulary.settings)
    if serving_path is not None:
        try:
            serving.load_checkpoint(serving_path)
        except CheckpointError:  # made for other feature settings: not servable, Stage 1 is the bar
            serving_path = None

    def labels(with_predictor, open_vocabulary: bool):
        return lambda image: with_predictor.predict(
            image, classes, refine=False, open_vocabulary=open_vocabulary
        ).label_map

    new_miou = held_out_miou(labels(new, False), held_out, classes)
    serving_miou = held_out_miou(labels(serving, serving_path is not None), held_out, classes)
    served = serving_miou is None or (new_miou is not None and new_miou >= serving_miou)
    against = serving_path.name if serving_path is not None else "FMbSeg Stage 1 (no module served yet)"
    verdict = "not lower than" if served else "lower than"
    return {
        "served": served,
        "held_out_images": len(held_out),
        "miou_new": new_miou,
        "miou_serving": serving_miou,
        "serving": against,
        "reason": f"held-out mIoU {_fmt(new_miou)} is {verdict} the serving module's {_fmt(serving_miou)} ({against})",
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"
