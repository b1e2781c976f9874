"""FMbSeg Stage 1: pseudo-labels from CLIP and SAM, no training (section 3.2, appendix 1).

Stage 1.1 detects the classes present in an image with CLIP's class tokens on high-resolution
crops and prompts SAM with the 5 patches most similar to each present class. Stage 1.2 labels
SAM's automatic masks with the present class nearest to the mask's mean CLIP patch feature.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..models.clip import DenseClipSettings
from ..models.images import check_image
from ..timing import timed
from .settings import FMbSegSettings

__all__ = [
    "PseudoMask",
    "PseudoLabels",
    "PseudoLabeler",
    "detect_present_classes",
    "top_patch_centers",
    "label_masks_by_mean_feature",
    "resize_mask",
    "resize_square",
    "timed",
]

Source = Literal["1.1", "1.2"]


@dataclass
class PseudoMask:
    """One pseudo-labelled mask.

    Attributes:
        mask: (H, W) bool at the image's resolution.
        class_name: its class.
        source: ``"1.1"`` (CLIP-prompted SAM) or ``"1.2"`` (labelled automatic mask).
        score: SAM's predicted IoU (1.1), or the CLIP similarity of the label (1.2).
        points: (P, 2) the point prompts (x, y) in image pixels (1.1 only).
    """

    mask: np.ndarray
    class_name: str
    source: Source
    score: float
    points: np.ndarray | None = None


@dataclass
class PseudoLabels:
    """Stage 1's output for one image."""

    image_size: tuple[int, int]  # (H, W)
    classes: list[str]
    present: list[str]
    crop_votes: dict[str, int]
    masks: list[PseudoMask] = field(default_factory=list)

    def label_map(self) -> np.ndarray:
        """(H, W) int, index into ``classes``, -1 where no mask falls.

        Stage 1.2 masks are painted first, larger before smaller, then Stage 1.1 masks on top:
        a CLIP-prompted mask wins where the two disagree.
        """
        label_map = np.full(self.image_size, -1, dtype=np.int64)
        order = sorted(self.masks, key=lambda m: (m.source == "1.1", -int(m.mask.sum())))
        for pseudo in order:
            label_map[pseudo.mask] = self.classes.index(pseudo.class_name)
        return label_map

    def save(self, directory: str | Path, name: str) -> Path:
        """Write ``name.json`` and one PNG per mask into ``directory``; returns the JSON path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        records = []
        for index, pseudo in enumerate(self.masks):
            mask_name = f"{name}.mask{index:03d}.png"
            cv2.imwrite(str(directory / mask_name), pseudo.mask.astype(np.uint8) * 255)
            records.append(
                {
                    "mask": mask_name,
                    "class": pseudo.class_name,
                    "source": pseudo.source,
                    "score": float(pseudo.score),
                    "points": None if pseudo.points is None else pseudo.points.tolist(),
                }
            )
        path = directory / f"{name}.json"
        payload = {
            "image_size": list(self.image_size),
            "classes": self.classes,
            "present": self.present,
            "crop_votes": self.crop_votes,
            "masks": records,
        }
        path.write_text(json.dumps(payload, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PseudoLabels":
        path = Path(path)
        data = json.loads(path.read_text())
        masks = []
        for record in data["masks"]:
            mask = cv2.imread(str(path.parent / record["mask"]), cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise ValueError(f"mask file {record['mask']} listed in {path} is missing or unreadable")
            points = None if record["points"] is None else np.asarray(record["points"], dtype=np.float32)
            masks.append(PseudoMask(mask > 127, record["class"], record["source"], record["score"], points))
        return cls(tuple(data["image_size"]), data["classes"], data["present"], data["crop_votes"], masks)


def detect_present_classes(
    crop_embeddings: torch.Tensor, text_embeddings: torch.Tensor, min_crops: int
) -> tuple[list[int], torch.Tensor]:
    """Object presence detection (section 3.2.1, appendix 1.1.3).

    Each crop is classified as the class whose text embedding is most similar to its class token;
    a class is present when it wins MORE than ``min_crops`` (T) crops.

    Returns:
        (present class indices ascending, votes per class (K,)).
    """
    winners = (crop_embeddings @ text_embeddings.T).argmax(dim=1)
    votes = torch.bincount(winners, minlength=text_embeddings.shape[0])
    present = torch.nonzero(votes > min_crops).flatten().tolist()
    return present, votes


def top_patch_centers(similarity: torch.Tensor, count: int, target_size: tuple[int, int]) -> np.ndarray:
    """Centres (x, y) of the ``count`` most similar patches, in a ``target_size`` (H, W) image.

    Args:
        similarity: (h, w) patch-text similarities over the whole (squashed) image.
        count: the number of points (paper: 5).
        target_size: (H, W) of the image the points are for (SAM's input).
    """
    h, w = similarity.shape
    count = min(count, h * w)
    flat = similarity.flatten().topk(count).indices
    rows, cols = (flat // w).float(), (flat % w).float()
    xs = (cols + 0.5) * target_size[1] / w
    ys = (rows + 0.5) * target_size[0] / h
    return torch.stack([xs, ys], dim=1).cpu().numpy().astype(np.float32)


def label_masks_by_mean_feature(
    masks: np.ndarray, patches: torch.Tensor, text_embeddings: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1.2 mask labelling: the class nearest to each mask's mean patch feature.

    Args:
        masks: (M, H, W) bool, any resolution; each is area-downsampled onto the patch grid.
        patches: (h, w, D) unit-norm patch features covering the same (squashed) image.
        text_embeddings: (P, D) unit-norm text embeddings of the candidate classes.

    Returns:
        (class index per mask (M,), cosine similarity of that class (M,)).
    """
    if len(masks) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    h, w, dim = patches.shape
    weights = torch.from_numpy(np.asarray(masks, dtype=np.float32)).to(patches.device)
    weights = F.interpolate(weights[:, None], size=(h, w), mode="area")[:, 0].flatten(1)  # (M, h*w)
    mean = weights @ patches.reshape(h * w, dim) / weights.sum(dim=1, keepdim=True).clamp_min(1e-8)
    similarity = F.normalize(mean, dim=-1) @ text_embeddings.T
    best = similarity.max(dim=1)
    return best.indices.cpu().numpy(), best.values.float().cpu().numpy()


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) bool -> (H, W) bool; linear interpolation of the 0/1 mask, thresholded at 0.5."""
    if mask.shape == tuple(size):
        return mask.astype(bool)
    resized = cv2.resize(mask.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return resized > 0.5


def resize_square(image: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) -> (side, side, 3): squashed, as the papers' fixed-size inputs are (area when shrinking)."""
    if image.shape[:2] == (side, side):
        return image
    interpolation = cv2.INTER_AREA if max(image.shape[:2]) > side else cv2.INTER_CUBIC
    return cv2.resize(image, (side, side), interpolation=interpolation)


