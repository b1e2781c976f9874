"""Merging segment candidates up the Ward tree (zero-guidance segmentation, section 3.4).

"We compute the similarity score between two segments using the average of two measures: 1. the
cosine similarity between their visual embeddings and 2. the cosine similarity between their
predicted texts' embeddings [...] We limit the pairing to only be between siblings in this tree
and recursively merge segments up the tree when their similarity score is at least tau_merge.
The final embedding of a merged segment is computed by passing the corresponding merged mask
through the embedding pipeline and is then used to generate the final predicted text."

The walk:

- The current segments are an antichain of the Ward tree (no segment inside another). The tree is
  looked at *restricted to the current segments*: a node whose subtree holds no segment (a segment
  the CRF emptied) is removed and a node left with one child is replaced by that child. Without a
  dropped segment this is the plain tree above the segments.
- A pair is eligible when the two children of a node P are both current segments. Eligible pairs
  are decided in ascending id of P (the order in which Ward formed them, bottom-up). If
  ``score >= tau_merge`` the two segments are replaced by P, whose mask is the union of theirs and
  whose description comes from ``describe(P, mask)``; P may then pair with its own sibling.
- Each pair is decided once; the result does not depend on the order, only the calls do.
- A final segment records ``merge_score``: the score of the merge that formed it, or ``None`` when
  it is an input segment that never merged.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .clustering import SegmentTree

__all__ = ["MergeResult", "MergeStep", "MergedSegment", "SegmentDescription", "merge_score", "merge_segments"]


@dataclass(frozen=True)
class SegmentDescription:
    """What section 3.4 compares for one segment.

    Attributes:
        visual: (D,) the segment's CLIP visual embedding (section 3.2).
        text: the text generated for it (section 3.3).
        text_embedding: (D,) CLIP text embedding of ``text``.
    """

    visual: torch.Tensor
    text: str
    text_embedding: torch.Tensor


@dataclass(frozen=True)
class MergedSegment:
    """One final segment.

    Attributes:
        node_id: its node in the Ward tree.
        mask: (H, W) bool.
        description: its (re-)description.
        merge_score: score of the merge that formed it; ``None`` if it is an input segment.
        source_ids: the input segments it covers, ascending.
    """

    node_id: int
    mask: np.ndarray
    description: SegmentDescription
    merge_score: float | None
    source_ids: tuple[int, ...]


@dataclass(frozen=True)
class MergeStep:
    """One decided sibling pair: ``left`` and ``right`` are children of ``parent``."""

    parent: int
    left: int
    right: int
    score: float
    merged: bool


@dataclass(frozen=True)
class MergeResult:
    """Final segments (ascending node id) and every decision in the order it was taken."""

    segments: list[MergedSegment]
    steps: list[MergeStep]


def merge_score(a: SegmentDescription, b: SegmentDescription) -> float:
    """Section 3.4: score = (cos(visual_a, visual_b) + cos(text_a, text_b)) / 2."""
    visual = F.cosine_similarity(a.visual.reshape(-1).double(), b.visual.reshape(-1).double(), dim=0)
    text = F.cosine_similarity(a.text_embedding.reshape(-1).double(), b.text_embedding.reshape(-1).double(), dim=0)
    return float((visual + text) / 2)


def _restricted_structure(
    tree: SegmentTree, segment_ids: list[int]
) -> tuple[dict[int, tuple[int, int]], dict[int, int]]:
    """The tree restricted to the segments: binary nodes above them, with children and parents.

    Returns:
        ``children``: restricted node -> (left, right) restricted children (segments or nodes);
        ``parent``: segment or restricted node -> its restricted parent (absent for the top).
    """
    segments = set(segment_ids)
    above: set[int] = set()  # strict ancestors of segments
    for segment in segment_ids:
        node = tree.parent(segment)
        while node is not None and node not in above:
            if node in segments:
                raise ValueError(f"segment {node} contains segment {segment}: segments must not nest")
            above.add(node)
            node = tree.parent(node)
    representative: dict[int, int | None] = {segment: segment for segment in segments}
    children: dict[int, tuple[int, int]] = {}
    parent: dict[int, int] = {}
    for node in sorted(above):  # children have smaller ids than parents
        left, right = (representative.get(child) for child in tree.children(node))
        if left is not None and right is not None:
            children[node] = (left, right)
            parent[left] = parent[right] = node
            representative[node] = node
        else:
            representative[node] = left if left is not None else right
    return children, parent


def merge_segments(
    tree: SegmentTree,
    masks: Mapping[int, np.ndarray],
    descriptions: Mapping[int, SegmentDescription],
    describe: Callable[[int, np.ndarray], SegmentDescription],
    *,
    merge_threshold: float = 0.8,
    describe_batch: Callable[[list[int], list[np.ndarray]], list[SegmentDescription]] | None = None,
) -> MergeResult:
    """Section 3.4: merge sibling segments up the Ward tree while their score >= tau_merge.

    Args:
        tree: the Ward tree the segments come from (:class:`~backend.zeroguide.clustering.SegmentTree`).
        masks: ``{node_id: (H, W) bool}`` of the current segments (e.g. after CRF; segments it
            emptied are simply absent).
        descriptions: ``{node_id: SegmentDescription}`` for the same node ids.
        describe: ``describe(node_id, mask) -> SegmentDescription`` for a merged segment; called
            once per accepted merge, in ascending ``node_id``.
        merge_threshold: tau_merge (appendix E: 0.8).
        describe_batch: optional ``describe_batch(node_ids, masks) -> descriptions`` that
            describes several merged segments at once (one batched CLIP pass). With it, pairs are
            decided in waves: every pair whose two children are final is decided, the accepted
            merges of the wave are described together, and their parents form the next wave.
            Each pair is still decided once, from its children's final descriptions, so the
            segments are the same as with one-at-a-time ``describe``; only the order of
            ``steps`` (wave by wave, ascending within a wave) differs.

    Returns:
        :class:`MergeResult`; its segments' masks are unions of input masks, so a partition of the
        image stays a partition.
    """
    if not -1.0 <= merge_threshold <= 1.0:
        raise ValueError(f"merge_threshold (tau_merge) must be in [-1, 1], got {merge_threshold}")
    segment_ids = sorted(int(node) for node in masks)
    if not segment_ids:
        raise ValueError("masks is empty: nothing to merge")
    if set(segment_ids) != {int(node) for node in descriptions}:
        raise ValueError("masks and descriptions must have the same node ids")
    shapes = {np.shape(masks[node]) for node in segment_ids}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"masks must all be (H, W) arrays of one shape, got shapes {sorted(shapes)}")
    for node in segment_ids:
        tree.children(node)  # raises for an id outside the tree

    children, parent = _restricted_structure(tree, segment_ids)
    current: dict[int, MergedSegment] = {
        node: MergedSegment(
            node_id=node,
            mask=np.asarray(masks[node], dtype=bool),
            description=descriptions[node],
            merge_score=None,
            source_ids=(node,),
        )
        for node in segment_ids
    }

    def eligible(node: int) -> bool:
        left, right = children[node]
        return left in current and right in current

    def decide(node: int) -> tuple[MergeStep, MergedSegment, MergedSegment]:
        left, right = children[node]
        a, b = current[left], current[right]
        # Section 3.4: score = mean(cos(visual_a, visual_b), cos(text_a, text_b)) >= tau_merge
        score = merge_score(a.description, b.description)
        step = MergeStep(parent=node, left=left, right=right, score=score, merged=score >= merge_threshold)
        steps.append(step)
        return step, a, b

    def accept(step: MergeStep, a: MergedSegment, b: MergedSegment, mask: np.ndarray, description) -> int | None:
        if not isinstance(description, SegmentDescription):
            raise TypeError(f"describe() must return a SegmentDescription, got {type(description).__name__}")
        current[step.parent] = MergedSegment(
            node_id=step.parent,
            mask=mask,
            description=description,
            merge_score=step.score,
            source_ids=tuple(sorted(a.source_ids + b.source_ids)),
        )
        del current[step.left], current[step.right]
        up = parent.get(step.parent)
        return up if up is not None and eligible(up) else None

    steps: list[MergeStep] = []
    pending = sorted(node for node in children if eligible(node))
    if describe_batch is None:
        heapq.heapify(pending)
        while pending:
            step, a, b = decide(heapq.heappop(pending))
            if step.merged:
                mask = a.mask | b.mask
                up = accept(step, a, b, mask, describe(step.parent, mask))
                if up is not None:
                    heapq.heappush(pending, up)
    else:
        while pending:
            accepted = [(step, a, b, a.mask | b.mask) for step, a, b in map(decide, pending) if step.merged]
            descriptions_now = (
                describe_batch([step.parent for step, *_ in accepted], [m for *_, m in accepted]) if accepted else []
            )
            if len(descriptions_now) != len(accepted):
                raise ValueError(
                    f"describe_batch returned {len(descriptions_now)} descriptions for {len(accepted)} masks"
                )
            ups = [accept(step, a, b, mask, d) for (step, a, b, mask), d in zip(accepted, descriptions_now)]
            pending = sorted(up for up in ups if up is not None)
    return MergeResult(segments=[current[node] for node in sorted(current)], steps=steps)
