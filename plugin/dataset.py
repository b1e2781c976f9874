"""Write a project's annotations as a dataset folder.

Layout (every path in ``dataset.json`` is relative to the folder)::

    OUT/
      dataset.json
      images/<task id>-<file name>               the image exactly as Label Studio serves it
      masks/<task id>/<annotation id>-<region>.png   one 8-bit PNG per region, 255 inside, 0 outside

``dataset.json``::

    {"project": {"id": 3, "title": "..."}, "label_config": "<View>...",
     "items": [{"task_id": 7, "annotation_id": 12, "completed_by": 1,
                "image": "images/7-cat.png", "source": "/data/upload/3/0a1b2c3d-cat.png",
                "width": 640, "height": 480,
                "regions": [{"id": "r1", "control": "segment", "labels": ["segment"],
                             "mask": "masks/7/12-r1.png", "area": 1234,
                             "texts": {"caption": ["a cat"]}, "choices": {"rating": ["2"]},
                             "rating": 2}]}]}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import unquote, urlsplit

import numpy as np
from PIL import Image

from plugin.connection import LabelStudioConnection
from plugin.errors import PluginError
from plugin.importing import uploaded_file_name
from plugin.regions import Region, rating_of, regions_from_result
from plugin.schema import LabelingSchema

DATASET_FILE = "dataset.json"


@dataclass(frozen=True)
class ExportOptions:
    """Which annotations go into the dataset.

    Attributes:
        all_annotations: export every non-cancelled annotation of a task; by default only
            the latest one (highest id).
        rating_control: name of the per-region Choices holding the 0-3 rating.
    """

    all_annotations: bool = False
    rating_control: str = "rating"


@dataclass(frozen=True)
class ExportSummary:
    """Counts of what `export_project` wrote."""

    tasks: int
    annotations: int
    regions: int
    out_dir: Path


def safe_name(text: str) -> str:
    """A file-name-safe version of ``text`` (letters, digits, ``-``, ``_``, ``.``)."""
    cleaned = re.sub(r"[^-\w.]", "_", text).strip("._")
    return cleaned or "item"


def image_file_name(task_id: int, image: str) -> str:
    """``images/`` name for a task's image: ``<task id>-<original file name>``."""
    name = uploaded_file_name(image) or unquote(urlsplit(image).path.rsplit("/", 1)[-1])
    return f"{task_id}-{safe_name(name or 'image')}"


def select_annotations(annotations: Sequence[Mapping], options: ExportOptions) -> list[Mapping]:
    """Drop cancelled (skipped) annotations; keep the latest unless ``all_annotations``."""
    kept = sorted(
        (annotation for annotation in annotations if not annotation.get("was_cancelled")),
        key=lambda annotation: annotation["id"],
    )
    if options.all_annotations:
        return kept
    return kept[-1:]


def region_record(region: Region, mask_path: str, options: ExportOptions) -> dict:
    """The JSON entry of one region."""
    return {
        "id": region.id,
        "control": region.control,
        "labels": region.labels,
        "mask": mask_path,
        "area": int(region.mask.sum()),
        "texts": region.texts,
        "choices": region.choices,
        "rating": rating_of(region, options.rating_control),
    }


def save_mask(mask: np.ndarray, path: Path) -> None:
    """Save an ``(H, W)`` bool mask as an 8-bit PNG (255 inside)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(path)


def export_project(
    connection: LabelStudioConnection, project_id: int, out_dir: Path, options: ExportOptions = ExportOptions()
) -> ExportSummary:
    """Download a project's annotated tasks into ``out_dir`` (created; existing files overwritten)."""
    project = connection.call(connection.client.projects.get, project_id)
    schema = LabelingSchema.from_config(project.label_config or "")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)

    pager = connection.call(
        connection.client.tasks.list, project=project_id, fields="all", page_size=100
    )
    items = []
    task_count = region_count = 0
    for task in connection.call(list, pager):
        annotations = select_annotations(
            [a if isinstance(a, Mapping) else a.model_dump() for a in (task.annotations or [])], options
        )
        if not annotations:
            continue
        task_count += 1
        source = str((task.data or {}).get(schema.image_key, ""))
        if not source:
            raise PluginError(f"task {task.id} has no {schema.image_key!r} in its data")
        image_name = image_file_name(task.id, source)
        image_bytes = connection.download(source)
        (out_dir / "images" / image_name).write_bytes(image_bytes)
        with Image.open(out_dir / "images" / image_name) as image:
            width, height = image.size
        for annotation in annotations:
            regions = regions_from_result(annotation.get("result") or [], schema)
            records = []
            for region in regions:
                if region.mask.shape != (height, width):
                    raise PluginError(
                        f"task {task.id}, annotation {annotation['id']}, region {region.id}: mask "
                        f"{region.mask.shape[1]}x{region.mask.shape[0]} but image {width}x{height}"
                    )
                mask_path = f"masks/{task.id}/{annotation['id']}-{safe_name(region.id)}.png"
                save_mask(region.mask, out_dir / mask_path)
                records.append(region_record(region, mask_path, options))
            region_count += len(records)
            items.append(
                {
                    "task_id": task.id,
                    "annotation_id": annotation["id"],
                    "completed_by": annotation.get("completed_by"),
                    "image": f"images/{image_name}",
                    "source": source,
                    "width": width,
                    "height": height,
                    "regions": records,
                }
            )
    document = {
        "project": {"id": project.id, "title": project.title},
        "label_config": project.label_config,
        "items": items,
    }
    (out_dir / DATASET_FILE).write_text(json.dumps(document, indent=1, ensure_ascii=False), encoding="utf-8")
    return ExportSummary(tasks=task_count, annotations=len(items), regions=region_count, out_dir=out_dir)
