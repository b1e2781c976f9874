"""Segment map to image resolution, with optional DenseCRF refinement (zero-guidance appendix B).

Appendix B: "Following Amir et al, the segmentation map is then up-sampled to input resolution
and refined using DenseCRF [Krähenbühl and Koltun]. The Unary Energy is set as the normalized
distance of each feature vector to all k centroids, and the pairwise connection is
fully-connected. Pairwise edge potentials are Gaussian kernels with location (pixel coordinates)
as feature and Bilateral kernels with location and RGB values as features."

As in Amir et al.'s ``part_cosegmentation.py`` and the zero-guidance authors' code:

- features are L2-normalised; centroid k is the mean normalised feature of segment k;
- unary energy ``U_k(p) = ||f_p - c_k||^2 - max_j ||f_p - c_j||^2`` on the feature grid, then
  nearest-neighbour upsampled to the image (subtracting the per-pixel maximum does not change the
  CRF; it only keeps the numbers <= 0);
- ``DIAG_KERNEL`` and ``NORMALIZE_SYMMETRIC`` for both kernels, 10 mean-field iterations,
  Gaussian sxy 1 / compat 25, bilateral sxy 5 / srgb 13 / compat 100 (the zero-guidance code;
  Amir et al. use sxy 3 / compat 50 and compat 15);
- the label of a pixel is the argmax of the CRF marginals, so every pixel gets exactly one segment.
  A segment may lose all its pixels; :func:`backend.zeroguide.clustering.masks_from_label_map`
  leaves it out and merging (section 3.4) treats it as gone (see ``docs/zeroguide-segments.md``).

``pydensecrf2`` (import name ``pydensecrf``) is imported only when the CRF runs.
"""

from __future__ import annotations

import numpy as np

from .clustering import as_numpy, normalize_rows

__all__ = [
    "centroid_distance_unary",
    "densecrf_refine",
    "upsample_label_map",
    "upsample_nearest",
    "upsample_labels_along_edges",
]

# Joint upsampling of labels (see upsample_labels_along_edges): the colour and the distance (in
# low-resolution pixels) at which a low-resolution neighbour stops being the likely source.
EDGE_UPSAMPLING_SIGMA_COLOUR = 10.0
EDGE_UPSAMPLING_SIGMA_SPACE = 1.0
EDGE_UPSAMPLING_CHUNK = 1 << 20  # pixels near boundaries handled at once
# Larger images are followed at this longest side (the image area-averaged to it), then the labels
# go to full size by nearest neighbour: boundaries within a few pixels of the edges of a 24 MP
# photo, at a bounded cost (every pixel of a fragmented map can lie near a boundary).
EDGE_UPSAMPLING_MAX_SIDE = 1024


