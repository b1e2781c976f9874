"""Merging segment candidates up the Ward tree (zero-guidance section 3.4), with stub descriptions."""

import numpy as np
import pytest
import torch

from backend.zeroguide.clustering import SegmentTree, find_segment_candidates, masks_from_label_map
from backend.zeroguide.merging import MergedSegment, SegmentDescription, merge_score, merge_segments

# Four grid cells in a row; tree ((0, 1) -> 4, (2, 3) -> 5) -> 6.
LINKAGE = np.array([[0, 1, 1.0, 2], [2, 3, 2.0, 2], [4, 5, 3.0, 4]], dtype=float)


def small_tree() -> SegmentTree:
    return SegmentTree(LINKAGE, np.eye(4), (1, 4))


def cell_masks(cells=(0, 1, 2, 3)) -> dict[int, np.ndarray]:
    return {cell: np.arange(4).reshape(1, 4) == cell for cell in cells}


def describe_as(visual, text_embedding, text=""):
    return SegmentDescription(
        visual=torch.tensor(visual, dtype=torch.float32),
        text=text,
        text_embedding=torch.tensor(text_embedding, dtype=torch.float32),
    )


def at_angle(degrees):
    radians = np.radians(degrees)
    return [float(np.cos(radians)), float(np.sin(radians))]


class RecordingDescriber:
    """Stub for the CLIP / captioning pipeline: returns prepared descriptions, records the calls."""

    def __init__(self, by_node):
        self.by_node = by_node
        self.calls: list[tuple[int, np.ndarray]] = []

    def __call__(self, node_id, mask):
        self.calls.append((node_id, mask.copy()))
        return self.by_node[node_id]


def test_score_is_the_mean_of_visual_and_text_cosines():
    a = describe_as([1.0, 0.0], [1.0, 0.0])
    b = describe_as([3.0, 0.0], at_angle(60))  # visual cos 1, text cos 0.5
    assert merge_score(a, b) == pytest.approx(0.75)
    c = describe_as([0.0, -2.0], [-1.0, 0.0])  # visual cos 0, text cos -1
    assert merge_score(a, c) == pytest.approx(-0.5)


def test_only_similar_siblings_merge_and_the_merged_mask_is_described():
    descriptions = {
        0: describe_as([1, 0], [1, 0], "cat"),
        1: describe_as([1, 0], at_angle(30), "kitten"),  # (1 + 0.866) / 2 = 0.933 >= 0.8
        2: describe_as([1, 0], [1, 0], "sky"),
        3: describe_as([0, 1], [1, 0], "grass"),  # (0 + 1) / 2 = 0.5 < 0.8
    }
    describer = RecordingDescriber({4: describe_as([1, 0], [0, 1], "cat")})
    result = merge_segments(small_tree(), cell_masks(), descriptions, describer)

    assert [segment.node_id for segment in result.segments] == [2, 3, 4]
    assert [node for node, _ in describer.calls] == [4]
    np.testing.assert_array_equal(describer.calls[0][1], [[True, True, False, False]])
    merged = result.segments[2]
    assert merged.merge_score == pytest.approx((1 + np.cos(np.radians(30))) / 2)
    assert merged.source_ids == (0, 1) and merged.description.text == "cat"
    assert result.segments[0].merge_score is None and result.segments[0].description.text == "sky"
    # Node 6 is never eligible: its child 5 is not a segment.
    assert [(step.parent, step.merged) for step in result.steps] == [(4, True), (5, False)]


def test_merged_segments_merge_further_up_in_ascending_node_order():
    descriptions = {
        0: describe_as([1, 0], [1, 0]),
        1: describe_as([1, 0], [1, 0]),
        2: describe_as([0, 1], [0, 1]),
        3: describe_as([0, 1], at_angle(80)),  # (1 + 0.985) / 2 = 0.992
    }
    by_node = {
        4: describe_as([1, 0], [1, 0], "left"),
        5: describe_as(at_angle(30), [1, 0], "right"),  # with 4: (0.866 + 1) / 2 = 0.933
        6: describe_as([1, 1], [1, 1], "everything"),
    }
    describer = RecordingDescriber(by_node)
    result = merge_segments(small_tree(), cell_masks(), descriptions, describer)

    assert [node for node, _ in describer.calls] == [4, 5, 6]
    np.testing.assert_array_equal(describer.calls[2][1], np.ones((1, 4), bool))
    (root,) = result.segments
    assert root.node_id == 6 and root.source_ids == (0, 1, 2, 3) and root.description.text == "everything"
    assert root.merge_score == pytest.approx((np.cos(np.radians(30)) + 1) / 2)
    assert [step.parent for step in result.steps] == [4, 5, 6]


def test_threshold_is_inclusive_and_configurable():
    descriptions = {
        0: describe_as([1, 0], [1, 0]),
        1: describe_as([1, 0], at_angle(60)),  # 0.75
        2: describe_as([1, 0], [1, 0]),
        3: describe_as([0, 1], [0, 1]),  # 0.0
    }
    describer = RecordingDescriber({4: describe_as([1, 0], [1, 0])})
    strict = merge_segments(small_tree(), cell_masks(), descriptions, describer)
    assert [s.node_id for s in strict.segments] == [0, 1, 2, 3]
    loose = merge_segments(small_tree(), cell_masks(), descriptions, describer, merge_threshold=0.75 - 1e-9)
    assert [s.node_id for s in loose.segments] == [2, 3, 4]


