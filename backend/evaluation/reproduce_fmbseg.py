"""``reproduce fmbseg-table1``: FMbSeg's Table 1 (mIoU) on one benchmark, beside the paper's numbers.

Rows:
    Stage 1: the training-free pseudo-labels (section 3.2) for the dataset's classes; the paper
        reports no single number for it (its Table 2 splits Stage 1.1 and 1.2).
    Stage 2 (base), Stage 2 (refined): the alignment module of ``--checkpoint`` (trained on COCO
        pseudo-labels in the paper, ``python -m backend.fmbseg train``), scored zero-shot on the
        dataset's classes (open vocabulary: the module maps patches into CLIP's text space).

PV-21 (section 4.1): "we add stuff classes from CS-171 as background categories in the
evaluation of our method where these categories are mapped to the main background class". The
class list given to FMbSeg is then the 20 object classes plus COCO-Stuff's 91 stuff classes, and
every pixel given a stuff class counts as background (:func:`with_background_classes`).

Resumable: each image's label map (class index + 1, 0 = nothing) goes to
``<out>/predictions/<row>/<id>.png`` with the row's model version and classes in
``<out>/predictions/<row>/run.json``; a later run with the same version and classes keeps them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from ..outputs import read_image, write_json
from .datasets import DatasetItem, DatasetLayout
from .files import read_class_names, read_json, read_label_map
from .metrics import LabelSpace, MeanIoU

log = logging.getLogger("backend.evaluation")

__all__ = ["BACKGROUND", "FMBSEG_TABLE1", "with_background_classes", "reproduce_fmbseg"]

BACKGROUND = "background"
COCO_STUFF_THINGS = 80  # COCO-Stuff's 171 classes: the 80 things, then the 91 stuff classes

# FMbSeg Table 1 (mIoU, percent) per dataset and row.
FMBSEG_TABLE1 = {
    "pv-21": {"stage2-base": 67.73, "stage2-refined": 71.02},
    "pv-20": {"stage2-base": 85.65, "stage2-refined": 87.03},
    "pc-59": {"stage2-base": 42.72, "stage2-refined": 44.34},
    "cs-171": {"stage2-base": 29.88, "stage2-refined": 30.65},
    "ade-150": {"stage2-base": 16.25, "stage2-refined": 16.60},
}


@dataclass(frozen=True)
class PromptedClasses:
    """The class list FMbSeg scores, and for each entry the evaluated class it counts as."""

    prompts: list[str]
    evaluated_index: np.ndarray  # (len(prompts),) index into LabelSpace.classes


def with_background_classes(label_space: LabelSpace, background_names: Sequence[str] = ()) -> PromptedClasses:
    """The dataset's evaluated classes as FMbSeg's class list. With ``background_names`` and a
    ``background`` class (PV-21), the background is not prompted itself: those names are, and each
    counts as background."""
    classes = list(label_space.classes)
    if not background_names or BACKGROUND not in classes:
        return PromptedClasses(classes, np.arange(len(classes)))
    background = classes.index(BACKGROUND)
    kept = [index for index, name in enumerate(classes) if index != background]
    extra = [name for name in background_names if name not in classes]
    prompts = [classes[index] for index in kept] + extra
    evaluated = np.array(kept + [background] * len(extra), dtype=np.int64)
    return PromptedClasses(prompts, evaluated)


def coco_stuff_names() -> list[str]:
    """COCO-Stuff's 91 stuff class names (CS-171's last 91)."""
    return list(read_class_names("coco-stuff-171")[COCO_STUFF_THINGS:])


def _row_run(folder: Path, run: dict) -> bool:
    """Whether ``folder`` holds label maps of this run (model version and classes); else start it anew."""
    path = folder / "run.json"
    try:
        if read_json(path) == run:
            return True
    except ValueError:
        pass
    for stale in folder.glob("*.png"):
        stale.unlink()
    write_json(path, run)
    return False


def predict_label_maps(
    predictor,
    items: Sequence[DatasetItem],
    prompted: PromptedClasses,
    folder: Path,
    refine: bool,
    open_vocabulary: bool,
    progress: bool = True,
) -> tuple[list[np.ndarray], int]:
    """Per image, the evaluated class of each pixel (-1: nothing); kept label maps reused."""
    run = {"model_version": predictor.model_version, "classes": prompted.prompts, "refine": refine}
    folder.mkdir(parents=True, exist_ok=True)
    _row_run(folder, run)
    maps, computed = [], 0
    for item in tqdm(items, desc=f"FMbSeg {folder.name}", unit="image", disable=not progress):
        path = folder / f"{item.id}.png"
        stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.is_file() else None
        if stored is None:
            result = predictor.predict(
                read_image(item.image), prompted.prompts, refine=refine, open_vocabulary=open_vocabulary
            )
            stored = (result.label_map + 1).astype(np.uint16)
            cv2.imwrite(str(path), stored)
            computed += 1
        indices = stored.astype(np.int64) - 1
        evaluated = np.where(indices >= 0, prompted.evaluated_index[np.clip(indices, 0, None)], -1)
        maps.append(evaluated)
    return maps, computed


def reproduce_fmbseg(
    layout: DatasetLayout,
    items: Sequence[DatasetItem],
    out_dir: Path,
    preset: str,
    device: str | None,
    checkpoint: str | Path | None,
    progress: bool = True,
) -> tuple[list[dict], list[str], dict]:
    """The rows of FMbSeg's Table 1 on one dataset: (rows, notes, details)."""
    from ..fmbseg import FMbSegPredictor, FMbSegSettings
    from ..fmbseg.checkpoints import load_alignment_checkpoint
    from ..models import load_models

    label_space = layout.label_space()
    background = coco_stuff_names() if layout.name == "pv-21" else ()
    prompted = with_background_classes(label_space, background)
    models = load_models(preset, device)
    settings = FMbSegSettings.for_preset(models.method_overrides("fmbseg"))
    ground_truth = [read_label_map(item.labels) for item in items]

    def score(name: str, title: str, predictor, refine: bool, open_vocabulary: bool) -> dict:
        folder = out_dir / "predictions" / name
        maps, computed = predict_label_maps(predictor, items, prompted, folder, refine, open_vocabulary, progress)
        log.info("%s: %d label maps computed, %d kept from an earlier run", name, computed, len(maps) - computed)
        accumulator = MeanIoU(label_space)
        for predicted, truth in zip(maps, ground_truth):
            if predicted.shape != truth.shape:
                raise ValueError(f"a prediction of {predicted.shape} for ground truth of {truth.shape}")
            accumulator.update(predicted, truth)
        miou = accumulator.result().miou
        paper = FMBSEG_TABLE1.get(layout.name, {}).get(name)
        return {
            "variant": name,
            "title": title,
            "ours": {"mIoU": None if miou is None else 100 * miou},
            "paper": {"mIoU": paper},
        }

    rows = [score("stage1", "FMbSeg Stage 1 (pseudo-labels)", FMbSegPredictor(models, settings), False, False)]
    notes = []
    if checkpoint is None:
        notes.append("No --checkpoint: only the training-free Stage 1 row (train one: python -m backend.fmbseg train).")
    else:
        trained = FMbSegPredictor(models, settings)
        trained.load_checkpoint(load_alignment_checkpoint(checkpoint))
        rows.append(score("stage2-base", "FMbSeg Stage 2 (base)", trained, False, True))
        rows.append(score("stage2-refined", "FMbSeg Stage 2 (refined)", trained, True, True))
    if background:
        notes.append(f"PV-21: background scored as COCO-Stuff's {len(background)} stuff classes (section 4.1).")
    details = {
        "random_weights": models.random_weights,
        "settings": settings.to_dict(),
        "class_list": prompted.prompts,
        "checkpoint": None if checkpoint is None else str(checkpoint),
    }
    return rows, notes, details
