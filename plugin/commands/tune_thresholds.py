"""``python -m plugin tune-thresholds``: each label's score threshold from what annotators kept and deleted."""

from __future__ import annotations

import argparse
import json

from backend.service.feedback import shape_methods
from plugin.connection import LabelStudioConnection
from plugin.errors import PluginError
from plugin.rating.lookup import get_project
from plugin.report import corrections
from plugin.thresholds import MIN_REGIONS, apply_thresholds, best_threshold, scored_outcomes

NAME = "tune-thresholds"
HELP = "set each label's model_score_threshold from the regions annotators kept and deleted"
DESCRIPTION = f"""\
For every submitted annotation of --project that started from a prediction, the predicted
regions with a score are kept (the annotation still has them) or deleted. Per label the
threshold that best separates the two (most regions shown that were kept plus hidden that were
deleted; the lowest on a tie) is printed, for labels with at least --min-regions (default
{MIN_REGIONS}) scored regions. --apply writes them into the label config as
model_score_threshold (on each <Label>; on a zero-guidance tag, whose labels are colours)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", type=int, required=True, help="project id (see the project's URL)")
    parser.add_argument("--min-regions", type=int, default=MIN_REGIONS, help="scored regions a label needs")
    parser.add_argument("--apply", action="store_true", help="write the thresholds into the project's config")
    parser.add_argument("--json", action="store_true", help="print the thresholds as JSON as the last line")


def run(args: argparse.Namespace) -> int:
    connection = LabelStudioConnection.from_environment()
    project = get_project(connection, args.project)
    methods, categories = shape_methods(project.label_config or "")
    if not methods:
        raise PluginError(f"project {args.project}: no BrushLabels or PolygonLabels to tune")
    by_label: dict[tuple[str, str], list[tuple[float, bool]]] = {}
    for annotation, prediction in corrections(connection, args.project):
        if prediction is None:
            continue
        outcomes = scored_outcomes(prediction.result or [], annotation.get("result") or [], categories, set(methods))
        for outcome in outcomes:
            by_label.setdefault((outcome.control, outcome.label), []).append((outcome.score, outcome.kept))
    thresholds = {}
    for (control, label), outcomes in sorted(by_label.items()):
        if len(outcomes) < args.min_regions:
            print(f"{control}: {label}: {len(outcomes)} scored region(s), fewer than {args.min_regions}: left as it is")
            continue
        threshold, right = best_threshold(outcomes)
        kept = sum(1 for _, k in outcomes if k)
        thresholds[(control, label)] = threshold
        print(
            f"{control}: {label}: threshold {threshold:.4g} ({right} of {len(outcomes)} regions right; "
            f"{kept} kept, {len(outcomes) - kept} deleted)"
        )
    if args.apply and thresholds:
        config = apply_thresholds(project.label_config or "", thresholds, set(categories))
        connection.call(connection.client.projects.update, id=args.project, label_config=config)
        print(f"written into project {args.project}'s label config")
    if args.json:
        print(json.dumps([{"control": c, "label": l, "threshold": t} for (c, l), t in thresholds.items()]))
    return 0
