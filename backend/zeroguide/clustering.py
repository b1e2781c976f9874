"""Segment candidates from dense DINO features (zero-guidance segmentation, section 3.1, appendix B).

The method, in three steps:

1. **Ward tree.** Every grid position of the dense DINO feature map (h x w points of C dims,
   L2-normalised as in the authors' code) starts as its own cluster; the two clusters whose union
   adds the least within-cluster variance are merged, again and again, until a single cluster is
   left. Any two clusters may merge (no spatial connectivity), as the paper describes. Keeping the
   merge history gives a full binary tree (:class:`SegmentTree`) that section 3.4 walks again.
2. **Cut at n.** Undoing the last ``n_clusters - 1`` merges leaves ``n_clusters`` = 20 clusters.
3. **Prune at T_dino.** Inside the cut tree, the children of a node whose mean features have
   cosine similarity above ``T_dino`` = 0.9 are pruned, so that node becomes one segment
   (appendix B: "We prune the siblings whose cosine similarity score is over T_Dino"). This is
   divisive: starting from the root, a node is split into its two children only if they are
   dissimilar enough. As in the authors' code the root is always split.

All functions take numpy arrays or torch tensors and return numpy arrays; nothing here needs a
model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "SegmentCandidates",
    "SegmentTree",
    "TreeNode",
    "condensed_euclidean_distances",
    "find_segment_candidates",
    "masks_from_label_map",
    "normalize_rows",
    "prune_similar_siblings",
    "ward_linkage",
]

PairwiseDistances = Literal["matmul", "pdist"]


def as_numpy(array) -> np.ndarray:
    """A numpy view of a numpy array or a (CPU or GPU) torch tensor."""
    if hasattr(array, "detach"):  # torch.Tensor, without importing torch here
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _check_points(points) -> np.ndarray:
    points = as_numpy(points)
    if points.ndim != 2:
        raise ValueError(f"points must be a 2-D array (N, C), got shape {points.shape}")
    if points.shape[0] < 2:
        raise ValueError(f"Ward clustering needs at least 2 points, got {points.shape[0]}")
    if points.shape[1] < 1:
        raise ValueError("points must have at least one feature dimension")
    points = np.ascontiguousarray(points, dtype=np.float64)
    if not np.isfinite(points).all():
        raise ValueError("points contain NaN or infinite values")
    return points


def normalize_rows(points: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Each row divided by its L2 norm (rows of zeros stay zero)."""
    points = np.asarray(points, dtype=np.float64)
    return points / np.maximum(np.linalg.norm(points, axis=-1, keepdims=True), eps)


