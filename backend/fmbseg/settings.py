"""Every setting of FMbSeg (Seifi et al.), with the paper's value as its default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..settings import MethodSettings, tunable

__all__ = ["DINOV2_PATCH_SIZE", "FMbSegSettings"]

DINOV2_PATCH_SIZE = 14  # every DINOv2 (ViT-S/B/L/g) has 14x14 patches


@dataclass(frozen=True)
class FMbSegSettings(MethodSettings):
    """Settings of FMbSeg's two stages.

    Stage 1.1, CLIP queries SAM (section 3.2.1, appendix 1.1):
        clip_image_size: side of the oversampled image cut into CLIP-sized crops (appendix 1.1.2:
            1344 -> 16 crops of 336 -> a 96x96 feature map on ViT-L/14@336).
        clip_last_block: how patch tokens pass CLIP's last block (appendix 1.1.1; see
            ``DenseClipSettings``): ``"value"`` or ``"skip"``.
        prompt_template: text for each class (section 4.1: the single template "a photo of a {}").
        presence_min_crops: T; a class is present when it wins MORE than T crops (appendix 1.1.3: 1).
        points_per_class: SAM point prompts per present class: the most similar patches (5).
        sam_image_size: side of the square image given to SAM (appendix 1.1.4: 518, as DINOv2).

    Stage 1.2, SAM's automatic masks labelled by CLIP (section 3.2.2, appendix 1.2):
        sam_pred_iou_thresh: ``pred_iou_thresh`` of SamAutomaticMaskGenerator (appendix 1.2.1: 0.97).
        sam_points_per_side: its grid of point prompts (not in the paper: SAM's default 32).
        sam_stability_score_thresh: its stability filter (not in the paper: SAM's default 0.95).
        sam_min_mask_region_area: its small-region clean-up in pixels (paper: "constrained by
            size", no value given: 0, SAM's default).
        sam_min_area_fraction, sam_max_area_fraction: the section 3.2.2 "We constrain the masks by
            size": a mask covering less than the minimum or more than the maximum fraction of
            the image is dropped (before SAM's box NMS). The paper gives no
            values: 0 and None, no limit. Also applied to the refinement's masks (section 3.3:
            "depending on the hyperparameters set for mask quality and size").

    Stage 2, alignment module (section 3.3, appendix 2):
        dinov2_image_size: side of the square image given to DINOv2 (appendix 1.1.4: 518); a
            multiple of its 14-pixel patch.
        stage12_fraction: share of Stage 1.2 masks kept (at random) for training (appendix
            Table 2: 75%).
        refine: at inference, overlay SAM's automatic masks labelled by majority vote of the base
            prediction ("FMbSeg-Stage 2 (refined)").

    A project's ``model_settings`` may set the fields marked ``tunable`` within their bounds
    (docs/service.md lists them); ``prompt_template`` (free text) only the operator.
    """

    clip_image_size: int = tunable(1344, minimum=64, maximum=2688)
    clip_last_block: Literal["value", "skip"] = tunable("value", choices=("value", "skip"))
    prompt_template: str = "a photo of a {}"
    presence_min_crops: int = tunable(1, minimum=0, maximum=64)
    points_per_class: int = tunable(5, minimum=1, maximum=64)
    sam_image_size: int = tunable(518, minimum=64, maximum=2048)
    sam_pred_iou_thresh: float = tunable(0.97, minimum=0.0, maximum=1.0)
    sam_points_per_side: int = tunable(32, minimum=1, maximum=64)
    sam_stability_score_thresh: float = tunable(0.95, minimum=0.0, maximum=1.0)
    sam_min_mask_region_area: int = tunable(0, minimum=0, maximum=1_000_000)
    sam_min_area_fraction: float = tunable(0.0, minimum=0.0, maximum=1.0)
    sam_max_area_fraction: float | None = tunable(None, minimum=0.0, maximum=1.0, optional=True)
    dinov2_image_size: int = tunable(518, minimum=14, maximum=1036)
    stage12_fraction: float = tunable(0.75, minimum=0.0, maximum=1.0)
    refine: bool = tunable(True)

    def __post_init__(self) -> None:
        if "{}" not in self.prompt_template:
            raise ValueError(f"prompt_template must contain '{{}}' for the class name, got {self.prompt_template!r}")
        if self.presence_min_crops < 0:
            raise ValueError(f"presence_min_crops must be >= 0, got {self.presence_min_crops}")
        if self.points_per_class < 1:
            raise ValueError(f"points_per_class must be >= 1, got {self.points_per_class}")
        if not 0.0 <= self.stage12_fraction <= 1.0:
            raise ValueError(f"stage12_fraction must be in [0, 1], got {self.stage12_fraction}")
        if not 0.0 <= self.sam_pred_iou_thresh <= 1.0:
            raise ValueError(f"sam_pred_iou_thresh must be in [0, 1], got {self.sam_pred_iou_thresh}")
        if not 0.0 <= self.sam_min_area_fraction <= 1.0:
            raise ValueError(f"sam_min_area_fraction must be in [0, 1], got {self.sam_min_area_fraction}")
        if self.sam_max_area_fraction is not None and not (
            self.sam_min_area_fraction <= self.sam_max_area_fraction <= 1.0
        ):
            raise ValueError(
                f"sam_max_area_fraction must be None or in [sam_min_area_fraction, 1], got {self.sam_max_area_fraction}"
            )
        for name in ("clip_image_size", "sam_image_size", "dinov2_image_size", "sam_points_per_side"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.dinov2_image_size % DINOV2_PATCH_SIZE:
            raise ValueError(
                f"dinov2_image_size must be a multiple of DINOv2's patch size {DINOV2_PATCH_SIZE}, "
                f"got {self.dinov2_image_size}"
            )
        if self.clip_last_block not in ("value", "skip"):
            raise ValueError(f"clip_last_block must be 'value' or 'skip', got {self.clip_last_block!r}")

    def automatic_mask_options(self) -> dict[str, Any]:
        """Keyword arguments for ``SamModels.automatic_masks`` (Stage 1.2 and refinement):
        ``SamAutomaticMaskGenerator``'s, plus the area limits."""
        return {
            "points_per_side": self.sam_points_per_side,
            "pred_iou_thresh": self.sam_pred_iou_thresh,
            "stability_score_thresh": self.sam_stability_score_thresh,
            "min_mask_region_area": self.sam_min_mask_region_area,
            "min_area_fraction": self.sam_min_area_fraction,
            "max_area_fraction": self.sam_max_area_fraction,
        }
