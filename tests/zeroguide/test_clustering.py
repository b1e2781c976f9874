"""Segment candidates (zero-guidance section 3.1, appendix B): Ward tree, cut, pruning at T_dino."""

import itertools

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist

from backend.zeroguide.clustering import (
    SegmentTree,
    condensed_euclidean_distances,
    find_segment_candidates,
    masks_from_label_map,
    normalize_rows,
    prune_similar_siblings,
    ward_linkage,
)


def greedy_ward_partitions(points: np.ndarray) -> dict[int, set[frozenset[int]]]:
    """Plain loop reference: merge the pair with least added variance; record every level.

    Added variance of merging A and B: SSE(A u B) - SSE(A) - SSE(B), computed from scratch.
    """

    def sse(members):
        block = points[sorted(members)]
        return float(((block - block.mean(0)) ** 2).sum())

    clusters = [frozenset([i]) for i in range(len(points))]
    levels = {len(clusters): set(clusters)}
    while len(clusters) > 1:
        best = min(
            itertools.combinations(range(len(clusters)), 2),
            key=lambda ij: sse(clusters[ij[0]] | clusters[ij[1]]) - sse(clusters[ij[0]]) - sse(clusters[ij[1]]),
        )
        merged = clusters[best[0]] | clusters[best[1]]
        clusters = [c for k, c in enumerate(clusters) if k not in best] + [merged]
        levels[len(clusters)] = set(clusters)
    return levels


def partition_of(tree: SegmentTree, node_ids) -> set[frozenset[int]]:
    return {frozenset(tree.members(node).tolist()) for node in node_ids}


