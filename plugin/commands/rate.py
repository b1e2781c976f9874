"""``python -m plugin rate setup | collect``: the 0-3 rating protocol of zero-guidance segmentation."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backend.evaluation.rating import RATERS_PER_SEGMENT, RATING_SCALE, ScoreDistribution, score_distribution
from plugin.connection import LabelStudioConnection
from plugin.errors import PluginError
from plugin.rating.collect import CollectedRatings, collect_ratings
from plugin.rating.projects import prepare_rating_projects
from plugin.rating.reassigned import reassigned_labels, write_prediction_files

NAME = "rate"
HELP = "rate predicted segments 0-3 by three raters each (zero-guidance appendix F) and collect the scores"
DESCRIPTION = """\
The human rating of the zero-guidance paper (sections 4.2 and 5.2, appendix F): each predicted
segment and its text is shown to three distinct raters, who rate how well the text describes
the segment (0 incorrect, 1 partially correct, 2 correct but too general/specific, 3 correct).

  rate setup --project SOURCE_ID [--raters 3]
      make one rating project per rater batch ("Rating of project SOURCE_ID (rater batch
      1/3)", ...), each with one task per predicted segment that has a text: the input image
      next to the same image with the segment highlighted (the rest dimmed, a black and white
      outline), the predicted text, a required 0-3 choice.
  rate collect --project RATING_ID [RATING_ID ...] --out ratings.json [--report report.json]
      write the ratings of the batch projects as the records `python -m backend.evaluation
      ratings` reads and print the distribution of scores (Table 2).

Table 1's human columns rate the reassigned labels T_i* instead (section 4.2):
  rate predictions --project SOURCE_ID --out DIR
      the predicted segments as prediction files and images, for `python -m backend.evaluation
      reassign DIR --images DIR/images ...`;
  rate setup --project SOURCE_ID --target reassigned --reassigned FILE
      rater batch projects "Rating of labels of project SOURCE_ID (...)" showing each segment
      with its T_i*; `rate collect` then writes records with "label" = T_i*.

Each rater logs in as their own user and labels ONE batch project ("Label All Tasks"). Label
Studio's community edition shows every project to every user of the organisation: a rater who
opens another batch's project sees its scores (docs/label-studio.md, "Raters")."""

SETUP_DESCRIPTION = """\
Create (or complete) --raters projects "Rating of project SOURCE_ID (rater batch b/N)", one per
rater: each holds one task per brush region of the source project's newest predictions that
has a text in a per-region TextArea, and asks for one rating per task. Running it again adds
only segments without a task. Exit status 0, or 2 on an error (no such project, no prediction,
no segment with a text)."""

