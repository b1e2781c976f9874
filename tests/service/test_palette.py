"""Segment colours: which masks touch, and the greedy palette colouring, on hand-drawn masks."""

import numpy as np
import pytest

from backend.service.palette import palette_indices, touching_pairs


def strips(count: int, width: int = 2, height: int = 4) -> list[np.ndarray]:
    """``count`` vertical strips side by side: strip i touches strips i-1 and i+1 only."""
    masks = []
    for index in range(count):
        mask = np.zeros((height, width * count), bool)
        mask[:, index * width : (index + 1) * width] = True
        masks.append(mask)
    return masks


def test_strips_touch_their_neighbours_only():
    assert touching_pairs(strips(4)) == {(0, 1), (1, 2), (2, 3)}


def test_diagonal_contact_is_not_touching_but_overlap_is():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True
    b[2:, 2:] = True  # meets a only at a corner
    assert touching_pairs([a, b]) == set()
    c = np.zeros((4, 4), bool)
    c[1:3, 1:3] = True  # overlaps both
    assert touching_pairs([a, b, c]) == {(0, 2), (1, 2)}


def test_up_to_the_palette_size_every_segment_has_its_own_colour():
    assert palette_indices(strips(5), 8) == [0, 1, 2, 3, 4]
    apart = [m for m in strips(7)[::2]]  # strips 0, 2, 4, 6: none touch
    assert palette_indices(apart, 8) == [0, 1, 2, 3]


def test_beyond_the_palette_touching_segments_still_differ():
    # Worked by hand, palette of 2, five strips in a row: 0 takes 0; 1 touches 0 -> 1; 2 touches
    # 1 (colour 1) -> 0; 3 touches 2 (colour 0) -> 1; 4 -> 0.
    assert palette_indices(strips(5), 2) == [0, 1, 0, 1, 0]
    # Palette of 3, five strips: 0->0, 1->1 (new), 2: neighbour 1 has 1, least used of {0, 2} is 2
    # (used 0 times) -> 2; 3: neighbour has 2, uses 0:1 1:1 -> 0; 4: neighbour has 0 -> 1.
    assert palette_indices(strips(5), 3) == [0, 1, 2, 0, 1]


def test_when_every_colour_is_a_neighbours_the_least_shared_one_wins():
    # A centre square touched by four arms, palette of 2: arms 0..3 first (none touch each other)
    # get 0, 1, 0, 1; the centre touches two of each colour: a tie, broken by overall use
    # (2 and 2), then by index -> 0.
    centre = np.zeros((9, 9), bool)
    centre[3:6, 3:6] = True
    arms = [np.zeros((9, 9), bool) for _ in range(4)]
    arms[0][0:3, 3:6] = True
    arms[1][6:9, 3:6] = True
    arms[2][3:6, 0:3] = True
    arms[3][3:6, 6:9] = True
    assert palette_indices([*arms, centre], 2) == [0, 1, 0, 1, 0]
    # Three colours: the arms spread over all three (0, 1, 2, 0: least used first), so the centre
    # shares with the fewest arms: colour 1 or 2 (one arm each; 0 has two), 1 by index.
    assert palette_indices([*arms, centre], 3) == [0, 1, 2, 0, 1]


def test_one_colour_and_bad_input():
    assert palette_indices(strips(3), 1) == [0, 0, 0]
    assert palette_indices([], 4) == []
    with pytest.raises(ValueError, match="palette_size"):
        palette_indices(strips(2), 0)
    with pytest.raises(ValueError, match="differ in shape"):
        touching_pairs([np.zeros((2, 2), bool), np.zeros((3, 3), bool)])
