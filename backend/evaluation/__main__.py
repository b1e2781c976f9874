"""``python -m backend.evaluation COMMAND``: score segmentations with the zero-guidance protocol or FMbSeg's mIoU.

Commands (each writes a JSON report to --out, or to stdout):
  reassign      map each predicted segment's text to a test label (TT, Eq. 5) or its pixels (ST, Eq. 6)
  segmentation  Segmentation IoU and Segment Recall, verified by τ and/or by 0-3 human ratings (Table 1, 3)
  sweep         IoU and Recall against the verification threshold (appendix C, Tables 6-7)
  ratings       the distribution of 0-3 ratings (Table 2)
  tgq           Text Generation Quality of texts predicted for ground-truth segments (Table 3)
  miou          FMbSeg's dataset mIoU over predicted label PNGs
  reproduce     run the method over a dataset and write one of the paper's tables beside its numbers
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from .files import (
    CLASS_LISTS,
    PredictionFile,
    ground_truth_path,
    load_predictions,
    load_reassignments,
    read_class_names,
    read_json,
    read_label_map,
    reassignments_to_json,
)
from .metrics import IGNORE_INDEX, TAU_IOU, ImageOverlaps, LabelSpace, MeanIoU, evaluate_segmentation, threshold_sweep
from .rating import RATERS_PER_SEGMENT, TABLE1_MIN_SCORES, human_verified_scores, parse_ratings, score_distribution
from .reassignment import (
    SEGMENT_TO_TEXT,
    ST_PROMPT_TEMPLATE,
    TEXT_TO_TEXT,
    default_threshold,
    reassign_segment_to_text,
    reassign_text_to_text,
    verify_by_threshold,
)

log = logging.getLogger("backend.evaluation")


class CommandError(Exception):
    """A command that cannot run (e.g. missing model weights): reported, exit status 2."""


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _add_label_space(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--classes",
        required=True,
        help=f"class names by pixel value: {' or '.join(sorted(CLASS_LISTS))}, a .txt (one per line) or a .json list",
    )
    parser.add_argument(
        "--exclude-class",
        action="append",
        default=[],
        metavar="NAME",
        help="a class whose pixels are ignored and which is no test label (repeatable; "
        "'background' for PAS-20/PV-20 and PC-59)",
    )
    parser.add_argument(
        "--ignore-value",
        action="append",
        type=int,
        default=None,
        metavar="V",
        help=f"a ground-truth pixel value never evaluated (repeatable; default {IGNORE_INDEX})",
    )


def _label_space(args: argparse.Namespace) -> LabelSpace:
    ignore = tuple(args.ignore_value) if args.ignore_value is not None else (IGNORE_INDEX,)
    return LabelSpace(read_class_names(args.classes), ignore, tuple(args.exclude_class))


def _add_predictions(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "predictions",
        nargs="+",
        type=Path,
        metavar="PREDICTIONS",
        help="JSON files written by `python -m backend.zeroguide`, or folders of them",
    )


def _add_ground_truth(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reassigned", type=Path, required=True, help="the output of `reassign` (holds the classes)")
    parser.add_argument("--gt-dir", type=Path, required=True, help="label PNGs named <image stem>.png")
    parser.add_argument("--gt-suffix", default=".png", help="ground-truth file suffix (default: .png; e.g. .tif)")
    parser.add_argument("--tau-iou", type=float, default=TAU_IOU, help=f"τ_IoU of Segment Recall (paper: {TAU_IOU})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backend.evaluation",
        description="Score segmentations with the zero-guidance protocol or with FMbSeg's mIoU.",
        epilog="Protocol, thresholds and recipes for the papers' tables: docs/evaluation.md",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    reassign = commands.add_parser(
        "reassign",
        help="label reassignment (section 4.1)",
        description="Give every predicted segment the closest test label: by its text with Sentence-BERT "
        "(tt, Eq. 5) or by its CLIP segment embedding (st, Eq. 6).",
    )
    _add_predictions(reassign)
    _add_label_space(reassign)
    reassign.add_argument("--method", choices=("tt", "st"), required=True, help="text-to-text or segment-to-text")
    reassign.add_argument(
        "--images",
        type=Path,
        help="st only: folder of the images, to encode segments whose prediction has no 'embedding'",
    )
    reassign.add_argument(
        "--preset", default="cpu", help="st only: the foundation-model preset for CLIP (default: cpu)"
    )
    reassign.add_argument(
        "--device", default=None, help="torch device (default: $DEVICE, else CUDA if present, else CPU)"
    )
    reassign.add_argument(
        "--template",
        default=ST_PROMPT_TEMPLATE,
        help=f"st only: CLIP text prompt for a label, '{{}}' is the label (default: {ST_PROMPT_TEMPLATE!r}, "
        "the authors' evaluation script)",
    )
    reassign.add_argument("--out", type=Path, help="output JSON (default: stdout)")

    segmentation = commands.add_parser(
        "segmentation",
        help="Segmentation IoU and Segment Recall (section 4.3)",
        description="IoU (per class, summed over images, mean over classes present) and Segment Recall of "
        "reassigned segments, verified by the constant threshold and, with --ratings, by human scores h >= k.",
    )
    _add_predictions(segmentation)
    _add_ground_truth(segmentation)
    segmentation.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="verification threshold (default: τ_SBERT=0.5 for tt, τ_CLIP=0.1 for st)",
    )
    segmentation.add_argument("--ratings", type=Path, help="JSON list of ratings of the reassigned labels")
    segmentation.add_argument(
        "--min-score",
        type=int,
        action="append",
        default=None,
        metavar="K",
        help="human threshold h >= K (repeatable; default: 3 2 1 as in Table 1)",
    )
    segmentation.add_argument(
        "--raters-per-segment", type=int, default=RATERS_PER_SEGMENT, help="rating batches (paper: 3)"
    )
    segmentation.add_argument("--out", type=Path, help="output JSON (default: stdout)")

    sweep = commands.add_parser(
        "sweep",
        help="IoU and Recall against the verification threshold (appendix C)",
        description="Tables 6-7: scores at several verification thresholds.",
    )
    _add_predictions(sweep)
    _add_ground_truth(sweep)
    sweep.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        help="thresholds (default: Table 6's 0.0..1.0 for tt, Table 7's 0.00..0.35 for st)",
    )
    sweep.add_argument("--out", type=Path, help="output JSON (default: stdout)")

    ratings = commands.add_parser(
        "ratings",
        help="distribution of the 0-3 ratings (Table 2)",
        description="Fraction of labels rated 0/1/2/3, computed per rating batch and averaged.",
    )
    ratings.add_argument("ratings", type=Path, help="JSON list of {image, segment, text, label, rater, score, batch?}")
    ratings.add_argument("--raters-per-segment", type=int, default=RATERS_PER_SEGMENT, help="rating batches (paper: 3)")
    ratings.add_argument("--out", type=Path, help="output JSON (default: stdout)")

    tgq = commands.add_parser(
        "tgq",
        help="Text Generation Quality (section 4.3)",
        description="Fraction of ground-truth segments whose predicted text has SBERT similarity > τ_SBERT "
        "to the ground-truth label.",
    )
    tgq.add_argument("pairs", type=Path, help='JSON list of {"label": ground-truth label, "text": predicted text}')
    tgq.add_argument("--tau-sbert", type=float, default=default_threshold(TEXT_TO_TEXT), help="τ_SBERT (paper: 0.5)")
    tgq.add_argument("--device", default=None, help="torch device for Sentence-BERT (default: cpu)")
    tgq.add_argument("--out", type=Path, help="output JSON (default: stdout)")

    miou = commands.add_parser(
        "miou",
        help="FMbSeg's mIoU over predicted label PNGs",
        description="Dataset mIoU (TCL / mmseg protocol) of predicted label PNGs, which use the ground "
        "truth's pixel values; values that are no evaluated class mean 'nothing predicted'.",
    )
    miou.add_argument("--pred-dir", type=Path, required=True, help="predicted label PNGs")
    miou.add_argument("--gt-dir", type=Path, required=True, help="ground-truth label PNGs with the same names")
    miou.add_argument("--gt-suffix", default=".png", help="ground-truth file suffix (default: .png)")
    _add_label_space(miou)
    miou.add_argument("--out", type=Path, help="output JSON (default: stdout)")

    from .datasets import DATASETS
    from .reproduce import TABLES

    reproduce = commands.add_parser(
        "reproduce",
        help="one of the paper's tables, end to end",
        description="Run the method (zero-guidance segmentation or FMbSeg) over a dataset in its official layout, "
        "evaluate it with the paper's protocol and write the table in the paper's shape beside the paper's "
        "numbers (<out>/<table>-<dataset>.md and .json). Resumable: predictions already made are kept.",
    )
    reproduce.add_argument("table", choices=sorted(TABLES), help="the table")
    reproduce.add_argument("--data", type=Path, required=True, help="the dataset's folder (or one above it)")
    reproduce.add_argument(
        "--dataset", choices=sorted(DATASETS), default="pc-59", help="which benchmark (default: pc-59)"
    )
    reproduce.add_argument("--limit", type=int, help="only the first N images of the split (the paper: 1,000 of PC-59)")
    reproduce.add_argument("--out", type=Path, default=Path("reproduce"), help="output folder (default: reproduce)")
    reproduce.add_argument("--preset", default="paper", help="foundation-model preset (default: paper)")
    reproduce.add_argument(
        "--captioner",
        choices=("zerocap", "retrieval"),
        help="default zerocap (the paper's); retrieval is fast but its vocabulary holds the class names",
    )
    reproduce.add_argument("--ratings", type=Path, help="Table 1's human columns: ratings of the reassigned labels")
    reproduce.add_argument("--checkpoint", type=Path, help="fmbseg-table1: the trained alignment module (Stage 2 rows)")
    reproduce.add_argument(
        "--device", default=None, help="torch device (default: $DEVICE, else CUDA if present, else CPU)"
    )
    return parser


def _emit(report: dict, out: Path | None) -> None:
    if out is None:
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        from ..outputs import write_json

        write_json(out, report)
        log.info("wrote %s", out)


def _sentence_encoder(device: str | None):
    """Sentence-BERT (the authors' all-mpnet-base-v2 when cached here, else all-MiniLM-L6-v2):
    its ``encode`` (list of n strings -> (n, d) unit-norm) is what the commands use, its ``name``
    goes into their reports."""
    from ..models import MissingWeightsError
    from ..models.sentence import load_sentence_embedder

    try:
        return load_sentence_embedder(device or "cpu", paper_model=True)
    except MissingWeightsError as error:
        raise CommandError(str(error)) from error


def _segment_embeddings(args: argparse.Namespace, predictions: list[PredictionFile]):
    """ST inputs: per image (K, D) CLIP segment embeddings, and the CLIP text encoder for labels."""
    from ..models import MissingWeightsError, load_models
    from ..models.settings import SegmentEncoding
    from ..outputs import read_image

    if "{}" not in args.template:
        raise ValueError(f"--template must contain '{{}}' for the label, got {args.template!r}")
    try:
        clip = load_models(args.preset, args.device).clip
    except MissingWeightsError as error:
        raise CommandError(str(error)) from error
    embeddings = []
    for prediction in tqdm(predictions, desc="segment embeddings", unit="image"):
        if prediction.embeddings is not None or not prediction.segment_ids:
            embeddings.append(prediction.embeddings if prediction.embeddings is not None else [])
            continue
        if args.images is None:
            raise ValueError(f"{prediction.path}: segments carry no 'embedding'; pass --images to encode them")
        image = read_image(args.images / prediction.image)
        if image.shape[:2] != prediction.size:
            raise ValueError(f"{prediction.image}: image is {image.shape[:2]}, predictions are {prediction.size}")
        encoding = SegmentEncoding(**prediction.settings.get("segment_encoding", {}))
        embeddings.append(clip.encode_segments(image, prediction.masks(), encoding))
    return embeddings, lambda labels: clip.encode_text([args.template.format(label) for label in labels])


def run_reassign(args: argparse.Namespace) -> dict:
    label_space = _label_space(args)
    predictions = load_predictions(args.predictions)
    classes = list(label_space.classes)
    if args.method == "tt":
        sentence = _sentence_encoder(args.device)
        reassignments = [reassign_text_to_text(p.texts, classes, sentence.encode) for p in predictions]
        details = {"encoder": sentence.name}
    else:
        embeddings, embed_labels = _segment_embeddings(args, predictions)
        reassignments = [reassign_segment_to_text(e, classes, embed_labels) for e in embeddings]
        details = {"encoder": f"clip ({args.preset})", "template": args.template}
    method = TEXT_TO_TEXT if args.method == "tt" else SEGMENT_TO_TEXT
    details["random_weights"] = any(p.random_weights for p in predictions)
    report = reassignments_to_json(predictions, reassignments, label_space, method, details)
    log.info("reassigned %d segments of %d images (%s)", sum(map(len, reassignments)), len(predictions), method)
    return report


def _prepare(args: argparse.Namespace):
    """Overlaps and aligned reassignments of every prediction file."""
    label_space, method, table = load_reassignments(args.reassigned)
    predictions = load_predictions(args.predictions)
    images, reassignments = [], []
    for prediction in tqdm(predictions, desc="ground truth", unit="image"):
        if prediction.image not in table:
            raise ValueError(f"{args.reassigned} has no reassignment for {prediction.image}; run `reassign` on it")
        per_segment = table[prediction.image]
        missing = [s for s in prediction.segment_ids if str(s) not in per_segment]
        if missing:
            raise ValueError(f"{args.reassigned}: {prediction.image} lacks segments {missing}")
        ground_truth = label_space.to_class_indices(
            read_label_map(ground_truth_path(args.gt_dir, prediction.image, args.gt_suffix))
        )
        if ground_truth.shape != prediction.size:
            raise ValueError(f"{prediction.image}: ground truth {ground_truth.shape} vs predictions {prediction.size}")
        images.append(
            ImageOverlaps.from_masks(
                prediction.image, prediction.masks(), ground_truth, label_space.num_classes, prediction.segment_ids
            )
        )
        reassignments.append([per_segment[str(s)] for s in prediction.segment_ids])
    header = {
        "method": method,
        "classes": list(label_space.classes),
        "label_space": label_space.to_dict(),
        "num_images": len(images),
        "num_segments": sum(i.num_segments for i in images),
        "random_weights": any(p.random_weights for p in predictions),
    }
    return label_space, method, images, reassignments, header


def run_segmentation(args: argparse.Namespace) -> dict:
    label_space, method, images, reassignments, header = _prepare(args)
    threshold = default_threshold(method) if args.threshold is None else args.threshold
    constant = evaluate_segmentation(
        images, [verify_by_threshold(r, threshold) for r in reassignments], label_space.classes, args.tau_iou
    )
    report = {**header, "constant": {"threshold": threshold, **constant.to_dict()}}
    print(f"{method} τ={threshold}: IoU {_percent(constant.miou)}  Recall {_percent(constant.recall)}", file=sys.stderr)
    if args.ratings is not None:
        ratings = parse_ratings(_records(args.ratings, "ratings"))
        human = {}
        for k in args.min_score or TABLE1_MIN_SCORES:
            scores = human_verified_scores(
                images, reassignments, ratings, label_space.classes, k, args.tau_iou, args.raters_per_segment
            )
            human[str(k)] = scores.to_dict()
            print(f"{method} h>={k}: IoU {_percent(scores.miou)}  Recall {_percent(scores.recall)}", file=sys.stderr)
            if scores.label_mismatches or scores.unknown_ratings:
                log.warning(
                    "h>=%d: %d ratings are for another label, %d for unknown segments (ignored)",
                    k,
                    scores.label_mismatches,
                    scores.unknown_ratings,
                )
        report["human"] = human
    return report


def run_sweep(args: argparse.Namespace) -> dict:
    label_space, method, images, reassignments, header = _prepare(args)
    points = threshold_sweep(images, reassignments, label_space.classes, args.thresholds, args.tau_iou)
    for point in points:
        print(
            f"τ={point.threshold:.2f}: IoU {_percent(point.scores.miou)}  Recall {_percent(point.scores.recall)}",
            file=sys.stderr,
        )
    return {**header, "points": [p.to_dict() for p in points]}


def _records(path: Path, key: str) -> list:
    data = read_json(path)
    if isinstance(data, dict):
        data = data.get(key)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list (or an object with a '{key}' list)")
    return data


def run_ratings(args: argparse.Namespace) -> dict:
    distribution = score_distribution(_records(args.ratings, "ratings"), args.raters_per_segment)
    shares = "  ".join(f"{s}: {_percent(v)}%" for s, v in distribution.fractions.items())
    print(f"ratings of {distribution.segments} segments: {shares}", file=sys.stderr)
    return distribution.to_dict()


def run_tgq(args: argparse.Namespace) -> dict:
    from .metrics import text_generation_quality

    pairs = _records(args.pairs, "pairs")
    if not all(isinstance(p, dict) and "label" in p and "text" in p for p in pairs):
        raise ValueError(f"{args.pairs}: every pair needs 'label' and 'text'")
    sentence = _sentence_encoder(args.device)
    result = text_generation_quality(
        [p["label"] for p in pairs], [p["text"] for p in pairs], sentence.encode, args.tau_sbert
    )
    print(f"TGQ {_percent(result.score)} ({result.true_positives}/{result.total})", file=sys.stderr)
    return {**result.to_dict(), "encoder": sentence.name}


def run_miou(args: argparse.Namespace) -> dict:
    label_space = _label_space(args)
    files = sorted(args.pred_dir.glob("*.png"))
    if not files:
        raise ValueError(f"{args.pred_dir}: no predicted label PNGs")
    accumulator = MeanIoU(label_space)
    for path in tqdm(files, desc="mIoU", unit="image"):
        predicted = label_space.to_class_indices(read_label_map(path), strict=False)
        accumulator.update(predicted, read_label_map(ground_truth_path(args.gt_dir, path.name, args.gt_suffix)))
    result = accumulator.result()
    print(f"mIoU {_percent(result.miou)} over {result.num_images} images", file=sys.stderr)
    return result.to_dict()


def run_reproduce(args: argparse.Namespace) -> dict:
    from ..models import MissingWeightsError
    from .reproduce import reproduce

    try:
        report = reproduce(
            args.table,
            args.data,
            args.dataset,
            args.out,
            preset=args.preset,
            device=args.device,
            limit=args.limit,
            captioner=args.captioner,
            ratings_path=args.ratings,
            checkpoint=args.checkpoint,
        )
    except MissingWeightsError as error:
        raise CommandError(str(error)) from error
    print((args.out / f"{report['table']}-{report['dataset']}.md").read_text(), file=sys.stderr)
    return report


COMMANDS = {
    "reassign": run_reassign,
    "segmentation": run_segmentation,
    "sweep": run_sweep,
    "ratings": run_ratings,
    "tgq": run_tgq,
    "miou": run_miou,
    "reproduce": run_reproduce,
}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        report = COMMANDS[args.command](args)
    except (ValueError, CommandError) as error:
        log.error("%s", error)
        return 2
    if args.command != "reproduce":  # reproduce wrote its table and report into its --out folder
        _emit({"command": args.command, **report}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
