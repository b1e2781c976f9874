"""Stage-2 prediction (section 3.3, "Deployment" and "Pixelwise Segmentation").

- Base (FMbSeg-Stage 2 (base)): the patch-text similarities z_p . t_k of every class k, on the
  patch grid, bilinearly interpolated to the image size; each pixel takes the argmax class.
- Refined (FMbSeg-Stage 2 (refined)): each of SAM's automatic masks takes the majority label of
  the base prediction's pixels inside it; the labelled masks are overlaid on the base map (which
  fills whatever the masks leave uncovered). Overlay order: larger masks first, so a smaller
  mask lying on a larger one keeps its own label (ours; the paper does not say).

Pure functions. Scores are torch tensors; label maps are returned as numpy int64 arrays (the
architecture's contract at the method boundary); masks and label maps are accepted as numpy
arrays or torch tensors. Labels index the text features' order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..models.images import bilinear_matrix
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
    chunk_elements: int = 2**22,
) -> np.ndarray:
    """FMbSeg-Stage 2 (base): (H, W) int64 numpy array, the argmax over k of
    ``dense_class_scores`` (ties to the lower class index, as ``argmax``).

    Bilinear interpolation is separable: scores (h, w, K) are interpolated along x once
    (-> (h, W, K)), then along y for bands of rows holding at most ``chunk_elements`` scores, and
    the argmax runs over the contiguous class axis. Memory stays at h*W*K + chunk_elements floats
    (all at once, 171 COCO-Stuff classes at 1024 x 1024 would need 0.7 GB; at 4000 x 3000, 8 GB).
    Same values as ``F.interpolate`` up to float rounding (~1e-7).
    """
    height, width = _check_grid_inputs(patch_embeddings, text_embeddings, image_size)
    if chunk_elements <= 0:
        raise ValueError(f"chunk_elements must be positive, got {chunk_elements}.")
    scores = patch_class_scores(patch_embeddings, text_embeddings).permute(1, 2, 0)  # (h, w, K)
    grid_h, grid_w, num_classes = scores.shape
    along_x = torch.matmul(bilinear_matrix(width, grid_w).float().to(scores.device), scores)  # (h, W, K)
    along_x = along_x.reshape(grid_h, width * num_classes)
    along_y = bilinear_matrix(height, grid_h).float().to(scores.device)  # (H, h)
    labels = torch.empty((height, width), dtype=torch.long, device=scores.device)
    rows = max(1, chunk_elements // (width * num_classes))
    for start in range(0, height, rows):
        band = (along_y[start : start + rows] @ along_x).reshape(-1, width, num_classes)
        labels[start : start + rows] = band.argmax(dim=-1)
    return labels.cpu().numpy()


def _as_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    return array.detach().cpu().numpy() if torch.is_tensor(array) else np.asarray(array)


def _as_label_map(label_map: np.ndarray | torch.Tensor) -> np.ndarray:
    labels = _as_numpy(label_map)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label_map must be an (H, W) integer array, got {labels.dtype} {labels.shape}.")
    return labels.astype(np.int64, copy=False)


def _as_mask_stack(masks: np.ndarray | torch.Tensor, image_shape: tuple[int, ...]) -> np.ndarray:
    stack = _as_numpy(masks)
    if stack.ndim != 3 or tuple(stack.shape[1:]) != tuple(image_shape):
        raise ValueError(f"masks must be (M, {image_shape[0]}, {image_shape[1]}), got {tuple(stack.shape)}.")
    return stack.astype(bool, copy=False)


def label_masks_by_majority(label_map: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor) -> np.ndarray:
    """Each mask's majority label (section 3.3: "majority vote of the classified patches within
    each mask"), counted over the base prediction's pixels.

    label_map: (H, W) int, -1 = no label (not counted); masks: (M, H, W) bool (numpy or torch).
    Returns (M,) int64; -1 for a mask with no labelled pixel. Ties go to the lower label.
    """
    labels = _as_label_map(label_map)
    stack = _as_mask_stack(masks, labels.shape)
    flat_labels = labels.ravel()
    num_labels = int(max(flat_labels.max(initial=-1), -1)) + 1
    result = np.full(stack.shape[0], NO_LABEL, dtype=np.int64)
    for index, mask in enumerate(stack.reshape(stack.shape[0], labels.size)):
        inside = flat_labels[mask]
        votes = np.bincount(inside[inside >= 0], minlength=num_labels)
        if votes.sum() > 0:
            result[index] = int(votes.argmax())  # first maximum: lower label on ties
    return result


def overlay_mask_labels(
    label_map: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor,
    mask_labels: np.ndarray | torch.Tensor,
) -> np.ndarray:
    """Paint each mask with its label over a copy of ``label_map`` (H, W), larger masks first
    (stable by mask index among equal areas), so smaller masks win where masks overlap. Masks
    labelled -1 are skipped. Returns (H, W) int64."""
    result = _as_label_map(label_map).copy()
    stack = _as_mask_stack(masks, result.shape)
    mask_labels = _as_numpy(mask_labels)
    if mask_labels.shape != (stack.shape[0],):
        raise ValueError(f"mask_labels must be ({stack.shape[0]},), got {tuple(mask_labels.shape)}.")
    areas = stack.reshape(stack.shape[0], result.size).sum(axis=1)
    for index in np.argsort(-areas, kind="stable"):
        if int(mask_labels[index]) != NO_LABEL:
            result[stack[index]] = int(mask_labels[index])
    return result


def refined_label_map(base_labels: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor) -> np.ndarray:
    """FMbSeg-Stage 2 (refined): SAM's automatic masks (M, H, W) bool, labelled by majority vote
    of ``base_labels`` (H, W), overlaid on it. Returns (H, W) int64."""
    return overlay_mask_labels(base_labels, masks, label_masks_by_majority(base_labels, masks))
