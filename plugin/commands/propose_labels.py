"""``python -m plugin propose-labels``: a label set proposed from the texts zero-guidance gives a sample of tasks."""

from __future__ import annotations

import argparse
import json
import random

from plugin.connection import LabelStudioConnection
from plugin.errors import PluginError
from plugin.labels import SYNONYM_SIMILARITY, NamedArea, add_labels_to_config, propose_labels
from plugin.project import request_predictions
from plugin.rating.lookup import get_project
from plugin.rating.segments import predicted_segments

NAME = "propose-labels"
HELP = "propose a project's label set from the segments zero-guidance names in a sample of its tasks"
DESCRIPTION = """\
Take --sample tasks of --project (a fixed random sample; tasks without a prediction are sent to
the connected backend first with Label Studio's "Retrieve predictions", unless --no-predict),
read their free-text segments (brush regions with a text), group the texts by meaning with
Sentence-BERT (cosine similarity >= --similarity, average linkage) and print one proposed
<Label value=... model_prompt=... predicted_values=...> per group, the text covering most
pixels as its name and all of its texts as synonyms, with the share of the sampled pixels it
covers. --apply adds the proposals (labels not there yet) to the class-mask tag (--tag, default
the BrushLabels tag with model_mode="classes"): FMbSeg's Stage 1 serves masks for them at once."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", type=int, required=True, help="project id (see the project's URL)")
    parser.add_argument("--sample", type=int, default=50, help="tasks to look at (default: %(default)s)")
    parser.add_argument("--min-coverage", type=float, default=0.01, help="leave out groups covering less (0-1)")
    parser.add_argument("--similarity", type=float, default=SYNONYM_SIMILARITY, help="synonym threshold (cosine)")
    parser.add_argument("--no-predict", action="store_true", help="use only the predictions already there")
    parser.add_argument("--apply", action="store_true", help="add the proposed labels to the project's config")
    parser.add_argument("--tag", help="the tag to add them to (default: the class-mask BrushLabels)")
    parser.add_argument("--json", action="store_true", help="print the proposals as JSON as the last line")


def _class_tag(label_config: str) -> str:
    from label_studio_sdk.label_interface import LabelInterface

    interface = LabelInterface(label_config)
    for control in interface.controls:
        if control.tag == "BrushLabels" and control.attr.get("model_mode") == "classes":
            return control.name
    raise PluginError('no <BrushLabels model_mode="classes"> in the label config: name the tag with --tag')


def run(args: argparse.Namespace) -> int:
    from backend.models.sentence import load_sentence_embedder

    if args.sample < 1:
        raise PluginError(f"--sample must be at least 1, got {args.sample}")
    connection = LabelStudioConnection.from_environment()
    project = get_project(connection, args.project)
    pager = connection.call(connection.client.tasks.list, project=args.project, page_size=500)
    task_ids = sorted(task.id for task in connection.call(list, pager))
    if not task_ids:
        raise PluginError(f"project {args.project} has no tasks")
    sample = sorted(random.Random(0).sample(task_ids, min(args.sample, len(task_ids))))
    predicted = {p.task for p in connection.call(connection.client.predictions.list, project=args.project)}
    missing = [task for task in sample if task not in predicted]
    if missing and not args.no_predict:
        print(f"asking the connected backend to predict {len(missing)} sampled task(s) without a prediction")
        request_predictions(connection, args.project, missing)
    segments = [s for s in predicted_segments(connection, args.project).segments if s.source_task in sample]
    if not segments:
        raise PluginError(f"project {args.project}: the sampled tasks have no segment with a text")
    pixels = {segment.source_task: segment.mask.size for segment in segments}
    proposals = propose_labels(
        [NamedArea(s.text, int(s.mask.sum())) for s in segments],
        sum(pixels.values()),
        load_sentence_embedder("cpu").encode,
        args.similarity,
    )
    proposals = [p for p in proposals if p.coverage >= args.min_coverage]
    print(f"{len(segments)} named segment(s) in {len(pixels)} of {len(sample)} sampled task(s); proposed labels:")
    for proposal in proposals:
        print(
            f"  {proposal.label_xml()}  <!-- {100 * proposal.coverage:.1f} % of the pixels, {proposal.segments} segment(s) -->"
        )
    if args.apply:
        tag = args.tag or _class_tag(project.label_config or "")
        config, added = add_labels_to_config(project.label_config or "", tag, proposals)
        if added:
            connection.call(connection.client.projects.update, id=args.project, label_config=config)
        print(f"added to <{tag}>: {', '.join(added) or 'nothing (every proposed label is there)'}")
    if args.json:
        print(
            json.dumps(
                [
                    {"name": p.name, "synonyms": p.synonyms, "coverage": p.coverage, "segments": p.segments}
                    for p in proposals
                ]
            )
        )
    return 0