def test_a_segment_emptied_by_the_crf_lets_its_sibling_pair_one_level_up():
    # Segment 1 has no pixel left: 0 takes the place of node 4, so 0 and 5 are siblings under 6.
    masks = {0: np.array([[True, True, False, False]]), 2: np.array([[False, False, True, False]])}
    masks[3] = ~(masks[0] | masks[2])
    descriptions = {n: describe_as([1, 0], [1, 0]) for n in (0, 2, 3)}
    describer = RecordingDescriber({5: describe_as([1, 0], [1, 0]), 6: describe_as([1, 0], [1, 0])})
    result = merge_segments(small_tree(), masks, descriptions, describer)
    assert [node for node, _ in describer.calls] == [5, 6]
    assert [(step.parent, step.left, step.right) for step in result.steps] == [(5, 2, 3), (6, 0, 5)]
    assert result.segments[0].source_ids == (0, 2, 3)


def test_bad_input_is_rejected():
    descriptions = {n: describe_as([1, 0], [1, 0]) for n in (0, 1, 2, 3)}
    with pytest.raises(ValueError, match="same node ids"):
        merge_segments(small_tree(), cell_masks(), {0: descriptions[0]}, print)
    with pytest.raises(ValueError, match="nest"):
        nested = {0: cell_masks()[0], 4: cell_masks()[1]}
        merge_segments(small_tree(), nested, {0: descriptions[0], 4: descriptions[1]}, print)
    with pytest.raises(ValueError, match="tau_merge"):
        merge_segments(small_tree(), cell_masks(), descriptions, print, merge_threshold=2.0)
    with pytest.raises(TypeError, match="SegmentDescription"):
        merge_segments(small_tree(), cell_masks(), descriptions, lambda node, mask: "a cat")


def reference_merge(tree, masks, descriptions, describe, threshold):
    """Fixed-point reference: sweep all parents in descending id order until nothing changes."""
    current = {node: (masks[node], descriptions[node]) for node in masks}
    changed = True
    while changed:
        changed = False
        for parent in range(tree.n_nodes - 1, tree.n_points - 1, -1):
            left, right = tree.children(parent)
            if left in current and right in current and parent not in current:
                if merge_score(current[left][1], current[right][1]) >= threshold:
                    mask = current[left][0] | current[right][0]
                    current[parent] = (mask, describe(parent, mask))
                    del current[left], current[right]
                    changed = True
    return current


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_merging_matches_a_fixed_point_reference_and_keeps_a_partition(seed):
    rng = np.random.default_rng(seed)
    candidates = find_segment_candidates(rng.normal(size=(8, 8, 6)), n_clusters=12, similarity_threshold=0.99)
    image_labels = np.kron(candidates.label_map, np.ones((3, 3), dtype=int))  # "upsampled" 24 x 24
    masks = masks_from_label_map(image_labels, candidates.segment_ids)

    def random_description(node):
        generator = np.random.default_rng([seed, node])
        offset = np.array([3.0, 0.0])  # mostly similar: some trees merge fully, some barely
        return describe_as(generator.normal(size=2) + offset, generator.normal(size=2) + offset, f"node {node}")

    def describe(node, mask):
        return random_description(node)

    descriptions = {node: random_description(node) for node in masks}
    result = merge_segments(candidates.tree, masks, descriptions, describe, merge_threshold=0.8)
    expected = reference_merge(candidates.tree, masks, descriptions, describe, 0.8)

    assert [s.node_id for s in result.segments] == sorted(expected)
    coverage = np.zeros((24, 24), dtype=int)
    for segment in result.segments:
        assert isinstance(segment, MergedSegment)
        np.testing.assert_array_equal(segment.mask, expected[segment.node_id][0])
        coverage += segment.mask
        assert (segment.merge_score is None) == (segment.node_id in masks)
        if segment.merge_score is not None:
            assert segment.merge_score >= 0.8
    np.testing.assert_array_equal(coverage, 1)
    parents = [step.parent for step in result.steps]
    assert parents == sorted(parents)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_batched_description_in_waves_gives_the_same_segments(seed):
    rng = np.random.default_rng(seed)
    candidates = find_segment_candidates(rng.normal(size=(8, 8, 6)), n_clusters=12, similarity_threshold=0.99)
    masks = masks_from_label_map(np.kron(candidates.label_map, np.ones((2, 2), dtype=int)), candidates.segment_ids)

    def description(node):
        generator = np.random.default_rng([seed, node])
        offset = np.array([3.0, 0.0])
        return describe_as(generator.normal(size=2) + offset, generator.normal(size=2) + offset, f"node {node}")

    batches = []

    def describe_batch(nodes, node_masks):
        batches.append(list(nodes))
        return [description(node) for node in nodes]

    descriptions = {node: description(node) for node in masks}
    one_by_one = merge_segments(candidates.tree, masks, descriptions, lambda n, m: description(n))
    waves = merge_segments(
        candidates.tree,
        masks,
        descriptions,
        lambda n, m: pytest.fail("describe_batch must be used"),
        describe_batch=describe_batch,
    )
    assert [s.node_id for s in waves.segments] == [s.node_id for s in one_by_one.segments]
    for a, b in zip(waves.segments, one_by_one.segments):
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.merge_score == b.merge_score
    assert sorted(n for batch in batches for n in batch) == sorted(s.parent for s in one_by_one.steps if s.merged)
    assert sorted((s.parent, s.merged) for s in waves.steps) == sorted((s.parent, s.merged) for s in one_by_one.steps)
