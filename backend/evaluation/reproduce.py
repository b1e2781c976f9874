"""``python -m backend.evaluation reproduce TABLE --data DIR``: one command a table of either paper.

It runs the method over a dataset in its official layout (``backend.evaluation.datasets``),
evaluates it with the paper's protocol (sections 4.1-4.3: TT and ST reassignment, verification by
the constant thresholds τ_SBERT = 0.5 and τ_CLIP = 0.1, or by 0-3 human ratings; IoU and Segment
Recall; TGQ) and writes the table in the paper's shape beside the paper's numbers, with the
settings and weights used (``<out>/<table>-<dataset>.md`` and ``.json``).

Resumable: each image's prediction is written to ``<out>/predictions/<variant>/<id>.json`` as
soon as it is made (with its settings, and the segments' CLIP embeddings for ST); a later run
keeps those whose settings are the ones asked for and computes only the rest. TGQ's texts of the
ground-truth segments are kept the same way (``<out>/tgq/<variant>/<id>.json``).

Tables:
    ``zeroguide-table1``: TT and ST reassignment, constant thresholds; with ``--ratings`` (ratings
        of the reassigned labels) also the human columns h = 3, h >= 2, h >= 1.
    ``zeroguide-table3``: the ablations (crop-and-mask, without global subtraction, without
        merging, ours), ST with the constant threshold; TGQ on PC-59.
    ``fmbseg-table1``: FMbSeg's mIoU, Stage 1 and with ``--checkpoint`` Stage 2 base and refined
        (``backend.evaluation.reproduce_fmbseg``).

Honest numbers: the paper captions with ZeroCap, and so does ``reproduce`` unless told otherwise
(``--captioner``). The retrieval captioner's vocabulary contains most benchmark class names, so
its scores are not zero-guidance scores: every table made with it says so beside the numbers.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from ..outputs import read_image, write_json
from .datasets import DatasetItem, DatasetLayout, get_dataset
from .files import PredictionFile, read_json, read_label_map
from .metrics import TAU_IOU, ImageOverlaps, LabelSpace, evaluate_segmentation, text_generation_quality
from .rating import RATERS_PER_SEGMENT, human_verified_scores, parse_ratings
from .reassignment import (
    SEGMENT_TO_TEXT,
    ST_PROMPT_TEMPLATE,
    TAU_SBERT,
    TEXT_TO_TEXT,
    Reassignment,
    default_threshold,
    reassign_segment_to_text,
    reassign_text_to_text,
    verify_by_threshold,
)

log = logging.getLogger("backend.evaluation")

__all__ = ["TABLES", "ReproductionTable", "Variant", "reproduce"]

REPRODUCE_CAPTIONER = "zerocap"  # section 3.3; --captioner retrieval is faster but not zero-guidance


@dataclass(frozen=True)
class Variant:
    """One row of a table: the method with some settings changed (an ablation)."""

    name: str
    title: str
    changes: Callable[[Any], dict] = lambda settings: {}  # ZeroGuideSettings -> its fields to replace
    tgq: bool = True  # TGQ is the same with or without merging: the paper leaves it out there


@dataclass(frozen=True)
class ReproductionTable:
    """A table of the paper: its rows, its columns per dataset, and the paper's numbers.

    ``paper[dataset][variant][column]``: the value printed in the paper (percent), ``None``: none.
    """

    name: str
    title: str
    variants: tuple[Variant, ...]
    columns: Mapping[str, tuple[str, ...]]  # dataset -> columns
    paper: Mapping[str, Mapping[str, Mapping[str, float | None]]] = field(default_factory=dict)
    method: str = "zeroguide"  # or "fmbseg" (backend.evaluation.reproduce_fmbseg)


def _crop_and_mask(settings) -> dict:
    return {"segment_encoding": dataclasses.replace(settings.segment_encoding, method="crop")}


def _no_global_subtraction(settings) -> dict:
    return {"segment_encoding": dataclasses.replace(settings.segment_encoding, subtract_global=False)}


OURS = Variant("ours", "Ours")
TABLE1_COLUMNS = (
    "TT IoU const",
    "TT Recall const",
    "TT IoU h>=1",
    "TT Recall h>=1",
    "ST IoU const",
    "ST Recall const",
    "ST IoU h=3",
    "ST Recall h=3",
    "ST IoU h>=2",
    "ST Recall h>=2",
    "ST IoU h>=1",
    "ST Recall h>=1",
)
# (reassignment, human threshold k) of the human columns
HUMAN_COLUMNS = {TEXT_TO_TEXT: (1,), SEGMENT_TO_TEXT: (3, 2, 1)}

TABLES: dict[str, ReproductionTable] = {
    table.name: table
    for table in (
        ReproductionTable(
            "zeroguide-table1",
            "Zero-guidance Table 1: IoU and Recall by reassignment and verification",
            (OURS,),
            {"pc-59": TABLE1_COLUMNS, "pas-20": TABLE1_COLUMNS},
            {
                "pc-59": {
                    "ours": {
                        "TT IoU const": 11.2,
                        "TT Recall const": 10.3,
                        "TT IoU h>=1": 11.0,
                        "TT Recall h>=1": 9.8,
                        "ST IoU const": 19.3,
                        "ST Recall const": 18.0,
                        "ST IoU h=3": 14.2,
                        "ST Recall h=3": 13.2,
                        "ST IoU h>=2": 20.9,
                        "ST Recall h>=2": 18.0,
                        "ST IoU h>=1": 22.7,
                        "ST Recall h>=1": 19.4,
                    }
                }
            },
        ),
        ReproductionTable(
            "zeroguide-table3",
            "Zero-guidance Table 3: ablation of the mask attention (ST, constant threshold)",
            (
                Variant("crop-and-mask", "Crop and Mask", _crop_and_mask),
                Variant("no-global-subtraction", "Ours w/o globsub.", _no_global_subtraction),
                Variant("no-merge", "Ours w/o merge", lambda settings: {"merge": False}, tgq=False),
                OURS,
            ),
            {"pc-59": ("ST IoU const", "ST Recall const", "TGQ"), "pas-20": ("ST IoU const",)},
            {
                "pc-59": {
                    "crop-and-mask": {"ST IoU const": 12.1, "ST Recall const": 10.2, "TGQ": 16.9},
                    "no-global-subtraction": {"ST IoU const": 14.5, "ST Recall const": 15.0, "TGQ": 11.8},
                    "no-merge": {"ST IoU const": 16.4, "ST Recall const": 11.8, "TGQ": None},
                    "ours": {"ST IoU const": 17.5, "ST Recall const": 15.0, "TGQ": 19.0},
                },
                "pas-20": {
                    "crop-and-mask": {"ST IoU const": 14.0},
                    "no-global-subtraction": {"ST IoU const": 21.2},
                    "no-merge": {"ST IoU const": 18.3},
                    "ours": {"ST IoU const": 20.1},
                },
            },
        ),
        ReproductionTable(
            "fmbseg-table1",
            "FMbSeg Table 1: mIoU (Stage 1; with --checkpoint, Stage 2 base and refined)",
            (),  # rows: backend.evaluation.reproduce_fmbseg
            {name: ("mIoU",) for name in ("pv-21", "pv-20", "pc-59", "cs-171", "ade-150")},
            method="fmbseg",
        ),
    )
}


def get_table(name: str) -> ReproductionTable:
    try:
        return TABLES[name]
    except KeyError:
        raise ValueError(f"unknown table {name!r}; choose one of {', '.join(sorted(TABLES))}") from None


# ---- running the method -------------------------------------------------------------------------


def _kept(path: Path, settings: dict) -> bool:
    """Whether an earlier run left this file, made with these settings (else it is made again)."""
    if not path.is_file():
        return False
    try:
        return read_json(path).get("settings") == settings
    except (ValueError, AttributeError):
        return False  # half-written or foreign: made again


def predict_dataset(
    segmenter, items: Sequence[DatasetItem], folder: Path, progress: bool = True
) -> tuple[list[Path], int]:
    """Each image's prediction file in ``folder`` (kept ones reused); (paths, how many computed)."""
    settings = segmenter.settings.to_dict()
    paths, computed = [], 0
    for item in tqdm(items, desc=f"zero-guidance {folder.name}", unit="image", disable=not progress):
        path = folder / f"{item.id}.json"
        if not _kept(path, settings):
            result = segmenter.segment(read_image(item.image))
            write_json(path, result.to_json(item.image.name, embeddings=True))
            computed += 1
        paths.append(path)
    return paths, computed