def upsample_nearest(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of the first two axes: out[y, x] = grid[y*h // H, x*w // W].

    Args:
        grid: (h, w, ...) array.
        size: (H, W) output size.

    Returns:
        (H, W, ...) array of the same dtype (``torch.nn.Upsample(mode="nearest")`` indexing).
    """
    grid = as_numpy(grid)
    out_height, out_width = (int(v) for v in size)
    if grid.ndim < 2:
        raise ValueError(f"grid must have at least 2 dims (h, w, ...), got shape {grid.shape}")
    if out_height < 1 or out_width < 1:
        raise ValueError(f"size must be positive, got {size}")
    height, width = grid.shape[:2]
    rows = (np.arange(out_height) * height) // out_height
    cols = (np.arange(out_width) * width) // out_width
    return grid[rows[:, None], cols[None, :]]


def upsample_label_map(label_map, size: tuple[int, int]) -> np.ndarray:
    """(h, w) int grid label map -> (H, W) int64 at image resolution, nearest neighbour."""
    label_map = as_numpy(label_map)
    if label_map.ndim != 2:
        raise ValueError(f"label_map must be (h, w), got shape {label_map.shape}")
    return upsample_nearest(label_map.astype(np.int64, copy=False), size)


def upsample_labels_along_edges(
    labels: np.ndarray,
    small_image: np.ndarray,
    image: np.ndarray,
    sigma_colour: float = EDGE_UPSAMPLING_SIGMA_COLOUR,
    sigma_space: float = EDGE_UPSAMPLING_SIGMA_SPACE,
) -> np.ndarray:
    """(h, w) labels of ``small_image`` -> (H, W) labels of ``image``, boundaries on the image's edges.

    Nearest-neighbour upsampling puts a boundary anywhere within one low-resolution pixel (a whole
    block of a large photo). Here every full-resolution pixel near a boundary (whose low-resolution
    pixel has a differently labelled 8-neighbour) takes the label of the one of its 3x3
    low-resolution neighbours that is nearest in colour and position, the minimum of
    ``|I(p) - I_small(q)|^2 / 2σ_c^2 + |p - q|^2 / 2σ_s^2`` (joint bilateral upsampling with its
    weights' maximum instead of their sum; Kopf et al., 2007). Pixels away from boundaries keep the
    nearest label. Cost: linear in the pixels near boundaries; an image larger than
    ``EDGE_UPSAMPLING_MAX_SIDE`` is followed at that size, then its labels enlarged (nearest).

    Args:
        labels: (h, w) integer labels of ``small_image``.
        small_image, image: (h, w, 3) and (H, W, 3) uint8 RGB, the same picture at two sizes.
        sigma_colour: σ_c, in 8-bit RGB units.
        sigma_space: σ_s, in low-resolution pixels.
    """
    labels, small_image, image = as_numpy(labels), as_numpy(small_image), as_numpy(image)
    if labels.shape != small_image.shape[:2]:
        raise ValueError(f"labels {labels.shape} must match the small image {small_image.shape[:2]}")
    full_height, full_width = image.shape[:2]
    if max(full_height, full_width) > EDGE_UPSAMPLING_MAX_SIDE:
        import cv2

        scale = EDGE_UPSAMPLING_MAX_SIDE / max(full_height, full_width)
        guide_size = (max(1, round(full_width * scale)), max(1, round(full_height * scale)))
        guide = cv2.resize(image, guide_size, interpolation=cv2.INTER_AREA)
        followed = upsample_labels_along_edges(labels, small_image, guide, sigma_colour, sigma_space)
        return cv2.resize(followed.astype(np.int32), (full_width, full_height), interpolation=cv2.INTER_NEAREST).astype(
            np.int64
        )
    height, width = image.shape[:2]
    low_height, low_width = labels.shape
    out = upsample_nearest(labels.astype(np.int64, copy=False), (height, width))
    if (low_height, low_width) == (height, width):
        return out
    padded = np.pad(labels, 1, mode="edge")
    near_boundary = np.zeros(labels.shape, bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            near_boundary |= padded[dy : dy + low_height, dx : dx + low_width] != labels
    if not near_boundary.any():
        return out
    rows, cols = np.nonzero(upsample_nearest(near_boundary, (height, width)))
    small = small_image.astype(np.float32)
    for start in range(0, rows.size, EDGE_UPSAMPLING_CHUNK):  # bounded memory on large photos
        part = slice(start, start + EDGE_UPSAMPLING_CHUNK)
        out[rows[part], cols[part]] = _nearest_in_colour_and_space(
            rows[part], cols[part], labels, small, image, (height, width), sigma_colour, sigma_space
        )
    return out


def _nearest_in_colour_and_space(rows, cols, labels, small, image, size, sigma_colour, sigma_space):
    """For pixels (rows, cols) of ``image``: the label of the 3x3 low-resolution neighbour of least cost."""
    height, width = size
    low_height, low_width = labels.shape
    # each pixel's position in low-resolution pixel coordinates (pixel centres)
    y = (rows + 0.5) * (low_height / height) - 0.5
    x = (cols + 0.5) * (low_width / width) - 0.5
    centre_y = np.clip(np.rint(y).astype(np.int64), 0, low_height - 1)
    centre_x = np.clip(np.rint(x).astype(np.int64), 0, low_width - 1)
    colour = image[rows, cols].astype(np.float32)
    best_cost = np.full(rows.shape, np.inf, np.float32)
    best_label = np.zeros(rows.shape, np.int64)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ny = np.clip(centre_y + dy, 0, low_height - 1)
            nx = np.clip(centre_x + dx, 0, low_width - 1)
            colour_distance = ((colour - small[ny, nx]) ** 2).sum(axis=1)
            space_distance = (y - ny) ** 2 + (x - nx) ** 2
            cost = colour_distance / (2 * sigma_colour**2) + space_distance / (2 * sigma_space**2)
            better = cost < best_cost
            best_cost[better] = cost[better]
            best_label[better] = labels[ny[better], nx[better]]
    return best_label


def centroid_distance_unary(features, label_map, *, normalize_features: bool = True) -> np.ndarray:
    """Unary energy of each grid cell for each segment: squared distance to the segment's centroid.

    ``U_k(p) = ||f_p - c_k||^2 - max_j ||f_p - c_j||^2``, ``c_k`` = mean (normalised) feature of
    the cells labelled k. Lower energy = more likely.

    Args:
        features: (h, w, C) dense DINO features.
        label_map: (h, w) int in [0, K); every label must own at least one cell.
        normalize_features: L2-normalise features first (Amir et al.).

    Returns:
        (h, w, K) float32 energies, each <= 0.
    """
    features = as_numpy(features)
    label_map = as_numpy(label_map)
    if features.ndim != 3:
        raise ValueError(f"features must be (h, w, C), got shape {features.shape}")
    if label_map.shape != features.shape[:2]:
        raise ValueError(f"label_map {label_map.shape} must match the feature grid {features.shape[:2]}")
    height, width, channels = features.shape
    points = features.reshape(-1, channels).astype(np.float64)
    if normalize_features:
        points = normalize_rows(points)
    labels = label_map.reshape(-1).astype(np.int64)
    if labels.min() < 0:
        raise ValueError("label_map must not contain negative labels")
    n_labels = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=n_labels)
    if np.any(counts == 0):
        raise ValueError(f"labels {np.nonzero(counts == 0)[0].tolist()} own no grid cell: no centroid")
    centroids = np.zeros((n_labels, channels))
    np.add.at(centroids, labels, points)
    centroids /= counts[:, None]
    # ||f - c||^2 = ||f||^2 + ||c||^2 - 2 f.c
    squared = (points**2).sum(1)[:, None] + (centroids**2).sum(1)[None, :] - 2.0 * points @ centroids.T
    squared = np.maximum(squared, 0.0)
    energy = squared - squared.max(axis=1, keepdims=True)
    return energy.reshape(height, width, n_labels).astype(np.float32)


def densecrf_refine(
    image,
    features,
    label_map,
    *,
    iterations: int = 10,
    gaussian_sxy: float = 1.0,
    gaussian_compat: float = 25.0,
    bilateral_sxy: float = 5.0,
    bilateral_srgb: float = 13.0,
    bilateral_compat: float = 100.0,
    normalize_features: bool = True,
) -> np.ndarray:
    """Refine a grid segment map at image resolution with a fully connected CRF (appendix B).

    Args:
        image: (H, W, 3) uint8 RGB, the image the features were computed from (any resolution).
        features: (h, w, C) dense DINO features.
        label_map: (h, w) int in [0, K), e.g. ``SegmentCandidates.label_map``.
        iterations: mean-field iterations (authors' code: 10).
        gaussian_sxy, gaussian_compat: location-only kernel (authors' code: 1, 25).
        bilateral_sxy, bilateral_srgb, bilateral_compat: location + RGB kernel (authors' code:
            5, 13, 100).
        normalize_features: L2-normalise the features for the unary (Amir et al.).

    Returns:
        (H, W) int64 in [0, K): each pixel's segment. Some labels may no longer occur.
    """
    image = as_numpy(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    for name, value in (
        ("gaussian_sxy", gaussian_sxy),
        ("bilateral_sxy", bilateral_sxy),
        ("bilateral_srgb", bilateral_srgb),
    ):
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if gaussian_compat < 0 or bilateral_compat < 0:
        raise ValueError("CRF compatibilities must be >= 0")
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError("DenseCRF refinement needs the 'pydensecrf2' package (pip install pydensecrf2)") from error

    height, width = image.shape[:2]
    grid_energy = centroid_distance_unary(features, label_map, normalize_features=normalize_features)
    n_labels = grid_energy.shape[2]
    if n_labels == 1:
        return np.zeros((height, width), dtype=np.int64)
    energy = upsample_nearest(grid_energy, (height, width))  # (H, W, K)
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(energy.reshape(-1, n_labels).T, dtype=np.float32))
    crf.addPairwiseGaussian(
        sxy=gaussian_sxy, compat=gaussian_compat, kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_SYMMETRIC
    )
    crf.addPairwiseBilateral(
        sxy=bilateral_sxy,
        srgb=bilateral_srgb,
        rgbim=np.array(image, dtype=np.uint8, order="C", copy=True),  # pydensecrf needs a writable buffer
        compat=bilateral_compat,
        kernel=dcrf.DIAG_KERNEL,
        normalization=dcrf.NORMALIZE_SYMMETRIC,
    )
    marginals = np.asarray(crf.inference(iterations))  # (K, H*W)
    return np.argmax(marginals, axis=0).reshape(height, width).astype(np.int64)
