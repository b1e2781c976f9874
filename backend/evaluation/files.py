"""Reading the evaluation's inputs: class lists, label PNGs, prediction and reassignment JSON."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..outputs import decode_rle
from .metrics import LabelSpace
from .reassignment import Reassignment

__all__ = [
    "CLASS_LISTS",
    "read_class_names",
    "read_label_map",
    "PredictionFile",
    "load_predictions",
    "ground_truth_path",
    "read_json",
    "reassignments_to_json",
    "load_reassignments",
]

_CLASS_DIR = Path(__file__).parent / "classes"
# Built-in class lists: line v is the class of pixel value v. Names are the datasets' own, with
# compounds written as words ("potted plant", "tv monitor", "dining table") for SBERT and CLIP.
CLASS_LISTS = {
    "voc": _CLASS_DIR / "voc.txt",  # PASCAL VOC 2012 SegmentationClass: 0 background, 1..20, 255 void
    "pascal-context-59": _CLASS_DIR / "pascal_context_59.txt",  # mmseg's SegmentationClassContext: 0 background, 1..59
    # mmseg's COCO-Stuff 164k *_labelTrainIds.png: 0..79 things, 80..170 stuff, 255 void
    "coco-stuff-171": _CLASS_DIR / "coco_stuff_171.txt",
    # ADEChallengeData2016 annotations: 0 "other" (mmseg's reduce_zero_label ignores it), 1..150
    "ade20k-150": _CLASS_DIR / "ade20k_150.txt",
}


def read_json(path: str | os.PathLike):
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def read_class_names(spec: str | os.PathLike) -> tuple[str, ...]:
    """Class names by pixel value: a built-in list (``voc``, ``pascal-context-59``), a text file
    with one name per line, or a JSON list of names."""
    path = CLASS_LISTS.get(str(spec), Path(spec))
    if not path.is_file():
        raise ValueError(f"class list {spec!r}: neither a built-in list {sorted(CLASS_LISTS)} nor a file")
    if path.suffix == ".json":
        names = read_json(path)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{path}: a JSON class list must be a list of strings")
    else:
        names = [line.strip() for line in path.read_text().splitlines()]
        while names and not names[-1]:
            names.pop()
    if not names or any(not n for n in names):
        raise ValueError(f"{path}: class names must be non-empty, one per pixel value")
    return tuple(names)


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """(H, W) int64 pixel values of a label PNG (palette or greyscale; not RGB colours)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                raise ValueError(
                    f"{path}: a label map must be an indexed or greyscale PNG of class values, got mode {image.mode}"
                )
            return np.asarray(image).astype(np.int64)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such label map") from None
    except OSError as error:
        raise ValueError(f"{path}: not a readable image ({error})") from None


