"""``python -m plugin export``: a project's annotations -> a dataset folder (PNG masks, COCO or YOLO-seg)."""

from __future__ import annotations

import argparse
from pathlib import Path

from plugin.connection import LabelStudioConnection
from plugin.dataset import FORMATS, ExportOptions, export_project
from plugin.formats import COCO_MASKS

NAME = "export"
HELP = "write a project's annotations as a dataset folder: PNG masks + JSON, COCO, or YOLO-seg"
DESCRIPTION = """\
Export the annotations of a project into --out. Every format copies each annotated task's
image, as Label Studio serves it, to images/<task>-<name>.

--format png (default)
  masks/<task>/<annotation>-<region>.png  one 8-bit mask per brush region (255 inside)
  dataset.json                            per annotation: image, size, and per region its
                                          labels, mask, area, texts, choices and 0-3 rating
--format coco [--coco-masks rle|polygon]
  result.json                             COCO instances: one per region and label; masks as
                                          RLE (exact, default) or polygons (holes filled);
                                          the region's text and rating as "attributes"
--format yolo
  labels/<task>-<stem>.txt, data.yaml     Ultralytics YOLO-seg: one polygon line per connected
                                          piece of a region (holes filled); no text or rating

Categories (COCO ids from 1, YOLO classes from 0) are the labels of the config's BrushLabels
tags in config order, the same for every task. Cancelled (skipped) annotations are left out;
by default only the latest annotation of each task is exported (yolo: always)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", type=int, required=True, help="project id (see the project's URL)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--format", choices=FORMATS, default="png", help="dataset format (default: %(default)s)")
    parser.add_argument(
        "--coco-masks",
        choices=COCO_MASKS,
        default="rle",
        help="COCO segmentation: rle (exact) or polygon (holes filled) (default: %(default)s)",
    )
    parser.add_argument("--all-annotations", action="store_true", help="export every annotation, not the latest")
    parser.add_argument(
        "--rating-control", default="rating", help="per-region Choices holding the rating (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    options = ExportOptions(
        all_annotations=args.all_annotations,
        rating_control=args.rating_control,
        format=args.format,
        coco_masks=args.coco_masks,
    )
    connection = LabelStudioConnection.from_environment()
    summary = export_project(connection, args.project, args.out, options)
    instances = {"coco": " as {} COCO instance(s)", "yolo": " as {} YOLO line(s)"}.get(options.format, "")
    print(
        f"exported {summary.annotations} annotation(s) of {summary.tasks} task(s), "
        f"{summary.regions} region(s){instances.format(summary.instances)} -> {summary.index}"
    )
    if summary.skipped:
        reasons = ", ".join(f"{count} with {reason}" for reason, count in sorted(summary.skipped.items()))
        print(f"skipped region(s): {reasons}")
    return 0
