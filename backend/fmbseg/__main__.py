"""``python -m backend.fmbseg pseudo-label | train | predict``: FMbSeg on a folder of images.

pseudo-label  Stage 1 (CLIP + SAM) for a class list: NAME.json + mask PNGs + NAME.overlay.png
train         Stage 2: the alignment module on Stage 1 pseudo-labels (resumable checkpoint)
predict       class masks: NAME.json (per-class COCO RLE), NAME.labels.png, NAME.overlay.png
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import cv2
import numpy as np

from ..models import MissingWeightsError, list_presets, load_models
from ..outputs import IMAGE_SUFFIXES, ReadableImages, draw_overlay, encode_rle, write_json
from .alignment import ALIGNMENT_KINDS
from .checkpoints import CheckpointError, load_alignment_checkpoint
from .loss import LossSettings
from .pipeline import FMbSegPredictor
from .pseudo_labels import PseudoLabels
from .settings import FMbSegSettings
from .training import TrainingSettings

log = logging.getLogger("backend.fmbseg")
TINY_BANNER = "tiny preset: random weights, not a real result"


class UsageError(Exception):
    """A command-line problem with a message for the user."""


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UsageError(f"--images {folder}: no such folder")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UsageError(f"--images {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return images


def parse_classes(text: str | None) -> list[str] | None:
    if text is None:
        return None
    path = Path(text)
    items = path.read_text().splitlines() if path.is_file() else text.split(",")
    classes = list(dict.fromkeys(item.strip() for item in items if item.strip()))
    if not classes:
        raise UsageError("--classes is empty")
    return classes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend.fmbseg", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--images", type=Path, required=True, help="folder of images")
        sub.add_argument("--out", type=Path, required=True, help="output folder")
        sub.add_argument("--preset", default="cpu", choices=list_presets(), help="foundation models (default: cpu)")
        sub.add_argument(
            "--device", default=None, help="torch device (default: $DEVICE, else CUDA if present, else CPU)"
        )
        sub.add_argument("--presence-min-crops", type=int, default=None, help="T of appendix 1.1.3 (paper: 1)")

    pseudo = commands.add_parser("pseudo-label", help="Stage 1 pseudo-labels for a class list")
    common(pseudo)
    pseudo.add_argument("--classes", required=True, help="comma-separated class names, or a file with one per line")

    train = commands.add_parser("train", help="train the alignment module (Stage 2)")
    common(train)
    train.add_argument("--classes", required=True, help="comma-separated class names, or a file with one per line")
    train.add_argument("--checkpoint", type=Path, required=True, help="checkpoint to write (resumed if it exists)")
    train.add_argument(
        "--pseudo-labels",
        type=Path,
        default=None,
        help="folder written by pseudo-label (default: run Stage 1 now, into OUT/pseudo-labels)",
    )
    train.add_argument("--module", choices=ALIGNMENT_KINDS, default="transformer", help="alignment module (Table 3)")
    train.add_argument("--epochs", type=int, default=TrainingSettings.epochs, help="epochs (paper: 10)")
    train.add_argument("--batch-size", type=int, default=TrainingSettings.batch_size, help="images a batch (paper: 5)")
    train.add_argument("--learning-rate", type=float, default=TrainingSettings.learning_rate, help="SGD learning rate")
    train.add_argument("--no-resume", action="store_true", help="start over even if the checkpoint exists")
    train.add_argument(
        "--balance-terms",
        action="store_true",
        help="ours: mean text term + mean patch term instead of Eq. 1's sum over B*N+K (docs/fmbseg-stage2.md)",
    )

    predict = commands.add_parser("predict", help="class masks for every image")
    common(predict)
    predict.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="alignment checkpoint (default: none, serve Stage 1 pseudo-labels)",
    )
    predict.add_argument("--classes", default=None, help="class names (default: the checkpoint's)")
    predict.add_argument("--no-refine", action="store_true", help="base prediction only (no SAM refinement)")
    predict.add_argument(
        "--open-vocabulary",
        action="store_true",
        help="allow classes other than the checkpoint's (zero-shot, as in the paper's Table 1)",
    )
    return parser


def _predictor(args) -> FMbSegPredictor:
    models = load_models(args.preset, args.device)
    settings = FMbSegSettings.for_preset(models.method_overrides("fmbseg"))
    if args.presence_min_crops is not None:
        settings = settings.replace(presence_min_crops=args.presence_min_crops)
    return FMbSegPredictor(models, settings)


def _banner(predictor: FMbSegPredictor) -> str | None:
    return TINY_BANNER if predictor.models.random_weights else None


def _overlay(image, label_map, classes, banner, path: Path) -> None:
    present = [i for i in range(len(classes)) if (label_map == i).any()]
    draw_overlay(image, [label_map == i for i in present], [classes[i] for i in present], banner).save(path)


def run_pseudo_label(args) -> int:
    classes = parse_classes(args.classes)
    images = list_images(args.images)
    predictor = _predictor(args)
    readable = ReadableImages(images, "FMbSeg stage 1", log)
    for path, image in readable:
        pseudo = predictor.pseudo_label(image, classes)
        pseudo.save(args.out, path.stem)
        _overlay(image, pseudo.label_map(), classes, _banner(predictor), args.out / f"{path.stem}.overlay.png")
    return 1 if readable.failures else 0


def run_train(args) -> int:
    classes = parse_classes(args.classes)
    images = list_images(args.images)
    predictor = _predictor(args)
    labels_dir = args.pseudo_labels or args.out / "pseudo-labels"
    pairs = []
    for path, image in ReadableImages(images, "pseudo-labels", log):
        stored = labels_dir / f"{path.stem}.json"
        if stored.exists():
            pseudo = PseudoLabels.load(stored)
            if pseudo.classes != classes:
                raise UsageError(f"{stored} was made for classes {pseudo.classes}, not {classes}: pseudo-label again")
        elif args.pseudo_labels is not None:
            raise UsageError(f"--pseudo-labels {labels_dir}: no {stored.name} for {path.name}")
        else:
            pseudo = predictor.pseudo_label(image, classes)
            pseudo.save(labels_dir, path.stem)
        pairs.append((image, pseudo))
    if not pairs:
        raise UsageError("no readable image to train on")
    examples = predictor.examples_from_pseudo_labels(pairs, classes)
    settings = TrainingSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        loss=LossSettings(balance_terms=args.balance_terms),
    )
    checkpoint = predictor.train(
        examples,
        classes,
        args.checkpoint,
        training_settings=settings,
        module_kind=args.module,
        resume=not args.no_resume,
    )
    log.info(
        "alignment module %s written to %s (loss per epoch: %s)",
        checkpoint.version,
        args.checkpoint,
        ", ".join(f"{v:.4f}" for v in checkpoint.loss_history),
    )
    return 0


def run_predict(args) -> int:
    images = list_images(args.images)
    classes = parse_classes(args.classes)
    predictor = _predictor(args)
    if args.checkpoint is not None:
        if not args.checkpoint.exists():
            raise UsageError(f"--checkpoint {args.checkpoint}: no such file")
        expected = None if args.open_vocabulary else classes
        checkpoint = load_alignment_checkpoint(args.checkpoint, expected_classes=expected)
        predictor.load_checkpoint(checkpoint)
        classes = classes or list(checkpoint.classes)
    elif classes is None:
        raise UsageError("--classes is required without --checkpoint")
    args.out.mkdir(parents=True, exist_ok=True)
    readable = ReadableImages(images, "FMbSeg predict", log)
    for path, image in readable:
        result = predictor.predict(image, classes, refine=not args.no_refine, open_vocabulary=args.open_vocabulary)
        cv2.imwrite(str(args.out / f"{path.stem}.labels.png"), (result.label_map + 1).astype(np.uint16))
        write_json(
            args.out / f"{path.stem}.json",
            {
                "image": path.name,
                "image_size": list(image.shape[:2]),
                "classes": result.classes,
                "source": result.source,
                "model_version": result.model_version,
                "random_weights": result.random_weights,
                "labels_png": f"{path.stem}.labels.png (value = class index + 1, 0 = none)",
                "masks": [
                    {"class": name, "area": int(mask.sum()), "mask_rle": encode_rle(mask)}
                    for name, mask in result.class_masks.items()
                ],
            },
        )
        _overlay(image, result.label_map, classes, _banner(predictor), args.out / f"{path.stem}.overlay.png")
    return 1 if readable.failures else 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    runners = {"pseudo-label": run_pseudo_label, "train": run_train, "predict": run_predict}
    try:
        return runners[args.command](args)
    except (UsageError, CheckpointError, MissingWeightsError, ValueError) as error:
        log.error("%s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