@dataclass(frozen=True)
class PredictionFile:
    """One ``python -m backend.zeroguide`` result file.

    Attributes:
        path: the JSON file.
        image: the image's file name.
        size: (H, W).
        segment_ids, texts, rles: per segment, its id, predicted text and COCO RLE mask.
        embeddings: (K, D) segment embeddings if the file carries them, else ``None``.
        settings: the method's settings as written (``segment_encoding`` among them).
        random_weights: whether the predictions came from random (tiny) weights.
    """

    path: Path
    image: str
    size: tuple[int, int]
    segment_ids: tuple
    texts: tuple[str, ...]
    rles: tuple[dict, ...]
    embeddings: np.ndarray | None
    settings: dict
    random_weights: bool

    def masks(self) -> np.ndarray:
        """(K, H, W) bool."""
        if not self.rles:
            return np.zeros((0, *self.size), dtype=bool)
        masks = []
        for segment_id, rle in zip(self.segment_ids, self.rles):
            try:
                mask = decode_rle(rle)
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{self.path}: segment {segment_id}: bad mask_rle ({error})") from None
            if mask.shape != self.size:
                raise ValueError(f"{self.path}: segment {segment_id} mask is {mask.shape}, image is {self.size}")
            masks.append(mask)
        return np.stack(masks)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "PredictionFile":
        path = Path(path)
        data = read_json(path)
        if not isinstance(data, dict) or "image" not in data or not isinstance(data.get("segments"), list):
            raise ValueError(f"{path}: not a prediction file (needs 'image' and a 'segments' list)")
        segments = data["segments"]
        for index, segment in enumerate(segments):
            if not isinstance(segment, dict) or "text" not in segment or "mask_rle" not in segment:
                raise ValueError(f"{path}: segment {index} needs 'text' and 'mask_rle'")
        ids = tuple(segment.get("id", index) for index, segment in enumerate(segments))
        if len(set(map(str, ids))) != len(ids):
            raise ValueError(f"{path}: segment ids repeat: {ids}")
        if "image_size" in data:
            size = tuple(int(v) for v in data["image_size"])
        elif segments:
            size = tuple(int(v) for v in segments[0]["mask_rle"]["size"])
        else:
            raise ValueError(f"{path}: no segments and no image_size")
        embeddings = None
        if segments and all("embedding" in s for s in segments):
            embeddings = np.asarray([s["embedding"] for s in segments], dtype=np.float64)
        return cls(
            path=path,
            image=str(data["image"]),
            size=size,
            segment_ids=ids,
            texts=tuple(str(s["text"]) for s in segments),
            rles=tuple(s["mask_rle"] for s in segments),
            embeddings=embeddings,
            settings=dict(data.get("settings") or {}),
            random_weights=bool(data.get("random_weights", False)),
        )


def load_predictions(paths: Sequence[str | os.PathLike]) -> list[PredictionFile]:
    """Prediction files, given as files or folders (every ``*.json`` inside, sorted by name)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(path.glob("*.json")))
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{path}: no such prediction file or folder")
    if not files:
        raise ValueError(f"no prediction files in {[str(p) for p in paths]}")
    predictions = [PredictionFile.from_json(f) for f in files]
    names = [p.image for p in predictions]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"several prediction files for the images {repeated}")
    return predictions


def ground_truth_path(gt_dir: str | os.PathLike, image_name: str, suffix: str = ".png") -> Path:
    """The label PNG of an image: ``GT_DIR/<image stem>.png``. An image exported from Label Studio
    is named ``<task id>-<file name>`` (``python -m plugin export`` and ``rate predictions``): when
    no label map has that name, the one named after the file name alone is used."""
    stem = Path(image_name).stem
    path = Path(gt_dir) / (stem + suffix)
    if path.is_file():
        return path
    task_prefix, _, original = stem.partition("-")
    if task_prefix.isdigit() and original and (Path(gt_dir) / (original + suffix)).is_file():
        return Path(gt_dir) / (original + suffix)
    raise ValueError(f"no ground truth for {image_name}: {path} does not exist")


def reassignments_to_json(
    predictions: Sequence[PredictionFile],
    reassignments: Sequence[Sequence[Reassignment]],
    label_space: LabelSpace,
    method: str,
    details: dict | None = None,
) -> dict:
    """The ``reassign`` command's output: per image, per segment, T_i* and its similarity."""
    return {
        "method": method,
        "label_space": label_space.to_dict(),
        "classes": list(label_space.classes),
        **(details or {}),
        "images": [
            {
                "image": p.image,
                "prediction_file": str(p.path),
                "segments": [
                    {"id": segment_id, "text": text, **r.to_dict()}
                    for segment_id, text, r in zip(p.segment_ids, p.texts, per_image)
                ],
            }
            for p, per_image in zip(predictions, reassignments)
        ],
    }


def load_reassignments(path: str | os.PathLike) -> tuple[LabelSpace, str, dict[str, dict[str, Reassignment]]]:
    """(label space, method, image -> segment id (str) -> Reassignment) from a ``reassign`` output."""
    data = read_json(path)
    try:
        space = data["label_space"]
        label_space = LabelSpace(tuple(space["names"]), tuple(space["ignore_values"]), tuple(space["excluded"]))
        method = data["method"]
        table = {
            image["image"]: {str(s["id"]): Reassignment.from_dict(s) for s in image["segments"]}
            for image in data["images"]
        }
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a reassignment file ({error!r})") from None
    return label_space, method, table
