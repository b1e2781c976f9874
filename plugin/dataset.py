"""Write a project's annotations as a dataset folder, in one of three formats.

Every format copies each annotated task's image, exactly as Label Studio serves it, to
``OUT/images/<task id>-<file name>``, and decodes brushes with the backend's one decoder.

``--format png`` (default; every path in ``dataset.json`` is relative to the folder)::

    OUT/
      dataset.json
      images/<task id>-<file name>
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

``--format coco`` (``--coco-masks rle|polygon``): ``OUT/result.json``, COCO instances. One image
entry per exported annotation (``file_name`` ``images/...``, relative to the JSON); one instance
per region and label, ``segmentation`` a compressed RLE (exact) or polygons along the pixel edges
(holes filled), ``area`` and ``bbox`` from the mask, ``iscrowd`` 0, ``attributes`` ``{"text": ...,
"rating": ...}`` when the region has them, ``label_studio`` the task/annotation/region ids.
Categories (ids from 1): the labels of the config's BrushLabels tags in config order.

``--format yolo``: Ultralytics YOLO-seg. ``OUT/labels/<image stem>.txt`` with one line
``class x1 y1 x2 y2 ...`` per connected piece of each region (points normalised, holes
filled), ``OUT/data.yaml`` with ``train``/``val`` (both ``images``) and ``names`` (the same
table, from 0). Only the latest annotation of a task (one label file per image).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence
from urllib.parse import unquote, urlsplit

import numpy as np
import yaml
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image

from backend.service.adapters.base import segment_category
from plugin.connection import LabelStudioConnection
from plugin.errors import PluginError
from plugin.importing import uploaded_file_name
from plugin.formats import COCO_MASKS, Categories, coco_annotation, region_attributes, yolo_lines
from plugin.regions import Region, rating_of, regions_from_result
from plugin.schema import LabelingSchema

DATASET_FILE = "dataset.json"  # --format png
COCO_FILE = "result.json"  # --format coco (the name Label Studio's own COCO export uses)
YOLO_FILE = "data.yaml"  # --format yolo
# Suffixes Ultralytics loads as images; a downloaded name without one gets one from its format.
IMAGE_SUFFIXES = {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic"}
FORMAT_SUFFIXES = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


@dataclass(frozen=True)
class ExportOptions:
    """Which annotations go into the dataset.

    Attributes:
        all_annotations: export every non-cancelled annotation of a task; by default only
            the latest one (highest id).
        rating_control: name of the per-region Choices holding the 0-3 rating.
        format: ``png`` (mask PNGs + ``dataset.json``), ``coco`` (``result.json``) or ``yolo``
            (Ultralytics YOLO-seg).
        coco_masks: ``rle`` (exact) or ``polygon`` (holes filled) for ``--format coco``.
    """

    all_annotations: bool = False
    rating_control: str = "rating"
    format: str = "png"
    coco_masks: str = "rle"


@dataclass(frozen=True)
class ExportSummary:
    """Counts of what `export_project` wrote.

    Attributes:
        regions: regions exported (coco and yolo skip the ones counted in ``skipped``).
        index: the file describing the dataset (``dataset.json``, ``result.json``, ``data.yaml``).
        instances: COCO annotations or YOLO lines (a region has one per label; in YOLO one per
            connected piece); for png, the regions.
        skipped: regions left out, by reason (``empty mask``, ``no label``).
    """

    tasks: int
    annotations: int
    regions: int
    out_dir: Path
    index: Path | None = None
    instances: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


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


@dataclass
class AnnotatedImage:
    """One exported annotation: its task's image (already in ``images/``) and its regions."""

    task_id: int
    annotation: Mapping
    image: str
    source: str
    width: int
    height: int
    regions: list[Region]


def brush_categories(label_config: str, schema: LabelingSchema) -> Categories:
    """The category table of the config's BrushLabels tags: each label a category, except the
    labels of a zero-guidance tag (a colour palette), which are one: its ``model_label``, else its
    first label (the backend's rule, ``segment_category``; a tag with a bad ``model_mode``, which
    the backend refuses, is exported as classes)."""
    interface = LabelInterface(label_config)
    controls: dict[str, list[str]] = {}
    segment_controls: dict[str, str] = {}
    for name in schema.brush_controls:
        control = interface.get_control(name)
        controls[name] = list(control.labels or [])
        category = segment_category(control, interface)
        if category is not None:
            segment_controls[name] = category
    return Categories.from_controls(controls, segment_controls)