class PseudoLabeler:
    """Stage 1 of FMbSeg for one class list.

    Args:
        models: ``FoundationModels`` (CLIP and SAM are used).
        settings: :class:`FMbSegSettings`.
    """

    def __init__(self, models, settings: FMbSegSettings | None = None):
        self.models = models
        self.settings = settings or FMbSegSettings.for_preset(models.method_overrides("fmbseg"))

    def text_embeddings(self, classes: Sequence[str]) -> torch.Tensor:
        return self.models.clip.encode_text([self.settings.prompt_template.format(c) for c in classes])

    def __call__(
        self,
        image: np.ndarray,
        classes: Sequence[str],
        image_labels: Sequence[str] | None = None,
        stages: tuple[Source, ...] = ("1.1", "1.2"),
        timings: dict[str, float] | None = None,
    ) -> PseudoLabels:
        """Pseudo-label one image.

        Args:
            image: (H, W, 3) uint8 RGB.
            classes: the vocabulary V.
            image_labels: image-level labels, if known: the semi-supervised variant, which skips
                the presence test and prompts SAM for exactly these classes.
            stages: which of Stage 1.1 and 1.2 to run.
            timings: if given, filled with the seconds of each step (``clip_dense``,
                ``presence``, ``sam_embedding``, ``sam_points``, ``sam_automatic``, ``labelling``).
        """
        check_image(image)
        classes = list(dict.fromkeys(classes))
        if not classes:
            raise ValueError("the class list is empty")
        settings = self.settings
        clip = self.models.clip
        with timed(timings, "clip_dense"):
            dense = clip.dense_features(image, DenseClipSettings(settings.clip_image_size, settings.clip_last_block))
        with timed(timings, "presence"):
            text = self.text_embeddings(classes)
            present, votes = detect_present_classes(dense.crop_embeddings, text, settings.presence_min_crops)
        if image_labels is not None:
            unknown = sorted(set(image_labels) - set(classes))
            if unknown:
                raise ValueError(f"image labels {unknown} are not in the class list {classes}")
            present = sorted(classes.index(label) for label in set(image_labels))
        result = PseudoLabels(
            image_size=image.shape[:2],
            classes=classes,
            present=[classes[i] for i in present],
            crop_votes={c: int(v) for c, v in zip(classes, votes.tolist())},
        )
        if not present:
            return result
        sam_image = resize_square(image, settings.sam_image_size)
        sam_size = (settings.sam_image_size, settings.sam_image_size)
        embed = getattr(self.models.sam, "embed", None)
        if embed is not None:  # SAM's encoder once: Stage 1.1 and 1.2 read the cached embedding
            with timed(timings, "sam_embedding"):
                embed(sam_image)
        if "1.1" in stages:
            with timed(timings, "sam_points"):
                similarity = torch.einsum("hwd,kd->khw", dense.patches, text[present])
                point_sets = [top_patch_centers(s, settings.points_per_class, sam_size) for s in similarity]
                # the masks come straight at the image's size from SAM's logits (no 518 intermediate)
                answers = self.models.sam.predict_point_sets(sam_image, point_sets, output_size=image.shape[:2])
            # SAM's input is the image squashed to sam_size: map the prompts back to image pixels
            scale = np.array([image.shape[1] / sam_size[1], image.shape[0] / sam_size[0]], dtype=np.float32)
            for class_index, points, answer in zip(present, point_sets, answers):
                best = int(np.argmax(answer.scores))
                result.masks.append(
                    PseudoMask(
                        mask=answer.masks[best],
                        class_name=classes[class_index],
                        source="1.1",
                        score=float(answer.scores[best]),
                        points=points * scale,
                    )
                )
        if "1.2" in stages:
            with timed(timings, "sam_automatic"):
                records = self.models.sam.automatic_masks(
                    sam_image, output_size=image.shape[:2], **settings.automatic_mask_options()
                )
            if records:
                with timed(timings, "labelling"):
                    stack = np.stack([r["segmentation"] for r in records])  # at the image's size
                    labels, scores = label_masks_by_mean_feature(stack, dense.patches, text[present])
                for record, label, score in zip(records, labels, scores):
                    mask = record["segmentation"]
                    if mask.any():
                        result.masks.append(PseudoMask(mask, classes[present[int(label)]], "1.2", float(score)))
        return result
