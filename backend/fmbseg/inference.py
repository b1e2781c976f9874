"""Stage-2 prediction (section 3.3, "Deployment" and "Pixelwise Segmentation").

- Base (FMbSeg-Stage 2 (base)): the patch-text similarities z_p . t_k of every class k, on the
  patch grid, bilinearly interpolated to the image size; each pixel takes the argmax class.
- Refined (FMbSeg-Stage 2 (refined)): each of SAM's automatic masks takes the majority label of
  the base prediction's pixels inside it; the labelled masks are overlaid on the base map (which
  fills whatever the masks leave uncovered). Overlay order: larger masks first, so a smaller
  mask lying on a larger one keeps its own label (ours; the paper does not say).

Pure functions on tensors (numpy arrays are accepted where noted); labels index the text
features' order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .alignment import AlignmentModule

NO_LABEL = -1


def align_patch_grid(module: AlignmentModule, patch_features: torch.Tensor) -> torch.Tensor:
    """Frozen encoder patch features (h, w, C_in) -> aligned patch embeddings z (h, w, D), unit norm."""
    if patch_features.ndim != 3:
        raise ValueError(f"patch_features must be (h, w, C_in), got {tuple(patch_features.shape)}.")
    grid_h, grid_w, channels = patch_features.shape
    parameter = next(module.parameters())
    with torch.inference_mode():
        flat = patch_features.reshape(1, grid_h * grid_w, channels).to(parameter.device)
        return module(flat)[0].reshape(grid_h, grid_w, -1)


def _check_grid_inputs(patch_embeddings: torch.Tensor, text_embeddings: torch.Tensor, image_size) -> tuple[int, int]:
    if patch_embeddings.ndim != 3:
        raise ValueError(f"patch_embeddings must be (h, w, D), got {tuple(patch_embeddings.shape)}.")
    if text_embeddings.ndim != 2 or text_embeddings.shape[1] != patch_embeddings.shape[2]:
        raise ValueError(
            f"text_embeddings must be (K, {patch_embeddings.shape[2]}), got {tuple(text_embeddings.shape)}."
        )
    if text_embeddings.shape[0] == 0:
        raise ValueError("text_embeddings is empty: no class to predict.")
    height, width = (int(v) for v in image_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive (H, W), got {tuple(image_size)}.")
    return height, width


def patch_class_scores(patch_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """(h, w, D) patch embeddings, (K, D) text features -> (K, h, w) cosine similarities z_p . t_k."""
    patches = F.normalize(patch_embeddings.float(), dim=-1)
    texts = F.normalize(text_embeddings.float().to(patches.device), dim=-1)
    return torch.einsum("hwd,kd->khw", patches, texts)


def dense_class_scores(
    patch_embeddings: torch.Tensor, text_embeddings: torch.Tensor, image_size: tuple[int, int]
) -> torch.Tensor:
    """(K, H, W): the patch similarities bilinearly interpolated to the image size
    (``F.interpolate``, align_corners=False). Memory K*H*W floats: see ``base_label_map``."""
    height, width = _check_grid_inputs(patch_embeddings, text_embeddings, image_size)
    scores = patch_class_scores(patch_embeddings, text_embeddings)
    return F.interpolate(scores[None], size=(height, width), mode="bilinear", align_corners=False)[0]


def base_label_map(
    patch_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    image_size: tuple[int, int],
    *,
    classes_per_chunk: int = 16,
) -> torch.Tensor:
    """FMbSeg-Stage 2 (base): (H, W) int64, the argmax over k of ``dense_class_scores``.

    Interpolation is per class, so classes are processed ``classes_per_chunk`` at a time with a
    running maximum: memory stays at classes_per_chunk*H*W floats (171 COCO-Stuff classes at
    1024x1024 would need 0.7 GB at once). Ties go to the lower class index, as ``argmax``.
    """
    height, width = _check_grid_inputs(patch_embeddings, text_embeddings, image_size)
    if classes_per_chunk <= 0:
        raise ValueError(f"classes_per_chunk must be positive, got {classes_per_chunk}.")
    scores = patch_class_scores(patch_embeddings, text_embeddings)  # (K, h, w)
    best_score = torch.full((height, width), float("-inf"), device=scores.device)
    best_label = torch.zeros((height, width), dtype=torch.long, device=scores.device)
    for start in range(0, scores.shape[0], classes_per_chunk):
        chunk = F.interpolate(
            scores[None, start:start + classes_per_chunk], size=(height, width), mode="bilinear", align_corners=False
        )[0]
        chunk_score, chunk_label = chunk.max(dim=0)
        better = chunk_score > best_score  # strict: earlier classes win ties
        best_score = torch.where(better, chunk_score, best_score)
        best_label = torch.where(better, chunk_label + start, best_label)
    return best_label


def _as_mask_stack(masks: np.ndarray | torch.Tensor, image_shape: tuple[int, int]) -> torch.Tensor:
    stack = masks if torch.is_tensor(masks) else torch.from_numpy(np.asarray(masks))
    if stack.ndim != 3 or tuple(stack.shape[1:]) != tuple(image_shape):
        raise ValueError(f"masks must be (M, {image_shape[0]}, {image_shape[1]}), got {tuple(stack.shape)}.")
    return stack.bool()


def label_masks_by_majority(
    label_map: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor
) -> torch.Tensor:
    """Each mask's majority label (section 3.3: "majority vote of the classified patches within
    each mask"), counted over the base prediction's pixels.

    label_map: (H, W) int, -1 = no label (not counted); masks: (M, H, W) bool.
    Returns (M,) int64; -1 for a mask with no labelled pixel. Ties go to the lower label.
    """
    labels = torch.as_tensor(np.asarray(label_map) if not torch.is_tensor(label_map) else label_map).long()
    if labels.ndim != 2:
        raise ValueError(f"label_map must be (H, W), got {tuple(labels.shape)}.")
    stack = _as_mask_stack(masks, tuple(labels.shape)).to(labels.device)
    count = stack.shape[0]
    if count == 0:
        return torch.zeros(0, dtype=torch.long)
    num_labels = int(labels.max().clamp(min=0)) + 1
    mask_index, pixel = stack.flatten(1).nonzero(as_tuple=True)
    pixel_labels = labels.flatten()[pixel]
    counted = pixel_labels >= 0
    votes = torch.bincount(
        mask_index[counted] * num_labels + pixel_labels[counted], minlength=count * num_labels
    ).reshape(count, num_labels)
    winners = votes.argmax(dim=1)  # first maximum: lower label on ties
    return torch.where(votes.sum(dim=1) > 0, winners, torch.full_like(winners, NO_LABEL))


def overlay_mask_labels(
    label_map: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor,
    mask_labels: torch.Tensor,
) -> torch.Tensor:
    """Paint each mask with its label over a copy of ``label_map`` (H, W), larger masks first
    (stable by mask index among equal areas), so smaller masks win where masks overlap. Masks
    labelled -1 are skipped. Returns (H, W) int64."""
    result = torch.as_tensor(np.asarray(label_map) if not torch.is_tensor(label_map) else label_map).long().clone()
    stack = _as_mask_stack(masks, tuple(result.shape)).to(result.device)
    if mask_labels.shape != (stack.shape[0],):
        raise ValueError(f"mask_labels must be ({stack.shape[0]},), got {tuple(mask_labels.shape)}.")
    areas = stack.flatten(1).sum(dim=1)
    order = sorted(range(stack.shape[0]), key=lambda i: (-int(areas[i]), i))
    for index in order:
        if int(mask_labels[index]) != NO_LABEL:
            result[stack[index]] = int(mask_labels[index])
    return result


def refined_label_map(
    base_labels: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor
) -> torch.Tensor:
    """FMbSeg-Stage 2 (refined): SAM's automatic masks (M, H, W) bool, labelled by majority vote
    of ``base_labels`` (H, W), overlaid on it. Returns (H, W) int64."""
    return overlay_mask_labels(base_labels, masks, label_masks_by_majority(base_labels, masks))