COLLECT_DESCRIPTION = """\
Read the rater batch projects' annotations (or one shared rating project made by an older
`rate setup`). Per task: skipped annotations and annotations without a score are left out, a
rater who rated twice counts once (the newest). A rating in batch project b is batch b (one per
task; a rater's second rating of a segment in a later batch is left out); in a shared project
the b-th rating by annotation id is batch b, at most --raters of them. Writes a JSON list
of {image, segment, text, label (T_i* when reassigned labels were rated, else null), rater,
score, batch, source_project, source_task, rating_task, annotation} and prints the share of labels at each score, computed per batch and
averaged over batches (appendix F). Exit status 0, 1 when there is no rating yet, 2 on an error."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="rate_action", metavar="ACTION", required=True)
    setup = actions.add_parser(
        "setup",
        help="make the rater batch projects of a pre-labelled project",
        description=SETUP_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    setup.add_argument("--project", type=int, required=True, help="id of the pre-labelled (source) project")
    setup.add_argument(
        "--raters",
        type=int,
        default=RATERS_PER_SEGMENT,
        help="raters per segment, one batch project each (paper: %(default)s)",
    )
    setup.add_argument(
        "--title",
        help="the batch projects' common title (default: 'Rating of project SOURCE_ID'); "
        "each adds ' (rater batch b/N)'",
    )
    setup.add_argument(
        "--text-control", help="per-region TextArea holding the predicted text (default: any per-region TextArea)"
    )
    setup.add_argument(
        "--target",
        choices=("texts", "reassigned"),
        default="texts",
        help="rate the predicted texts (Table 2, default) or the reassigned labels (Table 1's human columns)",
    )
    setup.add_argument(
        "--reassigned", type=Path, help="--target reassigned: the output of `python -m backend.evaluation reassign`"
    )
    setup.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    setup.set_defaults(rate_run=run_setup)

    predictions = actions.add_parser(
        "predictions",
        help="write a project's predicted segments as prediction files, for the evaluation's reassign",
        description="Write the newest predicted segments of each task (brush regions with a text) as "
        "DIR/<image>.json in the format of `python -m backend.zeroguide` (segment ids: the region ids) "
        "and the images as DIR/images/<image>, named as `rate collect` names them.",
    )
    predictions.add_argument("--project", type=int, required=True, help="id of the pre-labelled (source) project")
    predictions.add_argument("--out", type=Path, required=True, help="output folder")
    predictions.add_argument("--text-control", help="per-region TextArea holding the predicted text")
    predictions.set_defaults(rate_run=run_predictions)

    collect = actions.add_parser(
        "collect",
        help="export the ratings and print the score distribution",
        description=COLLECT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    collect.add_argument(
        "--project",
        type=int,
        nargs="+",
        required=True,
        metavar="RATING_ID",
        help="ids of the rater batch projects (or of one shared rating project)",
    )
    collect.add_argument("--out", type=Path, required=True, help="ratings JSON to write")
    collect.add_argument("--report", type=Path, help="also write the distribution and counts as JSON")
    collect.add_argument(
        "--raters",
        type=int,
        help="ratings kept per segment (default: the number of batches, or a shared project's annotations per task)",
    )
    collect.set_defaults(rate_run=run_collect)


def run(args: argparse.Namespace) -> int:
    return args.rate_run(args)


def run_predictions(args: argparse.Namespace) -> int:
    connection = LabelStudioConnection.from_environment()
    images, segments = write_prediction_files(connection, args.project, args.out, args.text_control)
    print(f"project {args.project}: {segments} segment(s) of {images} image(s) written to {args.out}")
    print(
        f"next: python -m backend.evaluation reassign {args.out} --images {args.out / 'images'} --classes ... "
        "--method st --out reassigned.json"
    )
    return 0


def run_setup(args: argparse.Namespace) -> int:
    if (args.target == "reassigned") != (args.reassigned is not None):
        raise PluginError("--target reassigned and --reassigned FILE go together")
    labels = reassigned_labels(args.reassigned) if args.reassigned is not None else None
    connection = LabelStudioConnection.from_environment()
    setup = prepare_rating_projects(
        connection,
        args.project,
        raters=args.raters,
        title=args.title,
        text_control=args.text_control,
        reassigned=labels,
    )
    url = connection.settings.url
    print(
        f"project {setup.source_project_id}: {setup.segments} predicted segment(s) with a text"
        + (f", {setup.regions_without_text} region(s) without text skipped" if setup.regions_without_text else "")
    )
    for project in setup.projects:
        print(
            f"rater batch {project.batch}/{setup.raters}: project {project.project_id} "
            f"{'created' if project.created else 'exists'}, {url}/projects/{project.project_id}/ "
            f"({len(project.created_task_ids)} task(s) created, {project.existing_tasks} already there)"
        )
    print(
        f"give each rater ONE of these projects; then: python -m plugin rate collect --project "
        f"{' '.join(map(str, setup.project_ids))} --out ratings.json"
    )
    if args.json:
        print(json.dumps(setup.to_dict()))
    return 0


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def describe(collected: CollectedRatings, distribution: ScoreDistribution) -> list[str]:
    """The lines ``collect`` prints."""
    names = {level.score: level.name for level in RATING_SCALE}
    lines = [
        f"{len(collected.records)} rating(s) of {len(collected.segments)} segment(s) by {len(collected.raters)} "
        f"rater(s); {len(collected.unrated_segments)} segment(s) without a rating, "
        f"{len(collected.incomplete_segments)} with fewer than {collected.raters_per_segment}; "
        f"{len(collected.open_tasks)} rating task(s) still open",
        f"share of labels per score (per batch, averaged over {sum(b is not None for b in distribution.per_batch)} "
        "batch(es)):",
    ]
    lines += [f"  {score} {names[score]:<34} {_percent(share)}" for score, share in distribution.fractions.items()]
    for index, counts in enumerate(distribution.counts_per_batch, start=1):
        lines.append(f"  batch {index}: " + "  ".join(f"{score}: {count}" for score, count in counts.items()))
    return lines


def run_collect(args: argparse.Namespace) -> int:
    if args.raters is not None and args.raters < 1:
        raise PluginError(f"--raters must be at least 1, got {args.raters}")
    connection = LabelStudioConnection.from_environment()
    collected = collect_ratings(connection, args.project, args.raters)
    try:
        distribution = score_distribution(collected.records, collected.raters_per_segment)
    except ValueError as error:  # the records are built to pass; this is a bug, said plainly
        raise PluginError(f"the collected ratings do not pass backend.evaluation: {error}") from error
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(collected.records, indent=1, ensure_ascii=False), encoding="utf-8")
    for note in collected.notes:
        print(f"  note: {note}", file=sys.stderr)
    for line in describe(collected, distribution):
        print(line)
    print(f"wrote {len(collected.records)} rating(s) -> {args.out}")
    if args.report:
        report = {
            "rating_projects": args.project,
            "raters_per_segment": collected.raters_per_segment,
            "segments": len(collected.segments),
            "rating_tasks": collected.tasks,
            "ratings": len(collected.records),
            "raters": collected.raters,
            "unrated_segments": [list(key) for key in collected.unrated_segments],
            "incomplete_segments": [list(key) for key in collected.incomplete_segments],
            "open_tasks": collected.open_tasks,
            "notes": collected.notes,
            "distribution": distribution.to_dict(),
        }
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
        print(f"wrote the report -> {args.report}")
    return 0 if collected.records else 1
