"""``python -m plugin report``: how much annotators changed a project's pre-labels, as Markdown with charts.

Reads the project's annotations and the predictions they started from (``parent_prediction``)
through Label Studio's API and measures each with the backend's own comparison
(``backend.service.acceptance``, the figures ``GET /metrics`` shows under ``acceptance``):
per method and label the IoU of prediction and annotation and the share of predicted regions
kept unchanged, edited or deleted, regions added, text edits; per model version the same shares.
Writes ``report.md``, ``iou-per-label.png`` and ``acceptance-per-version.png`` (drawn with Pillow),
and ``acceptance.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from label_studio_sdk.types import Prediction
from PIL import Image, ImageDraw

from backend.outputs import write_json
from backend.service.acceptance import AcceptanceSummary, LabelCounts, TaskAcceptance, task_acceptance
from backend.service.feedback import shape_methods
from plugin.connection import LabelStudioConnection, as_dict
from plugin.errors import PluginError
from plugin.rating.lookup import get_project

__all__ = ["ProjectAcceptance", "corrections", "project_acceptance", "write_report", "bar_chart"]

SHARE_COLOURS = {"unchanged": (44, 160, 44), "edited": (255, 127, 14), "deleted": (214, 39, 40)}
BAR_COLOUR = (31, 119, 180)
CHART_WIDTH = 640
BAR_AREA = 360  # pixels a bar of 1.0 takes
ROW_HEIGHT = 22
LABEL_WIDTH = 230


@dataclass
class ProjectAcceptance:
    """The tasks measured and what could not be."""

    project_id: int
    tasks: list[TaskAcceptance]
    annotations: int
    without_prediction: int

    def summary(self) -> AcceptanceSummary:
        return AcceptanceSummary.of(self.tasks)


def corrections(connection: LabelStudioConnection, project_id: int) -> Iterator[tuple[dict, Prediction | None]]:
    """Every submitted (not skipped) annotation of the project with the prediction it started from
    (``parent_prediction``; ``None`` when it was drawn from scratch or its prediction is gone)."""
    predictions = {
        prediction.id: prediction
        for prediction in connection.call(connection.client.predictions.list, project=project_id)
    }
    pager = connection.call(connection.client.tasks.list, project=project_id, fields="all", page_size=100)
    for task in connection.call(list, pager):
        for annotation in map(as_dict, task.annotations or []):
            if not annotation.get("was_cancelled"):
                yield annotation, predictions.get(annotation.get("parent_prediction"))


def project_acceptance(connection: LabelStudioConnection, project_id: int) -> ProjectAcceptance:
    """Every submitted (not skipped) annotation of the project against its parent prediction."""
    project = get_project(connection, project_id)
    methods, categories = shape_methods(project.label_config or "")
    if not methods:
        raise PluginError(f"project {project_id}: its label config has no BrushLabels or PolygonLabels to measure")
    measured, annotations, without = [], 0, 0
    for annotation, prediction in corrections(connection, project_id):
        annotations += 1
        if prediction is None:
            without += 1
            continue
        measured.append(
            task_acceptance(
                prediction.result or [],
                annotation.get("result") or [],
                methods,
                model_version=prediction.model_version,
                categories=categories,
            )
        )
    return ProjectAcceptance(project_id, measured, annotations, without)


def bar_chart(title: str, rows: Sequence[tuple[str, dict[str, float]]], colours: dict[str, tuple]) -> Image.Image:
    """Horizontal bars, one row per ``(name, {part: share})``, the parts stacked left to right;
    a share of 1.0 is ``BAR_AREA`` pixels."""
    height = 40 + ROW_HEIGHT * max(1, len(rows)) + 30
    image = Image.new("RGB", (CHART_WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), title, fill="black")
    for index, (name, parts) in enumerate(rows):
        top = 40 + ROW_HEIGHT * index
        draw.text((10, top + 4), name[:34], fill="black")
        left = LABEL_WIDTH
        for part, share in parts.items():
            width = round(BAR_AREA * max(0.0, min(1.0, share)))
            if width:
                draw.rectangle([left, top + 3, left + width - 1, top + ROW_HEIGHT - 4], fill=colours[part])
            left += width
    legend_top = height - 24
    left = LABEL_WIDTH
    for part, colour in colours.items():
        draw.rectangle([left, legend_top, left + 12, legend_top + 12], fill=colour)
        draw.text((left + 16, legend_top), part, fill="black")
        left += 110
    return image


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _row(name: str, counts: LabelCounts) -> str:
    shares = counts.shares()
    return (
        f"| {name} | {counts.predicted} | {_percent(counts.iou)} | {_percent(shares['unchanged'])} | "
        f"{_percent(shares['edited'])} | {_percent(shares['deleted'])} | {counts.added} | "
        f"{counts.texts_edited}/{counts.texts} |"
    )


def write_report(measured: ProjectAcceptance, out_dir: Path) -> Path:
    """``report.md`` and its charts in ``out_dir``; returns the Markdown's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = measured.summary()
    write_json(out_dir / "acceptance.json", summary.to_dict())
    label_rows = [
        (f"{method}: {label}", counts)
        for method, by_label in sorted(summary.counts.items())
        for label, counts in sorted(by_label.items())
    ]
    bar_chart(
        "IoU of prediction and annotation, per label",
        [(name, {"IoU": counts.iou or 0.0}) for name, counts in label_rows],
        {"IoU": BAR_COLOUR},
    ).save(out_dir / "iou-per-label.png")
    bar_chart(
        "Predicted regions per model version",
        [
            (version, {k: v or 0.0 for k, v in counts.shares().items()})
            for version, counts in summary.by_version.items()
        ],
        SHARE_COLOURS,
    ).save(out_dir / "acceptance-per-version.png")
    header = "| {} | predicted regions | IoU % | unchanged % | edited % | deleted % | added | texts edited |"
    lines = [
        f"# Acceptance of the pre-labels of project {measured.project_id}",
        "",
        f"{measured.annotations} submitted annotation(s); {len(measured.tasks)} compared with the prediction they "
        f"started from; {measured.without_prediction} without one (drawn from scratch, or its prediction deleted).",
        "",
        "## Per label",
        "",
        header.format("method: label"),
        "|---|---|---|---|---|---|---|---|",
        *(_row(name, counts) for name, counts in label_rows),
        "",
        "![IoU per label](iou-per-label.png)",
        "",
        "## Per model version",
        "",
        header.format("model version"),
        "|---|---|---|---|---|---|---|---|",
        *(_row(version, counts) for version, counts in summary.by_version.items()),
        "",
        "![Acceptance per model version](acceptance-per-version.png)",
    ]
    if summary.text_edits:
        lines += ["", "## Text edits (predicted -> corrected)", ""]
        lines += [f"- {before} -> {after}" for before, after in summary.text_edits]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