def tgq_pairs(
    segmenter, items: Sequence[DatasetItem], label_space: LabelSpace, folder: Path, progress: bool = True
) -> list[dict]:
    """Section 4.3's oracle segmentation: the text the method gives each ground-truth segment."""
    settings = segmenter.settings.to_dict()
    pairs: list[dict] = []
    for item in tqdm(items, desc=f"TGQ {folder.name}", unit="image", disable=not progress):
        path = folder / f"{item.id}.json"
        if not _kept(path, settings):
            ground_truth = label_space.to_class_indices(read_label_map(item.labels))
            present = [int(c) for c in np.unique(ground_truth) if c >= 0]
            texts = []
            if present:
                masks = np.stack([ground_truth == c for c in present])
                texts = [d.text for d in segmenter.describe(read_image(item.image), masks)]
            write_json(
                path,
                {
                    "settings": settings,
                    "pairs": [{"label": label_space.classes[c], "text": t} for c, t in zip(present, texts)],
                },
            )
        pairs += read_json(path)["pairs"]
    return pairs


# ---- scoring --------------------------------------------------------------------------------------


def _overlaps(predictions: Sequence[PredictionFile], items: Sequence[DatasetItem], label_space: LabelSpace):
    images = []
    for prediction, item in zip(predictions, items):
        ground_truth = label_space.to_class_indices(read_label_map(item.labels))
        if ground_truth.shape != prediction.size:
            raise ValueError(f"{item.id}: ground truth {ground_truth.shape} vs prediction {prediction.size}")
        images.append(
            ImageOverlaps.from_masks(
                prediction.image, prediction.masks(), ground_truth, label_space.num_classes, prediction.segment_ids
            )
        )
    return images