def condensed_euclidean_distances(points: np.ndarray, *, block_rows: int = 1024) -> np.ndarray:
    """Pairwise Euclidean distances in scipy's condensed form, computed with matrix products.

    ``||x_i - x_j||^2 = ||x_i||^2 + ||x_j||^2 - 2 x_i . x_j``: the Gram matrix goes through BLAS,
    about ten times faster than ``scipy.spatial.distance.pdist`` for C = 384, in float64.
    Rows are processed ``block_rows`` at a time so that only the condensed result (N(N-1)/2
    float64) is held in full.

    Args:
        points: (N, C) float array.
        block_rows: rows per Gram block.

    Returns:
        (N * (N - 1) / 2,) float64: entry for (i, j), i < j, at ``N*i - i*(i+1)/2 + j - i - 1``,
        as ``scipy.spatial.distance.squareform`` expects.
    """
    points = _check_points(points)
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    n = points.shape[0]
    squared_norms = np.einsum("ij,ij->i", points, points)
    condensed = np.empty(n * (n - 1) // 2, dtype=np.float64)
    position = 0
    for start in range(0, n - 1, block_rows):
        stop = min(n - 1, start + block_rows)
        gram = points[start:stop] @ points[start:].T  # (rows, n - start)
        squared = squared_norms[start:stop, None] + squared_norms[None, start:] - 2.0 * gram
        np.maximum(squared, 0.0, out=squared)  # rounding can go slightly below 0
        np.sqrt(squared, out=squared)
        for offset in range(stop - start):
            length = n - (start + offset) - 1
            condensed[position : position + length] = squared[offset, offset + 1 :]
            position += length
    return condensed


def ward_linkage(points, *, distances: PairwiseDistances = "matmul") -> np.ndarray:
    """Ward agglomerative clustering of all points to a single root (no connectivity constraint).

    Each step merges the two clusters A, B with the least increase of the total within-cluster
    sum of squares, ``Delta(A, B) = |A||B| / (|A| + |B|) * ||mu_A - mu_B||^2``.

    Args:
        points: (N, C) features, N >= 2.
        distances: ``"matmul"`` computes the pairwise distances with BLAS
            (:func:`condensed_euclidean_distances`) and hands them to scipy's Ward (nearest-neighbour
            chain); ``"pdist"`` is plain ``scipy.cluster.hierarchy.linkage(points, "ward")``, the
            reference. Both give the same tree up to float rounding of exact ties.

    Returns:
        (N - 1, 4) float64 scipy linkage matrix: row i merges nodes ``Z[i, 0]`` and ``Z[i, 1]``
        into node ``N + i`` at Ward distance ``Z[i, 2]`` (``sqrt(2 * Delta)``), size ``Z[i, 3]``.
    """
    from scipy.cluster.hierarchy import linkage

    points = _check_points(points)
    if distances == "matmul":
        return linkage(condensed_euclidean_distances(points), method="ward")
    if distances == "pdist":
        return linkage(points, method="ward")
    raise ValueError(f"distances must be 'matmul' or 'pdist', got {distances!r}")


@dataclass(frozen=True)
class TreeNode:
    """One node of a :class:`SegmentTree`.

    Attributes:
        id: node id; ``0 .. N-1`` are grid points, ``N + i`` is the i-th Ward merge, the root is
            ``2N - 2``.
        children: the two child ids, or ``()`` for a grid point.
        parent: the parent id, or ``None`` for the root.
        members: (size,) int64 flat grid indices (``row * w + col``) covered by the node, sorted.
        mean_feature: (C,) float64 mean of the members' (clustered) features.
        height: Ward merge distance at which the node was formed (0 for grid points).
    """

    id: int
    children: tuple[int, ...]
    parent: int | None
    members: np.ndarray
    mean_feature: np.ndarray
    height: float

    @property
    def size(self) -> int:
        return int(self.members.shape[0])


class SegmentTree:
    """The full binary Ward tree over the h x w feature grid.

    Node ids follow scipy: grid point ``r * w + c`` is node ``r * w + c``; linkage row i forms node
    ``N + i``; a parent's id is always larger than its children's. Members of every node are a
    contiguous range of the dendrogram's leaf order, so the tree stores O(N) numbers and member
    lists and mean features are computed on demand.

    Args:
        linkage: (N - 1, 4) scipy linkage matrix (e.g. from :func:`ward_linkage`).
        features: (N, C) the features that were clustered, for mean features.
        grid_shape: (h, w) with h * w = N.
    """

    def __init__(self, linkage, features, grid_shape: tuple[int, int]):
        linkage = as_numpy(linkage)
        features = as_numpy(features)
        height, width = (int(v) for v in grid_shape)
        n_points = height * width
        if features.ndim != 2 or features.shape[0] != n_points:
            raise ValueError(f"features must be (h*w, C) = ({n_points}, C) for grid {grid_shape}, got {features.shape}")
        if n_points < 2 or linkage.shape != (n_points - 1, 4):
            raise ValueError(f"linkage must have shape ({n_points - 1}, 4) for {n_points} points, got {linkage.shape}")
        children = linkage[:, :2].astype(np.int64)
        if children.min() < 0 or np.any(children >= n_points + np.arange(n_points - 1)[:, None]):
            raise ValueError("linkage refers to a node before it is formed")
        n_nodes = 2 * n_points - 1
        parent = np.full(n_nodes, -1, dtype=np.int64)
        parent[children[:, 0]] = n_points + np.arange(n_points - 1)
        parent[children[:, 1]] = n_points + np.arange(n_points - 1)
        if np.count_nonzero(parent == -1) != 1:
            raise ValueError("linkage is not a single binary tree (a node is merged twice or never)")

        self.grid_shape: tuple[int, int] = (height, width)
        self.n_points: int = n_points
        self.root: int = n_nodes - 1
        self._children = children
        self._parent = parent
        self._height = np.concatenate([np.zeros(n_points), linkage[:, 2].astype(np.float64)])
        self._features = np.asarray(features, dtype=np.float64)
        self._leaf_order, self._span = self._leaf_order_and_spans(children, n_points)
        self._mean_cache: dict[int, np.ndarray] = {}

    @staticmethod
    def _leaf_order_and_spans(children: np.ndarray, n_points: int) -> tuple[np.ndarray, np.ndarray]:
        """Left-to-right dendrogram leaf order, and each node's [start, stop) range in it."""
        n_nodes = 2 * n_points - 1
        size = np.ones(n_nodes, dtype=np.int64)
        for i, (left, right) in enumerate(children):
            size[n_points + i] = size[left] + size[right]
        start = np.zeros(n_nodes, dtype=np.int64)
        for i in range(n_points - 2, -1, -1):  # parents before children: left child first
            left, right = children[i]
            start[left] = start[n_points + i]
            start[right] = start[n_points + i] + size[left]
        leaf_order = np.empty(n_points, dtype=np.int64)
        leaf_order[start[:n_points]] = np.arange(n_points)
        return leaf_order, np.stack([start, start + size], axis=1)

    # -- structure -------------------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return 2 * self.n_points - 1

    def _check(self, node_id: int) -> int:
        node_id = int(node_id)
        if not 0 <= node_id < self.n_nodes:
            raise ValueError(f"node id {node_id} is outside the tree (0 .. {self.n_nodes - 1})")
        return node_id

    def is_leaf(self, node_id: int) -> bool:
        """True for a single grid point."""
        return self._check(node_id) < self.n_points

    def children(self, node_id: int) -> tuple[int, ...]:
        """The two children of a merge node, ``()`` for a grid point."""
        node_id = self._check(node_id)
        if node_id < self.n_points:
            return ()
        left, right = self._children[node_id - self.n_points]
        return int(left), int(right)

    def parent(self, node_id: int) -> int | None:
        """The parent id, ``None`` for the root."""
        parent = int(self._parent[self._check(node_id)])
        return None if parent < 0 else parent

    def sibling(self, node_id: int) -> int | None:
        """The other child of the parent, ``None`` for the root."""
        parent = self.parent(node_id)
        if parent is None:
            return None
        left, right = self.children(parent)
        return right if left == node_id else left

    def size(self, node_id: int) -> int:
        start, stop = self._span[self._check(node_id)]
        return int(stop - start)

    def height(self, node_id: int) -> float:
        """Ward distance at which the node was formed (0 for grid points)."""
        return float(self._height[self._check(node_id)])

    def members(self, node_id: int) -> np.ndarray:
        """(size,) sorted int64 flat grid indices covered by the node."""
        start, stop = self._span[self._check(node_id)]
        return np.sort(self._leaf_order[start:stop])

    def mean_feature(self, node_id: int) -> np.ndarray:
        """(C,) mean feature of the node's members (cached)."""
        node_id = self._check(node_id)
        if node_id not in self._mean_cache:
            start, stop = self._span[node_id]
            self._mean_cache[node_id] = self._features[self._leaf_order[start:stop]].mean(axis=0)
        return self._mean_cache[node_id]

    def node(self, node_id: int) -> TreeNode:
        """A read-only record of one node."""
        return TreeNode(
            id=self._check(node_id),
            children=self.children(node_id),
            parent=self.parent(node_id),
            members=self.members(node_id),
            mean_feature=self.mean_feature(node_id),
            height=self.height(node_id),
        )

    def mask(self, node_id: int) -> np.ndarray:
        """(h, w) bool grid mask of the node's members."""
        mask = np.zeros(self.n_points, dtype=bool)
        mask[self.members(node_id)] = True
        return mask.reshape(self.grid_shape)

    # -- cutting -----------------------------------------------------------------------------
    def cut(self, n_clusters: int) -> tuple[int, ...]:
        """The ``n_clusters`` clusters left after the first ``N - n_clusters`` Ward merges.

        Returns:
            ascending node ids; their members partition the grid.
        """
        if not 1 <= n_clusters <= self.n_points:
            raise ValueError(f"n_clusters must be in [1, {self.n_points}] (grid points), got {n_clusters}")
        first_undone = 2 * self.n_points - n_clusters  # nodes with id >= this are undone merges
        parents = self._parent[:first_undone]
        clusters = np.nonzero((parents >= first_undone) | (parents < 0))[0]
        return tuple(int(c) for c in clusters)

    def label_map(self, segment_ids) -> np.ndarray:
        """(h, w) int64 map: cell -> index into ``segment_ids``.

        Raises:
            ValueError: if the segments do not partition the grid.
        """
        labels = np.full(self.n_points, -1, dtype=np.int64)
        for index, node_id in enumerate(segment_ids):
            members = self.members(node_id)
            if np.any(labels[members] >= 0):
                raise ValueError(f"segment {node_id} overlaps another segment")
            labels[members] = index
        if np.any(labels < 0):
            raise ValueError("segments do not cover the whole grid")
        return labels.reshape(self.grid_shape)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm > 0 else 0.0


def prune_similar_siblings(
    tree: SegmentTree,
    cluster_ids,
    *,
    similarity_threshold: float = 0.9,
    always_split_root: bool = True,
) -> tuple[int, ...]:
    """Merge the clusters of a cut whose sibling subtrees have similar mean DINO features.

    Appendix B: "Each node in the tree is represented by the average feature of its members. We
    prune the siblings whose cosine similarity score is over T_Dino = 0.9." Walking down from the
    root through the cut tree, a node becomes a segment when it is one of ``cluster_ids`` or when
    ``cos(mean(child_1), mean(child_2)) > similarity_threshold``; otherwise both children are
    visited. A pruned node takes all clusters below it, whatever their own similarities.

    Args:
        tree: the Ward tree.
        cluster_ids: node ids that partition the grid (e.g. ``tree.cut(20)``).
        similarity_threshold: T_dino (appendix B), in [-1, 1].
        always_split_root: the authors' code always splits the root, so at least two segments
            come out whenever there are two clusters.

    Returns:
        ascending node ids of the segments; they partition the grid.
    """
    if not -1.0 <= similarity_threshold <= 1.0:
        raise ValueError(f"similarity_threshold (T_dino) must be in [-1, 1], got {similarity_threshold}")
    clusters = {int(c) for c in cluster_ids}
    if not clusters:
        raise ValueError("cluster_ids is empty")
    if sum(tree.size(c) for c in clusters) != tree.n_points:
        raise ValueError("cluster_ids do not partition the grid (sizes do not add up to h*w)")
    segments: list[int] = []
    stack = [tree.root]
    while stack:
        node = stack.pop()
        if node in clusters:
            segments.append(node)
            continue
        children = tree.children(node)
        if not children:
            raise ValueError(f"grid point {node} is not covered by cluster_ids")
        if not (node == tree.root and always_split_root):
            similarity = _cosine(tree.mean_feature(children[0]), tree.mean_feature(children[1]))
            if similarity > similarity_threshold:  # siblings too similar: prune them
                segments.append(node)
                continue
        stack.extend(children)
    segments.sort()
    tree.label_map(segments)  # raises unless the segments partition the grid
    return tuple(segments)


@dataclass(frozen=True)
class SegmentCandidates:
    """Output of section 3.1.

    Attributes:
        tree: the full Ward tree (to the root), which merging (section 3.4) walks.
        cluster_ids: the ``n_clusters`` clusters of the cut, ascending node ids.
        segment_ids: the segments after pruning at T_dino, ascending node ids.
        label_map: (h, w) int64, grid cell -> index into ``segment_ids``.
    """

    tree: SegmentTree
    cluster_ids: tuple[int, ...]
    segment_ids: tuple[int, ...]
    label_map: np.ndarray

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self.tree.grid_shape


def find_segment_candidates(
    features,
    *,
    n_clusters: int = 20,
    similarity_threshold: float = 0.9,
    normalize_features: bool = True,
    always_split_root: bool = True,
    distances: PairwiseDistances = "matmul",
) -> SegmentCandidates:
    """Section 3.1: Ward tree over dense DINO features, cut at n, pruned at T_dino.

    Args:
        features: (h, w, C) dense DINO key features (numpy or torch).
        n_clusters: n, the clusters of the cut (section 3.1: n = 20).
        similarity_threshold: T_dino (appendix B: 0.9).
        normalize_features: L2-normalise each feature before clustering, as the authors' code
            (and Amir et al.) do; mean features and the CRF then use the normalised features.
        always_split_root: see :func:`prune_similar_siblings`.
        distances: see :func:`ward_linkage`.

    Returns:
        :class:`SegmentCandidates`.
    """
    features = as_numpy(features)
    if features.ndim != 3:
        raise ValueError(f"features must be (h, w, C), got shape {features.shape}")
    height, width, _ = features.shape
    if n_clusters < 1 or n_clusters > height * width:
        raise ValueError(f"n_clusters must be in [1, {height * width}] (grid cells), got {n_clusters}")
    points = _check_points(features.reshape(height * width, -1))
    if normalize_features:
        points = normalize_rows(points)
    tree = SegmentTree(ward_linkage(points, distances=distances), points, (height, width))
    clusters = tree.cut(n_clusters)
    segments = prune_similar_siblings(
        tree, clusters, similarity_threshold=similarity_threshold, always_split_root=always_split_root
    )
    return SegmentCandidates(tree=tree, cluster_ids=clusters, segment_ids=segments, label_map=tree.label_map(segments))


def masks_from_label_map(label_map, segment_ids) -> dict[int, np.ndarray]:
    """Boolean masks of the segments that still own a pixel.

    Args:
        label_map: (H, W) int, pixel -> index into ``segment_ids`` (e.g. after CRF).
        segment_ids: node ids, one per label.

    Returns:
        ``{node_id: (H, W) bool}`` in the order of ``segment_ids``; a segment with no pixel left
        (the CRF can empty one) is left out. The masks partition the image.
    """
    label_map = as_numpy(label_map)
    segment_ids = [int(s) for s in segment_ids]
    if label_map.ndim != 2:
        raise ValueError(f"label_map must be 2-D (H, W), got shape {label_map.shape}")
    if label_map.size and (label_map.min() < 0 or label_map.max() >= len(segment_ids)):
        raise ValueError(f"label_map values must index segment_ids (0 .. {len(segment_ids) - 1})")
    masks = {}
    for index, node_id in enumerate(segment_ids):
        mask = label_map == index
        if mask.any():
            masks[node_id] = mask
    return masks
