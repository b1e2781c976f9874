"""The benchmarks' datasets in their official layouts: where the images, label maps and splits are.

``reproduce`` reads a dataset from the folder a user downloaded it to (``--data DIR``), in the
layout its publishers (or mmsegmentation's converter, for Pascal Context) use. ``DIR`` may be the
dataset's own folder or any folder above it on the usual path (``VOCdevkit/VOC2012``, ...).

Layouts:
    ``pas-20`` (= FMbSeg's ``pv-20``) / ``pv-21``: PASCAL VOC 2012, ``VOC2012/JPEGImages/<id>.jpg``,
        ``SegmentationClass/<id>.png`` (0 background, 1-20, 255 void), the ids of
        ``ImageSets/Segmentation/val.txt`` (1,449). PAS-20 (zero-guidance) leaves out the
        background class; PV-21 (FMbSeg) keeps it.
    ``pc-59``: Pascal Context 59 from mmsegmentation's converter, ``VOC2010/JPEGImages``,
        ``SegmentationClassContext/<id>.png`` (0 background, 1-59), the ids of
        ``ImageSets/SegmentationContext/val.txt`` (5,105); the background class left out.
    ``cs-171``: COCO-Stuff 164k from mmsegmentation's converter, ``coco_stuff164k/images/val2017/<id>.jpg``,
        ``annotations/val2017/<id>_labelTrainIds.png`` (0-170, 255 void), every image of the folder (5,000).
    ``ade-150``: ADE20K, ``ADEChallengeData2016/images/validation/<id>.jpg``,
        ``annotations/validation/<id>.png`` (0 "other", ignored as mmseg's ``reduce_zero_label``;
        1-150), every image of the folder (2,000).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .files import read_class_names
from .metrics import IGNORE_INDEX, LabelSpace

__all__ = ["DatasetLayout", "DatasetItem", "DATASETS", "get_dataset"]


@dataclass(frozen=True)
class DatasetItem:
    """One validation image: its id, image file and label map."""

    id: str
    image: Path
    labels: Path


@dataclass(frozen=True)
class DatasetLayout:
    """Where one benchmark's files are, relative to the dataset's root, and how to score it.

    Attributes:
        name, title: the name ``--dataset`` takes, and the papers' name for it.
        roots: the dataset's root as found below ``--data`` (tried in order; ``""``: ``--data`` itself).
        images, labels, split: folders of the images and label maps, and the list of ids
            (``None``: every image of the images folder, by name).
        image_suffix, label_suffix: file name endings.
        classes: the class list (``backend.evaluation.files.CLASS_LISTS`` name): line v, value v.
        excluded: classes whose pixels are ignored and which are no test label.
        ignore: label values never evaluated.
    """

    name: str
    title: str
    roots: tuple[str, ...]
    images: str
    labels: str
    split: str | None
    classes: str
    excluded: tuple[str, ...] = ()
    ignore: tuple[int, ...] = (IGNORE_INDEX,)
    image_suffix: str = ".jpg"
    label_suffix: str = ".png"

    def label_space(self) -> LabelSpace:
        return LabelSpace(read_class_names(self.classes), self.ignore, self.excluded)

    def root(self, data_dir: str | os.PathLike) -> Path:
        """The dataset's root below ``data_dir``; a clear error naming the expected layout."""
        data_dir = Path(data_dir)
        for candidate in self.roots:
            root = data_dir / candidate
            listed = self.split is None or (root / self.split).is_file()
            if listed and (root / self.images).is_dir() and (root / self.labels).is_dir():
                return root
        tried = ", ".join(str(data_dir / candidate) or str(data_dir) for candidate in self.roots)
        split = f" and {self.split}" if self.split else ""
        raise ValueError(
            f"--data {data_dir}: no {self.title} there. Expected {self.images}/<id>{self.image_suffix}, "
            f"{self.labels}/<id>{self.label_suffix}{split} under one of: {tried}"
        )

    def items(self, data_dir: str | os.PathLike, limit: int | None = None) -> list[DatasetItem]:
        """The split's images in the list's order (the first ``limit``), each with its label map."""
        root = self.root(data_dir)
        if self.split is None:
            ids = sorted(
                path.name[: -len(self.image_suffix)] for path in (root / self.images).glob(f"*{self.image_suffix}")
            )
        else:
            ids = [line.strip() for line in (root / self.split).read_text().splitlines() if line.strip()]
        if limit is not None:
            if limit < 1:
                raise ValueError(f"--limit must be at least 1, got {limit}")
            ids = ids[:limit]
        items = []
        for item_id in ids:
            image = root / self.images / f"{item_id}{self.image_suffix}"
            labels = root / self.labels / f"{item_id}{self.label_suffix}"
            for path in (image, labels):
                if not path.is_file():
                    raise ValueError(f"{self.split or self.images} lists {item_id!r} but {path} does not exist")
            items.append(DatasetItem(item_id, image, labels))
        if not items:
            raise ValueError(f"{root / (self.split or self.images)} lists no images")
        return items


_VOC2012 = ("", "VOC2012", "VOCdevkit/VOC2012")
DATASETS: dict[str, DatasetLayout] = {
    layout.name: layout
    for layout in (
        DatasetLayout(
            "pas-20",
            "PASCAL VOC 2012 (PAS-20)",
            _VOC2012,
            "JPEGImages",
            "SegmentationClass",
            "ImageSets/Segmentation/val.txt",
            "voc",
            excluded=("background",),
        ),
        DatasetLayout(  # FMbSeg's name for the same benchmark
            "pv-20",
            "PASCAL VOC 2012 without background (PV-20)",
            _VOC2012,
            "JPEGImages",
            "SegmentationClass",
            "ImageSets/Segmentation/val.txt",
            "voc",
            excluded=("background",),
        ),
        DatasetLayout(
            "pv-21",
            "PASCAL VOC 2012 with background (PV-21)",
            _VOC2012,
            "JPEGImages",
            "SegmentationClass",
            "ImageSets/Segmentation/val.txt",
            "voc",
        ),
        DatasetLayout(
            "pc-59",
            "Pascal Context 59 (PC-59)",
            ("", "VOC2010", "VOCdevkit/VOC2010"),
            "JPEGImages",
            "SegmentationClassContext",
            "ImageSets/SegmentationContext/val.txt",
            "pascal-context-59",
            excluded=("background",),
        ),
        DatasetLayout(
            "cs-171",
            "COCO-Stuff 164k (CS-171)",
            ("", "coco_stuff164k", "data/coco_stuff164k"),
            "images/val2017",
            "annotations/val2017",
            None,
            "coco-stuff-171",
            label_suffix="_labelTrainIds.png",
        ),
        DatasetLayout(
            "ade-150",
            "ADE20K (ADE-150)",
            ("", "ADEChallengeData2016", "ade/ADEChallengeData2016", "data/ade/ADEChallengeData2016"),
            "images/validation",
            "annotations/validation",
            None,
            "ade20k-150",
            excluded=("other",),
        ),
    )
}


def get_dataset(name: str) -> DatasetLayout:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))}") from None