def score_variant(
    predictions: Sequence[PredictionFile],
    items: Sequence[DatasetItem],
    label_space: LabelSpace,
    embed_sentences,
    embed_labels,
    ratings: Sequence | None = None,
    raters_per_segment: int = RATERS_PER_SEGMENT,
) -> dict[str, float | None]:
    """Table 1's columns (percent) of one variant's predictions."""
    images = _overlaps(predictions, items, label_space)
    classes = list(label_space.classes)
    by_method: dict[str, list[list[Reassignment]]] = {
        TEXT_TO_TEXT: [reassign_text_to_text(p.texts, classes, embed_sentences) for p in predictions],
        SEGMENT_TO_TEXT: [
            reassign_segment_to_text(
                p.embeddings if p.embeddings is not None else np.zeros((0, 1)), classes, embed_labels
            )
            for p in predictions
        ],
    }
    values: dict[str, float | None] = {}

    def put(method: str, column: str, scores) -> None:
        values[f"{method} IoU {column}"] = None if scores.miou is None else 100 * scores.miou
        values[f"{method} Recall {column}"] = None if scores.recall is None else 100 * scores.recall

    for method, reassignments in by_method.items():
        threshold = default_threshold(method)
        put(
            method,
            "const",
            evaluate_segmentation(
                images, [verify_by_threshold(r, threshold) for r in reassignments], label_space.classes, TAU_IOU
            ),
        )
        if ratings is not None:
            for k in HUMAN_COLUMNS[method]:
                scores = human_verified_scores(
                    images, reassignments, ratings, label_space.classes, k, TAU_IOU, raters_per_segment
                )
                put(method, "h=3" if k == 3 else f"h>={k}", scores)
    return values


# ---- the command ----------------------------------------------------------------------------------


def _vocabulary_overlap(classes: Sequence[str]) -> int:
    from ..zeroguide.captioning.retrieval import load_vocabulary

    vocabulary = {phrase.lower() for phrase in load_vocabulary()}
    return sum(1 for name in classes if name.lower() in vocabulary)


def _model_names(preset_name: str) -> dict[str, str]:
    from ..models.presets import get_preset

    preset = get_preset(preset_name)
    return {
        "clip": f"{preset.clip.arch} ({preset.clip.pretrained or 'random'})",
        "dino": preset.dino.name,
        "language": preset.language,
    }


def _markdown(report: dict) -> str:
    columns = report["columns"]
    lines = [f"# {report['title']}", "", f"{report['dataset_title']}, {report['images']} images. {report['note']}", ""]
    lines.append("| method | " + " | ".join(columns) + " |")
    lines.append("|---|" + "---|" * len(columns))

    def cell(value) -> str:
        return "-" if value is None else f"{value:.1f}"

    for row in report["rows"]:
        ours = [cell(row["ours"].get(c)) for c in columns]
        paper = [cell(row["paper"].get(c)) for c in columns]
        lines.append(f"| {row['title']} (here) | " + " | ".join(ours) + " |")
        lines.append(f"| {row['title']} (paper) | " + " | ".join(paper) + " |")
    lines += ["", "Settings and weights: the JSON beside this file."]
    return "\n".join(lines) + "\n"