def groups_on_grid(directions, counts, grid_shape, seed=0, noise=1e-3):
    """Unit features: ``counts[g]`` noisy copies of ``directions[g]``, scattered over the grid."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(labels)  # groups are not spatially contiguous: Ward must not need connectivity
    directions = normalize_rows(np.asarray(directions, dtype=np.float64))
    features = directions[labels] + noise * rng.normal(size=(labels.size, directions.shape[1]))
    return normalize_rows(features).reshape(*grid_shape, -1), labels


def unit(azimuth_degrees, elevation_degrees):
    """A 3-D unit vector: angle in the x-y plane, then elevation towards z."""
    azimuth, elevation = np.radians([azimuth_degrees, elevation_degrees])
    return np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])


# -- Ward linkage ------------------------------------------------------------------------------


def test_condensed_distances_equal_pdist():
    points = np.random.default_rng(1).normal(size=(57, 9))
    for block_rows in (1, 7, 1024):
        np.testing.assert_allclose(
            condensed_euclidean_distances(points, block_rows=block_rows), pdist(points), rtol=1e-10, atol=1e-12
        )


def test_two_singletons_and_two_pairs_have_hand_worked_ward_heights():
    # a = {0, 1} 1 apart, b = {2, 3} 1 apart, centroids 5 apart.
    points = np.array([[0.0, 0.0], [0.0, 1.0], [5.0, 0.0], [5.0, 1.0]])
    tree = SegmentTree(ward_linkage(points), points, (2, 2))
    first, second, root = 4, 5, 6
    assert {tree.children(first), tree.children(second)} == {(0, 1), (2, 3)}
    assert set(tree.children(root)) == {first, second}
    # height = sqrt(2 * Delta), Delta = |A||B| / (|A|+|B|) * ||mu_A - mu_B||^2
    assert tree.height(first) == pytest.approx(np.sqrt(2 * 0.5 * 1.0))
    assert tree.height(root) == pytest.approx(np.sqrt(2 * (2 * 2 / 4) * 25.0))


@pytest.mark.parametrize("distances", ["matmul", "pdist"])
def test_every_level_of_the_tree_matches_a_greedy_ward_loop(distances):
    points = np.random.default_rng(2).normal(size=(24, 5))
    tree = SegmentTree(ward_linkage(points, distances=distances), points, (4, 6))
    reference = greedy_ward_partitions(points)
    for n_clusters in range(1, 25):
        assert partition_of(tree, tree.cut(n_clusters)) == reference[n_clusters], n_clusters


def test_matmul_and_scipy_reference_give_the_same_tree():
    rng = np.random.default_rng(3)
    for _ in range(5):
        points = normalize_rows(rng.normal(size=(int(rng.integers(10, 200)), 32)))
        fast, reference = ward_linkage(points), ward_linkage(points, distances="pdist")
        np.testing.assert_array_equal(fast[:, [0, 1, 3]], reference[:, [0, 1, 3]])
        np.testing.assert_allclose(fast[:, 2], reference[:, 2], rtol=1e-9)


def test_ward_linkage_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        ward_linkage(np.zeros(5))
    with pytest.raises(ValueError, match="at least 2"):
        ward_linkage(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        ward_linkage(np.array([[0.0, np.nan], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="distances"):
        ward_linkage(np.zeros((3, 2)), distances="cosine")


# -- SegmentTree -------------------------------------------------------------------------------


def test_tree_nodes_are_consistent():
    rng = np.random.default_rng(4)
    points = rng.normal(size=(30, 4))
    tree = SegmentTree(ward_linkage(points), points, (5, 6))
    assert tree.root == 58 and tree.parent(tree.root) is None
    np.testing.assert_array_equal(tree.members(tree.root), np.arange(30))
    for node in range(tree.n_nodes):
        record = tree.node(node)
        np.testing.assert_allclose(record.mean_feature, points[record.members].mean(0))
        if node < 30:
            assert record.children == () and record.members.tolist() == [node]
            continue
        left, right = record.children
        assert tree.parent(left) == tree.parent(right) == node
        assert tree.sibling(left) == right and tree.sibling(right) == left
        assert sorted(tree.members(left).tolist() + tree.members(right).tolist()) == record.members.tolist()
        assert record.size == tree.size(left) + tree.size(right)
    np.testing.assert_array_equal(tree.mask(5), np.arange(30).reshape(5, 6) == 5)


def test_cut_matches_scipy_maxclust():
    points = np.random.default_rng(5).normal(size=(80, 6))
    z = linkage(points, method="ward")
    tree = SegmentTree(z, points, (8, 10))
    for n_clusters in (1, 2, 7, 20, 80):
        clusters = tree.cut(n_clusters)
        assert len(clusters) == n_clusters
        scipy_labels = fcluster(z, n_clusters, criterion="maxclust")
        expected = {frozenset(np.nonzero(scipy_labels == k)[0].tolist()) for k in np.unique(scipy_labels)}
        assert partition_of(tree, clusters) == expected
    with pytest.raises(ValueError, match="n_clusters"):
        tree.cut(81)


def test_label_map_rejects_overlap_and_gaps():
    points = np.random.default_rng(6).normal(size=(6, 2))
    tree = SegmentTree(ward_linkage(points), points, (2, 3))
    with pytest.raises(ValueError, match="overlaps"):
        tree.label_map([tree.root, 0])
    with pytest.raises(ValueError, match="cover"):
        tree.label_map([0, 1])


# -- Pruning at T_dino -------------------------------------------------------------------------

# Groups A1, A2 (30 degrees apart, cos 0.866 < 0.9) of 4 points each, B of 48 points 20 degrees
# above the A1-A2 bisector (cos(mean(A1 u A2), B) = cos 20 = 0.940 > 0.9), C far away.
# Ward costs |X||Y| / (|X|+|Y|) * d^2: A1+A2 = 2 * (2 - 2 cos 30) = 0.536 is cheaper than
# A1+B = (4 * 48 / 52) * (2 - 2 cos 15 cos 20) = 0.682, so the tree is (((A1, A2), B), C).
A1, A2, B, C = unit(-15, 0), unit(15, 0), unit(0, 20), normalize_rows(np.array([-1.0, 0.0, -1.0]))
GROUP_COUNTS = (4, 4, 48, 4)


def test_ward_cut_recovers_the_hand_made_groups_without_spatial_contiguity():
    features, labels = groups_on_grid([A1, A2, B, C], GROUP_COUNTS, (6, 10))
    candidates = find_segment_candidates(features, n_clusters=4, similarity_threshold=1.0)
    expected = {frozenset(np.nonzero(labels == g)[0].tolist()) for g in range(4)}
    assert partition_of(candidates.tree, candidates.cluster_ids) == expected
    assert candidates.segment_ids == candidates.cluster_ids  # nothing is more similar than 1


def test_pruning_merges_the_subtree_whose_children_are_similar():
    features, labels = groups_on_grid([A1, A2, B, C], GROUP_COUNTS, (6, 10))
    candidates = find_segment_candidates(features, n_clusters=4, similarity_threshold=0.9)
    tree = candidates.tree
    # Hand-worked cosine of the group means (noise 1e-3 moves it by ~1e-4).
    assert np.dot(normalize_rows(A1 + A2), B) == pytest.approx(np.cos(np.radians(20)))
    a12_b = {frozenset(np.nonzero(np.isin(labels, [0, 1, 2]))[0].tolist())}
    # A1 and A2 are dissimilar (0.866), but their parent's sibling test (0.940 > 0.9) prunes the whole
    # A1-A2-B subtree into one segment; the root is always split, so C stays apart.
    expected = a12_b | {frozenset(np.nonzero(labels == 3)[0].tolist())}
    assert partition_of(tree, candidates.segment_ids) == expected
    # With T_dino above cos 20 degrees, B stays apart from A1 u A2, and A1, A2 stay apart.
    finer = find_segment_candidates(features, n_clusters=4, similarity_threshold=0.95)
    assert len(finer.segment_ids) == 4


def test_root_split_is_optional():
    features, _ = groups_on_grid([unit(0, 0), unit(10, 0)], (10, 10), (4, 5))  # cos 0.985
    always = find_segment_candidates(features, n_clusters=2)
    assert len(always.segment_ids) == 2
    never = find_segment_candidates(features, n_clusters=2, always_split_root=False)
    assert never.segment_ids == (never.tree.root,)
    np.testing.assert_array_equal(never.label_map, np.zeros((4, 5)))


def test_prune_walks_hand_made_means_top_down():
    # Four points on a line, tree ((0, 1), (2, 3)); pruning looks at means only.
    points = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [1.0, 1.0]])
    z = np.array([[0, 1, 0.1, 2], [2, 3, 1.0, 2], [4, 5, 2.0, 4]], dtype=float)
    tree = SegmentTree(z, points, (1, 4))
    # cos((1,0),(1,0.1)) = 0.995 > 0.9: {0,1} -> node 4; cos((0,1),(1,1)) = 0.707: 2 and 3 stay.
    assert prune_similar_siblings(tree, (0, 1, 2, 3), similarity_threshold=0.9) == (2, 3, 4)
    assert prune_similar_siblings(tree, (0, 1, 2, 3), similarity_threshold=0.999) == (0, 1, 2, 3)
    assert prune_similar_siblings(tree, (0, 1, 5), similarity_threshold=0.9) == (4, 5)
    with pytest.raises(ValueError, match="partition"):
        prune_similar_siblings(tree, (0, 1), similarity_threshold=0.9)
    with pytest.raises(ValueError, match="T_dino"):
        prune_similar_siblings(tree, (0, 1, 2, 3), similarity_threshold=1.5)


# -- Partition property ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_segments_partition_the_grid_for_random_features(seed):
    rng = np.random.default_rng(seed)
    features = torch.from_numpy(rng.normal(size=(9, 11, 16)).astype(np.float32))
    candidates = find_segment_candidates(features, similarity_threshold=0.2)
    label_map = candidates.label_map
    assert label_map.shape == (9, 11)
    assert set(np.unique(label_map).tolist()) == set(range(len(candidates.segment_ids)))
    coverage = np.zeros((9, 11), dtype=int)
    for node in candidates.segment_ids:
        coverage += candidates.tree.mask(node)
    np.testing.assert_array_equal(coverage, 1)
    assert len(candidates.segment_ids) <= 20


def test_find_segment_candidates_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(h, w, C\)"):
        find_segment_candidates(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="n_clusters"):
        find_segment_candidates(np.random.default_rng(0).normal(size=(2, 2, 3)), n_clusters=5)


def test_masks_from_label_map_drops_empty_segments():
    label_map = np.array([[0, 0, 2], [2, 2, 0]])
    masks = masks_from_label_map(label_map, [10, 11, 12])
    assert list(masks) == [10, 12]
    np.testing.assert_array_equal(masks[10] ^ masks[12], np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="index"):
        masks_from_label_map(label_map, [10, 11])