def iter_annotated(
    connection: LabelStudioConnection,
    project_id: int,
    schema: LabelingSchema,
    out_dir: Path,
    options: ExportOptions,
    image_suffix: bool = False,
) -> Iterator[AnnotatedImage]:
    """The selected annotations of every annotated task, each task's image downloaded once into
    ``out_dir/images``. ``image_suffix``: give a name without an image suffix one from its bytes."""
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    pager = connection.call(connection.client.tasks.list, project=project_id, fields="all", page_size=100)
    for task in connection.call(list, pager):
        annotations = select_annotations(
            [a if isinstance(a, Mapping) else a.model_dump() for a in (task.annotations or [])], options
        )
        if not annotations:
            continue
        source = str((task.data or {}).get(schema.image_key, ""))
        if not source:
            raise PluginError(f"task {task.id} has no {schema.image_key!r} in its data")
        image_name = image_file_name(task.id, source)
        image_bytes = connection.download(source)
        with Image.open(io.BytesIO(image_bytes)) as image:
            width, height = image.size
            if image_suffix and Path(image_name).suffix.lower() not in IMAGE_SUFFIXES:
                image_name += FORMAT_SUFFIXES.get(image.format or "", "")
        (out_dir / "images" / image_name).write_bytes(image_bytes)
        for annotation in annotations:
            regions = regions_from_result(annotation.get("result") or [], schema)
            for region in regions:
                if region.mask.shape != (height, width):
                    raise PluginError(
                        f"task {task.id}, annotation {annotation['id']}, region {region.id}: mask "
                        f"{region.mask.shape[1]}x{region.mask.shape[0]} but image {width}x{height}"
                    )
            yield AnnotatedImage(
                task_id=task.id,
                annotation=annotation,
                image=f"images/{image_name}",
                source=source,
                width=width,
                height=height,
                regions=regions,
            )


class PngWriter:
    """``--format png``: one mask PNG per region and ``dataset.json`` (see the module's docstring)."""

    def __init__(self, out_dir: Path, project, schema: LabelingSchema, options: ExportOptions):
        self.out_dir, self.project, self.options = out_dir, project, options
        self.items: list[dict] = []
        self.skipped: dict[str, int] = {}

    def add(self, item: AnnotatedImage) -> int:
        records = []
        for region in item.regions:
            mask_path = f"masks/{item.task_id}/{item.annotation['id']}-{safe_name(region.id)}.png"
            save_mask(region.mask, self.out_dir / mask_path)
            records.append(region_record(region, mask_path, self.options))
        self.items.append(
            {
                "task_id": item.task_id,
                "annotation_id": item.annotation["id"],
                "completed_by": item.annotation.get("completed_by"),
                "image": item.image,
                "source": item.source,
                "width": item.width,
                "height": item.height,
                "regions": records,
            }
        )
        return len(records)

    def finish(self) -> Path:
        document = {
            "project": {"id": self.project.id, "title": self.project.title},
            "label_config": self.project.label_config,
            "items": self.items,
        }
        path = self.out_dir / DATASET_FILE
        path.write_text(json.dumps(document, indent=1, ensure_ascii=False), encoding="utf-8")
        return path


class _InstanceWriter:
    """What the COCO and YOLO writers share: the category table and the regions they skip."""

    def __init__(self, out_dir: Path, project, schema: LabelingSchema, options: ExportOptions):
        self.out_dir, self.project, self.schema, self.options = out_dir, project, schema, options
        self.categories = brush_categories(project.label_config or "", schema)
        self.skipped: dict[str, int] = {}
        self.instances = 0

    def labelled(self, region: Region) -> list[int]:
        """0-based category indices of a region's labels; none (and counted) when it cannot be
        exported: no label, or an empty mask."""
        reason = "empty mask" if not region.mask.any() else "no label" if not region.labels else None
        if reason:
            self.skipped[reason] = self.skipped.get(reason, 0) + 1
            return []
        return [self.categories.index(label, region.control) for label in region.labels]