def reproduce(
    table_name: str,
    data_dir: str | Path,
    dataset_name: str,
    out_dir: str | Path,
    preset: str = "paper",
    device: str | None = None,
    limit: int | None = None,
    captioner: str | None = None,
    ratings_path: str | Path | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Run, evaluate and write one table (see the module docstring); returns the report."""
    table = get_table(table_name)
    if dataset_name not in table.columns:
        raise ValueError(f"{table_name} is reported on {', '.join(table.columns)}, not {dataset_name!r}")
    layout: DatasetLayout = get_dataset(dataset_name)
    items = layout.items(data_dir, limit)
    out_dir = Path(out_dir)
    if table.method == "fmbseg":
        from .reproduce_fmbseg import reproduce_fmbseg

        if captioner is not None or ratings_path is not None:
            raise ValueError(f"{table_name}: --captioner and --ratings are zero-guidance options")
        rows, notes, details = reproduce_fmbseg(layout, items, out_dir, preset, device, checkpoint, progress)
    else:
        if checkpoint is not None:
            raise ValueError(f"{table_name}: --checkpoint is an FMbSeg option")
        rows, notes, details = _reproduce_zero_guidance(
            table, layout, items, out_dir, preset, device, captioner, ratings_path, progress
        )
    if details.get("random_weights"):
        notes.insert(0, "RANDOM WEIGHTS (tiny preset): these numbers test the pipeline, they measure nothing.")
    if limit is not None:
        notes.append(f"The first {len(items)} images of the split (--limit).")
    report = {
        "table": table.name,
        "title": table.title,
        "dataset": layout.name,
        "dataset_title": layout.title,
        "images": len(items),
        "columns": list(table.columns[dataset_name]),
        "rows": rows,
        "note": " ".join(notes),
        "preset": preset,
        "models": _model_names(preset),
        **details,
    }
    stem = f"{table.name}-{layout.name}"
    write_json(out_dir / f"{stem}.json", report)
    (out_dir / f"{stem}.md").write_text(_markdown(report), encoding="utf-8")
    return report


def _reproduce_zero_guidance(
    table: ReproductionTable,
    layout: DatasetLayout,
    items: Sequence[DatasetItem],
    out_dir: Path,
    preset: str,
    device: str | None,
    captioner: str | None,
    ratings_path: str | Path | None,
    progress: bool,
) -> tuple[list[dict], list[str], dict]:
    """The rows of a zero-guidance table: (rows, notes, details)."""
    from ..models import load_models
    from ..models.sentence import load_sentence_embedder
    from ..zeroguide import ZeroGuidanceSegmenter, ZeroGuideSettings
    from ..zeroguide.captioning.registry import captioner_settings

    label_space = layout.label_space()
    ratings = None
    if ratings_path is not None:
        data = read_json(ratings_path)
        ratings = parse_ratings(data.get("ratings") if isinstance(data, dict) else data)
    models = load_models(preset, device)
    base = ZeroGuideSettings.for_preset(models.method_overrides("zeroguide"))
    captioner = captioner or REPRODUCE_CAPTIONER
    if captioner != base.captioner:
        base = base.replace(captioner=captioner, captioner_options=captioner_settings(captioner, None))
    sentence = load_sentence_embedder(device or "cpu", paper_model=True)
    columns = table.columns[layout.name]
    rows, settings_used = [], {}
    for variant in table.variants:
        settings = base.replace(**variant.changes(base))
        settings_used[variant.name] = settings.to_dict()
        segmenter = ZeroGuidanceSegmenter(models, settings)
        paths, computed = predict_dataset(segmenter, items, out_dir / "predictions" / variant.name, progress)
        log.info(
            "%s: %d predictions computed, %d kept from an earlier run", variant.name, computed, len(paths) - computed
        )
        predictions = [PredictionFile.from_json(path) for path in paths]
        values = score_variant(
            predictions,
            items,
            label_space,
            sentence.encode,
            lambda labels: models.clip.encode_text([ST_PROMPT_TEMPLATE.format(label) for label in labels]),
            ratings=ratings,
        )
        if "TGQ" in columns and variant.tgq:
            pairs = tgq_pairs(segmenter, items, label_space, out_dir / "tgq" / variant.name, progress)
            tgq = text_generation_quality(
                [p["label"] for p in pairs], [p["text"] for p in pairs], sentence.encode, TAU_SBERT
            )
            values["TGQ"] = None if tgq.score is None else 100 * tgq.score
        paper = table.paper.get(layout.name, {}).get(variant.name, {})
        rows.append(
            {
                "variant": variant.name,
                "title": variant.title,
                "ours": {c: values.get(c) for c in columns},
                "paper": {c: paper.get(c) for c in columns},
            }
        )
    notes = []
    if captioner == "retrieval":
        overlap = _vocabulary_overlap(label_space.classes)
        notes.append(
            f"Captioner: retrieval, whose vocabulary contains {overlap} of the {label_space.num_classes} class names: "
            "NOT zero-guidance scores (the paper captions with ZeroCap)."
        )
    else:
        notes.append(f"Captioner: {captioner}.")
    details = {
        "random_weights": models.random_weights,
        "captioner": captioner,
        "sentence_encoder": sentence.name,
        "thresholds": {"tau_sbert": TAU_SBERT, "tau_clip": default_threshold(SEGMENT_TO_TEXT), "tau_iou": TAU_IOU},
        "st_prompt": ST_PROMPT_TEMPLATE,
        "human_ratings": str(ratings_path) if ratings_path is not None else None,
        "settings": settings_used,
    }
    return rows, notes, details
