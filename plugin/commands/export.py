"""``python -m plugin export``: a project's annotations -> images, region masks and JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from plugin.connection import LabelStudioConnection
from plugin.dataset import DATASET_FILE, ExportOptions, export_project

NAME = "export"
HELP = "write a project's annotations as a dataset folder (images, one mask PNG per region, JSON)"
DESCRIPTION = f"""\
Export the annotations of a project into --out:

  images/<task>-<name>                    each annotated task's image, as Label Studio serves it
  masks/<task>/<annotation>-<region>.png  one 8-bit mask per brush region (255 inside)
  {DATASET_FILE}                          per annotation: image, size, and per region its
                                          labels, mask, area, texts, choices and 0-3 rating

Cancelled (skipped) annotations are left out; by default only the latest annotation of
each task is exported."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", type=int, required=True, help="project id (see the project's URL)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--all-annotations", action="store_true", help="export every annotation, not the latest")
    parser.add_argument(
        "--rating-control", default="rating", help="per-region Choices holding the rating (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    connection = LabelStudioConnection.from_environment()
    options = ExportOptions(all_annotations=args.all_annotations, rating_control=args.rating_control)
    summary = export_project(connection, args.project, args.out, options)
    print(
        f"exported {summary.annotations} annotation(s) of {summary.tasks} task(s), "
        f"{summary.regions} region(s) -> {summary.out_dir / DATASET_FILE}"
    )
    return 0