class CocoWriter(_InstanceWriter):
    """``--format coco``: ``result.json`` (COCO instances) beside ``images/``."""

    def __init__(self, *args):
        super().__init__(*args)
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add(self, item: AnnotatedImage) -> int:
        image_id = len(self.images) + 1
        self.images.append(
            {
                "id": image_id,
                "file_name": item.image,
                "width": item.width,
                "height": item.height,
                "label_studio": {
                    "task_id": item.task_id,
                    "annotation_id": item.annotation["id"],
                    "completed_by": item.annotation.get("completed_by"),
                    "source": item.source,
                },
            }
        )
        exported = 0
        for region in item.regions:
            indices = self.labelled(region)
            attributes = region_attributes(
                region, self.schema.text_controls, rating_of(region, self.options.rating_control)
            )
            for index in indices:
                self.annotations.append(
                    coco_annotation(
                        len(self.annotations) + 1,
                        image_id,
                        index + 1,
                        region.mask,
                        self.options.coco_masks,
                        attributes,
                        {"label_studio": {"region_id": region.id, "control": region.control}},
                    )
                )
            exported += bool(indices)
            self.instances += len(indices)
        return exported

    def finish(self) -> Path:
        document = {
            "info": {
                "description": f"Label Studio project {self.project.id}: {self.project.title}",
                "version": "1.0",
                "contributor": "python -m plugin export --format coco",
            },
            "licenses": [],
            "images": self.images,
            "annotations": self.annotations,
            "categories": self.categories.coco(),
        }
        path = self.out_dir / COCO_FILE
        path.write_text(json.dumps(document, indent=1, ensure_ascii=False), encoding="utf-8")
        return path


class YoloWriter(_InstanceWriter):
    """``--format yolo``: Ultralytics YOLO-seg, ``labels/<image stem>.txt`` and ``data.yaml``."""

    def __init__(self, *args):
        super().__init__(*args)
        (self.out_dir / "labels").mkdir(parents=True, exist_ok=True)

    def add(self, item: AnnotatedImage) -> int:
        lines: list[str] = []
        exported = 0
        for region in item.regions:
            indices = self.labelled(region)
            for index in indices:
                lines += yolo_lines(index, region.mask)
            exported += bool(indices)
        self.instances += len(lines)
        label_path = self.out_dir / "labels" / (Path(item.image).stem + ".txt")
        label_path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        return exported

    def finish(self) -> Path:
        title = " ".join(str(self.project.title or "").split())  # one comment line
        header = (
            f"# Ultralytics YOLO-seg dataset: Label Studio project {self.project.id} ({title})\n"
            "# Not split: train and val are both images/ (no `path:`, so paths are relative to this file).\n"
        )
        body = yaml.safe_dump(
            {"train": "images", "val": "images", "names": dict(enumerate(self.categories.names))},
            sort_keys=False,
            allow_unicode=True,
        )
        path = self.out_dir / YOLO_FILE
        path.write_text(header + body, encoding="utf-8")
        return path


WRITERS = {"png": PngWriter, "coco": CocoWriter, "yolo": YoloWriter}
FORMATS = tuple(WRITERS)


def check_options(options: ExportOptions) -> None:
    """Raise `PluginError` for a format, mask encoding or combination the export cannot write."""
    if options.format not in WRITERS:
        raise PluginError(f"unknown export format {options.format!r} (one of {', '.join(FORMATS)})")
    if options.coco_masks not in COCO_MASKS:
        raise PluginError(f"unknown COCO mask encoding {options.coco_masks!r} (one of {', '.join(COCO_MASKS)})")
    if options.format == "yolo" and options.all_annotations:
        raise PluginError(
            "--format yolo holds one label file per image, so one annotation per task: "
            "drop --all-annotations (the latest annotation is exported) or use --format coco"
        )


def export_project(
    connection: LabelStudioConnection, project_id: int, out_dir: Path, options: ExportOptions = ExportOptions()
) -> ExportSummary:
    """Download a project's annotated tasks into ``out_dir`` in ``options.format`` (created;
    existing files overwritten)."""
    check_options(options)
    project = connection.call(connection.client.projects.get, project_id)
    schema = LabelingSchema.from_config(project.label_config or "")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = WRITERS[options.format](out_dir, project, schema, options)
    tasks: set[int] = set()
    annotation_count = region_count = 0
    for item in iter_annotated(connection, project_id, schema, out_dir, options, image_suffix=options.format == "yolo"):
        tasks.add(item.task_id)
        annotation_count += 1
        region_count += writer.add(item)
    index = writer.finish()
    return ExportSummary(
        tasks=len(tasks),
        annotations=annotation_count,
        regions=region_count,
        out_dir=out_dir,
        index=index,
        instances=getattr(writer, "instances", region_count),
        skipped=dict(writer.skipped),
    )
