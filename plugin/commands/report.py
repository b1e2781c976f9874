"""``python -m plugin report``: how much annotators changed the pre-labels (acceptance), as Markdown."""

from __future__ import annotations

import argparse
from pathlib import Path

from plugin.connection import LabelStudioConnection
from plugin.report import project_acceptance, write_report

NAME = "report"
HELP = "measure how much annotators changed a project's pre-labels: Markdown with charts"
DESCRIPTION = """\
Compare every submitted annotation of --project with the prediction it started from (per
method and label: IoU, share of predicted regions unchanged, edited, deleted; regions added;
text edits; per model version) and write into --out:

  report.md                    the tables, the charts, the text edits
  iou-per-label.png            IoU of prediction and annotation per label
  acceptance-per-version.png   unchanged / edited / deleted shares per model version
  acceptance.json              the figures (the shape of GET /metrics' "acceptance")"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", type=int, required=True, help="project id (see the project's URL)")
    parser.add_argument("--out", type=Path, default=Path("report"), help="output folder (default: report)")


def run(args: argparse.Namespace) -> int:
    connection = LabelStudioConnection.from_environment()
    measured = project_acceptance(connection, args.project)
    path = write_report(measured, args.out)
    print(
        f"project {args.project}: {len(measured.tasks)} of {measured.annotations} annotation(s) compared with "
        f"their prediction; report: {path}"
    )
    return 0
