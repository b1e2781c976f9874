"""Colours for zero-guidance segments: the tag's labels are a palette, and touching segments differ.

Label Studio colours a brush region by its label's ``background``. With one label (``segment``)
every zero-guidance segment has the same colour and the boundaries between segments vanish. A
zero-guidance tag may therefore list several labels, all meaning "a zero-guidance segment"
(``label_config.xml``: ``segment``, ``segment 2``, ... ``segment 8``, each its own colour); the
backend gives each segment one of them so that segments that touch get different colours
whenever the palette allows it. The text, not the label, says what a segment is: exports put
every label of a zero-guidance tag in one category, its first label (plugin/formats.py).

Greedy colouring in the order of the segments (best first): each takes, among the palette entries
the fewest of its already coloured neighbours have (none, whenever one is left), the entry used
least so far, the lowest index on a tie. So up to the palette's size every segment has its own
colour, and beyond it touching segments still differ when they can. Two segments touch when a
pixel of one is a 4-neighbour of a pixel of the other (or they overlap).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def touching_pairs(masks: Sequence[np.ndarray]) -> set[tuple[int, int]]:
    """``(i, j)`` with ``i < j`` for every two masks that touch or overlap (all of one shape)."""
    if not masks:
        return set()
    shape = masks[0].shape
    owner = np.full(shape, -1, dtype=np.int32)  # the last mask that covers each pixel
    pairs: set[tuple[int, int]] = set()
    for index, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != shape:
            raise ValueError(f"masks differ in shape: {mask.shape} and {shape}")
        pairs.update((int(other), index) for other in np.unique(owner[mask]) if other >= 0)
        owner[mask] = index
    for a, b in ((owner[:, :-1], owner[:, 1:]), (owner[:-1, :], owner[1:, :])):  # horizontal, vertical
        differ = (a != b) & (a >= 0) & (b >= 0)
        for i, j in np.unique(np.stack([a[differ], b[differ]], axis=1), axis=0) if differ.any() else ():
            pairs.add((int(min(i, j)), int(max(i, j))))
    return pairs


def palette_indices(masks: Sequence[np.ndarray], palette_size: int) -> list[int]:
    """A palette index per mask, in order; touching masks differ when ``palette_size`` allows."""
    if palette_size < 1:
        raise ValueError(f"palette_size must be >= 1, got {palette_size}")
    neighbours: dict[int, set[int]] = {index: set() for index in range(len(masks))}
    if palette_size > 1:
        for i, j in touching_pairs(masks):
            neighbours[i].add(j)
            neighbours[j].add(i)
    colours: list[int] = []
    used = [0] * palette_size  # segments of each colour so far
    for index in range(len(masks)):
        by_neighbours = [0] * palette_size
        for other in neighbours[index]:
            if other < index:
                by_neighbours[colours[other]] += 1
        colour = min(range(palette_size), key=lambda entry: (by_neighbours[entry], used[entry], entry))
        colours.append(colour)
        used[colour] += 1
    return colours
