"""The zero-guidance segmentation facade: image in, named segments out (sections 3.1-3.4)."""

from __future__ import annotations


import cv2
import numpy as np
import torch

from ..models.images import check_image
from ..timing import timed
from .clustering import find_segment_candidates
from .crf import densecrf_refine, upsample_label_map, upsample_labels_along_edges
from .merging import SegmentDescription, merge_segments
from .results import Segment, ZeroGuidanceResult
from .settings import ZeroGuideSettings

__all__ = ["Segment", "ZeroGuidanceResult", "ZeroGuidanceSegmenter"]


class ZeroGuidanceSegmenter:
    """Zero-guidance segmentation with the foundation models of one preset.

    Args:
        models: ``FoundationModels`` (DINO, CLIP, and the captioner's models are used).
        settings: :class:`ZeroGuideSettings`; default: the paper's, with the preset's overrides.
        captioner: a text generator (``backend.zeroguide.captioning``); default: built from
            ``settings.captioner`` and ``settings.captioner_options``.
    """

    def __init__(self, models, settings: ZeroGuideSettings | None = None, captioner=None):
        self.models = models
        self.settings = settings or ZeroGuideSettings.for_preset(models.method_overrides("zeroguide"))
        self._captioner = captioner

    @property
    def captioner(self):
        if self._captioner is None:
            from .captioning.registry import build_captioner

            self._captioner = build_captioner(self.settings.captioner, self.models, self.settings.captioner_options)
        return self._captioner

    def warm_up(self) -> None:
        """Build the captioner and pay its one-off costs (the retrieval captioner embeds its vocabulary)."""
        self.captioner.warm_up()

    @property
    def model_version(self) -> str:
        return f"zeroguide-{self.models.preset.name}-{self.settings.captioner}-{self.settings.fingerprint()}"

    def describe(
        self, image: np.ndarray, masks: np.ndarray, prefix: torch.Tensor | None = None
    ) -> list[SegmentDescription]:
        """Section 3.2-3.3 for (K, H, W) masks: embeddings, texts and the texts' embeddings.

        ``prefix``: ``ClipModel.segment_prefix`` of the image, shared by every call on it.
        """
        clip = self.models.clip
        embeddings = clip.encode_segments(image, masks, self.settings.segment_encoding, prefix=prefix)
        captions = self.captioner.caption(embeddings)
        text_embeddings = clip.encode_text([caption.text for caption in captions])
        return [
            SegmentDescription(visual=e, text=c.text, text_embedding=t)
            for e, c, t in zip(embeddings, captions, text_embeddings)
        ]

    def segment(self, image: np.ndarray) -> ZeroGuidanceResult:
        """Split ``image`` ((H, W, 3) uint8 RGB) into named segments."""
        check_image(image)
        settings = self.settings
        timings: dict[str, float] = {}

        with timed(timings, "features"):
            features = self.models.dino(
                image, settings.dino_image_size, settings.dino_stride, keep_aspect=settings.dino_keep_aspect
            )
        with timed(timings, "clustering"):
            candidates = find_segment_candidates(
                features,
                n_clusters=min(settings.n_clusters, features.shape[0] * features.shape[1]),
                similarity_threshold=settings.dino_similarity_threshold,
            )
        with timed(timings, "crf"):
            label_map = self._pixel_labels(image, features, candidates.label_map)
        node_ids = [node for index, node in enumerate(candidates.segment_ids) if (label_map == index).any()]
        masks = np.stack([label_map == candidates.segment_ids.index(node) for node in node_ids])
        with timed(timings, "embedding_and_naming"):
            encoding = settings.segment_encoding
            prefix = self.models.clip.segment_prefix(image, encoding) if encoding.method == "attention" else None
            descriptions = dict(zip(node_ids, self.describe(image, masks, prefix)))
        with timed(timings, "merging"):
            if settings.merge and len(node_ids) > 1:
                merged = merge_segments(
                    candidates.tree,
                    dict(zip(node_ids, masks)),
                    descriptions,
                    lambda node, mask: self.describe(image, mask[None], prefix)[0],
                    merge_threshold=settings.merge_threshold,
                    # the merges of one tree level are re-embedded and re-named as one batch
                    describe_batch=lambda nodes, merged_masks: self.describe(image, np.stack(merged_masks), prefix),
                ).segments
                final = [(m.node_id, m.mask, m.description, m.merge_score) for m in merged]
            else:
                final = [(node, mask, descriptions[node], None) for node, mask in zip(node_ids, masks)]
        segments = [
            Segment(
                mask=mask,
                text=description.text,
                embedding=description.visual.detach().to("cpu", torch.float32).numpy().copy(),  # own (D,) array
                text_score=float(torch.dot(description.visual.float(), description.text_embedding.float())),
                merge_score=score,
                node_id=int(node),
            )
            for node, mask, description, score in final
        ]
        return ZeroGuidanceResult(
            segments=segments,
            image_size=image.shape[:2],
            settings=settings,
            model_version=self.model_version,
            preset=self.models.preset.name,
            random_weights=self.models.random_weights,
            timings=timings,
            candidates=len(node_ids),
        )

    def _pixel_labels(self, image: np.ndarray, features: torch.Tensor, grid_labels: np.ndarray) -> np.ndarray:
        """Grid labels -> (H, W) labels: DenseCRF (at DINO's load size, or the image's capped by
        ``crf_max_side``), or nearest upsampling without the CRF."""
        settings = self.settings
        height, width = image.shape[:2]
        if not settings.use_crf:
            return upsample_label_map(grid_labels, (height, width))
        work = image
        scale = 1.0
        if settings.crf_at_load_size:
            load_height, load_width = self.models.dino.load_size(
                image.shape, settings.dino_image_size, settings.dino_stride, settings.dino_keep_aspect
            )
            if (load_height, load_width) != (height, width):
                interpolation = cv2.INTER_AREA if load_height * load_width < height * width else cv2.INTER_LINEAR
                work = cv2.resize(image, (load_width, load_height), interpolation=interpolation)
            labels = densecrf_refine(work, features, grid_labels, **self._crf_parameters())
            return upsample_labels_along_edges(labels, work, image)
        if settings.crf_max_side is not None and max(height, width) > settings.crf_max_side:
            scale = settings.crf_max_side / max(height, width)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            work = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        labels = densecrf_refine(work, features, grid_labels, **self._crf_parameters())
        if scale != 1.0:
            labels = cv2.resize(labels.astype(np.int32), (width, height), interpolation=cv2.INTER_NEAREST)
        return labels.astype(np.int64)

    def _crf_parameters(self) -> dict:
        settings = self.settings
        return {
            "iterations": settings.crf_iterations,
            "gaussian_sxy": settings.crf_gaussian_sxy,
            "gaussian_compat": settings.crf_gaussian_compat,
            "bilateral_sxy": settings.crf_bilateral_sxy,
            "bilateral_srgb": settings.crf_bilateral_srgb,
            "bilateral_compat": settings.crf_bilateral_compat,
        }
