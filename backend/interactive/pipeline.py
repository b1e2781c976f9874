"""Interactive segmentation: SAM's mask for the annotator's prompts, named by zero-guidance's CLIP.

Per click:

1. SAM's image embedding: from the :class:`EmbeddingCache` (a further click on the same image), or
   ``SamModels.embed`` once per image (in the models' ``DTYPE``, like every other use of SAM)
   and stored.
2. ``SamModels.predict`` (segment-anything's ``SamPredictor.predict``) on that embedding with the
   points (label 1 positive, 0 negative) and the box; with ``multimask_output`` the
   highest-scoring of SAM's three masks is kept.
3. The zero-guidance segmenter's ``describe``: the segment's CLIP embedding with masked attention
   and global subtraction (section 3.2), its text (the captioner) and the text's embedding. The
   image's CLIP prefix (the blocks before the first masked one) is cached next to SAM's
   embedding, so a further click runs only CLIP's masked tail.
4. With classes: the nearest class prompt (``template.format(class)``) by cosine similarity of its
   CLIP text embedding to the segment's embedding; its score is the softmax over the classes of
   those similarities times CLIP's logit scale (the temperature CLIP was trained with, at most 100).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Hashable, Sequence

import numpy as np
import torch

from ..models.images import check_image
from ..timing import timed
from ..zeroguide.pipeline import ZeroGuidanceSegmenter
from ..zeroguide.settings import ZeroGuideSettings
from .cache import EmbeddingCache, content_hash
from .results import ClickResult
from .settings import ClickSettings

if TYPE_CHECKING:
    from ..models.sam import SamEmbedding

__all__ = ["ClickResult", "ClickSegmenter", "ClickSettings", "DEFAULT_CLASS_TEMPLATE", "check_prompts"]

DEFAULT_CLASS_TEMPLATE = "a photo of a {}"  # FMbSegSettings.prompt_template's default
MAX_LOGIT_SCALE = 100.0  # CLIP clamps its learned temperature here


def check_prompts(
    image_shape: tuple[int, ...],
    points: np.ndarray | Sequence | None,
    labels: np.ndarray | Sequence | None,
    box: np.ndarray | Sequence | None,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """The prompts as SAM takes them: points (P, 2) float32 x, y in pixels; labels (P,) int (1 or 0);
    box (4,) float32 x0, y0, x1, y1. Raises ``ValueError`` for shapes, labels or non-finite values."""
    height, width = image_shape[:2]
    point_array = label_array = box_array = None
    if points is not None and len(points):
        point_array = np.asarray(points, dtype=np.float32).reshape(-1, 2)
        label_array = np.ones(len(point_array), np.int64) if labels is None else np.asarray(labels).reshape(-1)
        if len(label_array) != len(point_array):
            raise ValueError(f"{len(point_array)} points but {len(label_array)} labels")
        if not np.isin(label_array, (0, 1)).all():
            found = sorted(set(label_array.tolist()))
            raise ValueError(f"point labels must be 1 (positive) or 0 (negative), got {found}")
        label_array = label_array.astype(np.int64)
        if not np.isfinite(point_array).all():
            raise ValueError("points must be finite")
    elif labels is not None and len(labels):
        raise ValueError("point labels without points")
    if box is not None:
        box_array = np.asarray(box, dtype=np.float32).reshape(-1)
        if box_array.shape != (4,) or not np.isfinite(box_array).all():
            raise ValueError(f"box must be 4 finite numbers x0, y0, x1, y1, got {box!r}")
        if not (box_array[0] < box_array[2] and box_array[1] < box_array[3]):
            raise ValueError(f"box must have x0 < x1 and y0 < y1, got {box_array.tolist()}")
    if point_array is None and box_array is None:
        raise ValueError("a click needs at least one point or a box")
    if point_array is not None and label_array.max() == 0 and box_array is None:
        raise ValueError("negative points alone select nothing: add a positive point or a box")
    del height, width  # prompts outside the image are SAM's to handle (they are clipped by its transform)
    return point_array, label_array, box_array


class ClickSegmenter:
    """One object per set of prompts, with its text and nearest class.

    Args:
        models: ``FoundationModels`` (SAM, CLIP and the captioner's models are used).
        zeroguide_settings: how segments are embedded and named (``segment_encoding``, ``captioner``).
        click_settings: :class:`ClickSettings`.
        describer: a ``ZeroGuidanceSegmenter`` to reuse (its captioner already warm); default: built
            from ``zeroguide_settings``.
        cache: an :class:`EmbeddingCache` to share between segmenters on the same models; default:
            one of ``click_settings``' bounds.
    """

    def __init__(
        self,
        models,
        zeroguide_settings: ZeroGuideSettings | None = None,
        click_settings: ClickSettings | None = None,
        *,
        describer: ZeroGuidanceSegmenter | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        self.models = models
        self.settings = click_settings or ClickSettings()
        self.describer = describer or ZeroGuidanceSegmenter(models, zeroguide_settings)
        if cache is None:
            cache = EmbeddingCache(self.settings.embedding_cache_entries, self.settings.embedding_cache_bytes)
        self.cache = cache
        self._lock = threading.Lock()

    @property
    def zeroguide_settings(self) -> ZeroGuideSettings:
        return self.describer.settings

    def warm_up(self) -> None:
        """Build the captioner (the retrieval captioner embeds its vocabulary once)."""
        self.describer.warm_up()

    # ---- the click -------------------------------------------------------------------------

    def segment(
        self,
        image: np.ndarray,
        points: np.ndarray | Sequence | None = None,
        labels: np.ndarray | Sequence | None = None,
        box: np.ndarray | Sequence | None = None,
        classes: Sequence[str] = (),
        task_key: Hashable | None = None,
        class_template: str = DEFAULT_CLASS_TEMPLATE,
    ) -> ClickResult:
        """The object the prompts point at.

        Args:
            image: (H, W, 3) uint8 RGB.
            points: (P, 2) x, y in pixels of ``image``; labels: (P,) 1 positive, 0 negative
                (default: all positive).
            box: x0, y0, x1, y1 in pixels of ``image``.
            classes: class names (prompts) to choose the nearest from; empty: no class.
            task_key: what the image belongs to (e.g. project and task); the cache keeps one
                entry per key and drops it when the key's image changes. ``None``: the image's
                content alone.
            class_template: the text each class is put in (``FMbSegSettings.prompt_template``).
        """
        check_image(image)
        points, labels, box = check_prompts(image.shape, points, labels, box)
        if "{}" not in class_template:
            raise ValueError(f"class_template must contain '{{}}', got {class_template!r}")
        timings: dict[str, float] = {}

        digest = content_hash(image)
        key = ("image", digest) if task_key is None else task_key
        with self._lock, torch.inference_mode():
            with timed(timings, "sam_image"):
                embedding, cached = self._sam_embedding(image, key, digest)
            with timed(timings, "sam_prompt"):
                masks, scores, _ = self.models.sam.predict(
                    image,
                    point_coords=points,
                    point_labels=labels,
                    box=box,
                    multimask_output=self.settings.multimask_output,
                    embedding=embedding,
                )
            masks, scores = np.asarray(masks, bool), np.asarray(scores, np.float32)
            order = [int(i) for i in np.argsort(-scores, kind="stable")]
            best = next((i for i in order if masks[i].any()), order[0])  # the most confident non-empty one
            mask, sam_score = masks[best], float(scores[best])
            if not mask.any():
                return ClickResult(mask, "", 0.0, sam_score, cached=cached, timings=timings)
            encoding = self.zeroguide_settings.segment_encoding
            prefix = None
            if encoding.method == "attention":
                with timed(timings, "clip_prefix"):
                    prefix = self._clip_prefix(image, key, digest)
            with timed(timings, "describe"):
                (description,) = self.describer.describe(image, mask[None], prefix)
            visual = description.visual.float()
            text_score = float(torch.dot(visual, description.text_embedding.float()))
            class_name = class_score = None
            if classes:
                with timed(timings, "classes"):
                    class_name, class_score = self._nearest_class(visual, list(classes), class_template)
        return ClickResult(
            mask=mask,
            text=description.text,
            text_score=text_score,
            sam_score=sam_score,
            class_name=class_name,
            class_score=class_score,
            cached=cached,
            timings=timings,
        )

    def _sam_embedding(self, image: np.ndarray, key: Hashable, digest: str) -> tuple[SamEmbedding, bool]:
        """SAM's embedding of the image, and whether it came from the cache."""
        embedding: SamEmbedding | None = self.cache.get(key, digest, "sam")
        if embedding is not None:
            return embedding, True
        embedding = self.models.sam.embed(image)
        features = embedding.features
        self.cache.put(key, digest, "sam", embedding, features.numel() * features.element_size())
        return embedding, False

    def _clip_prefix(self, image: np.ndarray, key: Hashable, digest: str) -> torch.Tensor:
        clip = self.models.clip
        encoding = self.zeroguide_settings.segment_encoding
        name = ("clip_prefix", getattr(clip, "name", ""), encoding.masked_layers)
        prefix = self.cache.get(key, digest, name)
        if prefix is None:
            prefix = clip.segment_prefix(image, encoding)
            self.cache.put(key, digest, name, prefix, prefix.numel() * prefix.element_size())
        return prefix

    def _nearest_class(self, visual: torch.Tensor, classes: list[str], template: str) -> tuple[str, float]:
        clip = self.models.clip
        text = clip.encode_text([template.format(name) for name in classes]).float()  # cached per prompt
        similarities = text @ visual.to(text.device)
        scale = _logit_scale(clip.model)
        probabilities = torch.softmax(scale * similarities, dim=0)
        index = int(torch.argmax(similarities))
        return classes[index], float(probabilities[index])


def _logit_scale(model) -> float:
    """CLIP's learned temperature exp(t), clamped at 100 as in training; 100 if the model has none."""
    scale = getattr(model, "logit_scale", None)
    if scale is None:
        return MAX_LOGIT_SCALE
    return float(min(float(torch.as_tensor(scale).float().exp()), MAX_LOGIT_SCALE))
