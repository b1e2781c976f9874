"""Segment Anything (segment-anything 1.0): point-prompted masks and automatic masks."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from .images import check_image

__all__ = ["SamModels", "build_tiny_sam", "PointPromptResult"]


def build_tiny_sam(image_size: int = 256) -> torch.nn.Module:
    """SAM's architecture at a tiny size (random weights): tests only."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    prompt_dim, patch = 32, 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size,
            patch_size=patch,
            embed_dim=64,
            depth=2,
            num_heads=2,
            mlp_ratio=2,
            out_chans=prompt_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=4,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(image_size // patch, image_size // patch),
            input_image_size=(image_size, image_size),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=prompt_dim, mlp_dim=64, num_heads=2),
            transformer_dim=prompt_dim,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        ),
    )
    return sam.eval()


def _reusing_predictor(model: torch.nn.Module):
    """A ``SamPredictor`` that keeps the last image's embedding.

    Stage 1.1's point prompts and Stage 1.2's automatic masks (and FMbSeg's refinement) query SAM
    on the same image: with this predictor they pay for SAM's image encoder once. The automatic
    mask generator resets its predictor after each crop; here that keeps the embedding, and a
    different image (by content) is embedded anew.
    """
    from segment_anything import SamPredictor

    class ReusingPredictor(SamPredictor):
        _image_key: tuple | None = None

        def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
            contiguous = np.ascontiguousarray(image)
            key = (contiguous.shape, image_format, hashlib.blake2b(contiguous.data, digest_size=16).digest())
            if self.is_image_set and key == self._image_key:
                return
            super().set_image(contiguous, image_format)
            self._image_key = key

        def reset_image(self) -> None:
            if not hasattr(self, "is_image_set"):  # the constructor's reset: set the fields up
                super().reset_image()
            # otherwise keep the embedding for the next query on this image

    return ReusingPredictor(model)


@dataclass
class PointPromptResult:
    """SAM's answer to one set of point prompts.

    Attributes:
        masks: (3, H, W) bool, SAM's three candidate masks at image resolution.
        scores: (3,) predicted IoU of each mask (SAM's confidence).
    """

    masks: np.ndarray
    scores: np.ndarray

    @property
    def best(self) -> np.ndarray:
        """The most confident of the three masks, (H, W) bool."""
        return self.masks[int(np.argmax(self.scores))]


@dataclass
class SamModels:
    """A SAM model with the two ways the methods query it.

    Attributes:
        model: the ``segment_anything.modeling.Sam``.
        name: registry kind and weights, e.g. ``"vit_b"``.
        automatic_overrides: keyword arguments for ``SamAutomaticMaskGenerator`` that this model
            forces over the caller's (the ``tiny`` preset's random weights keep no mask unless
            both thresholds are 0).
    """

    model: torch.nn.Module
    name: str
    automatic_overrides: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _predictor: object = field(default=None, repr=False)

    def _shared_predictor(self):
        """The predictor every query goes through (call with ``_lock`` held)."""
        if self._predictor is None:
            self._predictor = _reusing_predictor(self.model)
        return self._predictor

    def predict_points(self, image: np.ndarray, points_xy: np.ndarray) -> PointPromptResult:
        """Three masks for positive point prompts ``points_xy`` (P, 2) in image pixel coordinates."""
        return self.predict_point_sets(image, [points_xy])[0]

    def predict_point_sets(self, image: np.ndarray, point_sets: list[np.ndarray]) -> list[PointPromptResult]:
        """One :class:`PointPromptResult` per set of positive points; the image is embedded once."""
        check_image(image)
        point_sets = [np.asarray(points, dtype=np.float32).reshape(-1, 2) for points in point_sets]
        if any(len(points) == 0 for points in point_sets):
            raise ValueError("every set of point prompts needs at least one point")
        results = []
        with self._lock, torch.inference_mode():
            predictor = self._shared_predictor()
            predictor.set_image(image)
            for points in point_sets:
                masks, scores, _ = predictor.predict(
                    point_coords=points, point_labels=np.ones(len(points), dtype=np.int64), multimask_output=True
                )
                results.append(PointPromptResult(masks=masks.astype(bool), scores=scores.astype(np.float32)))
        return results

    def automatic_masks(self, image: np.ndarray, **settings: Any) -> list[dict[str, Any]]:
        """SAM's automatic masks: ``SamAutomaticMaskGenerator(model, **settings).generate(image)``.

        Each record has ``segmentation`` ((H, W) bool), ``area``, ``bbox``, ``predicted_iou``,
        ``stability_score``. ``settings`` are the generator's own keyword arguments.
        """
        from segment_anything import SamAutomaticMaskGenerator

        check_image(image)
        options = {**settings, **self.automatic_overrides}
        with self._lock, torch.inference_mode():
            generator = SamAutomaticMaskGenerator(self.model, output_mode="binary_mask", **options)
            generator.predictor = self._shared_predictor()
            return generator.generate(image)
