"""The rating picture: the highlighted region must stand out on any background, in its own colours.

Visibility is measured, not judged by eye: WCAG 2.1's relative luminance and contrast ratio
(1:1 for equal colours up to 21:1 for black on white; 3:1 is WCAG's minimum for the parts of a
graphic needed to understand it, 4.5:1 its minimum for text). The *boundary contrast* of a
highlight is the lowest contrast between a pixel the highlight marks (the region and whatever
is drawn around it) and a 4-neighbour it leaves as background: where it is near 1:1 the
highlight's edge vanishes. The issue's cases are checked: a green region on green (the old
50 % green tint and 1-px green outline left only the line, and on green that too) and red
objects (the tint turned them olive).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from plugin.rating.render import (
    DIM_FACTOR,
    OUTLINE_INNER_RGB,
    OUTLINE_OUTER_RGB,
    PANEL_GAP_PX,
    highlight_segment,
    outline_width,
    rating_image,
)


# ----------------------------------------------------------------------------- measurement
def luminance(rgb: np.ndarray) -> np.ndarray:
    """WCAG 2.1 relative luminance of sRGB uint8 colours (``(..., 3)`` -> ``(...)``)."""
    channel = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(channel <= 0.04045, channel / 12.92, ((channel + 0.055) / 1.055) ** 2.4)
    return linear @ np.array([0.2126, 0.7152, 0.0722])


def contrast(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """WCAG contrast ratio (1 to 21) of two colours (or arrays of colours)."""
    a, b = luminance(first), luminance(second)
    return (np.maximum(a, b) + 0.05) / (np.minimum(a, b) + 0.05)


def boundary_contrast(rendered: np.ndarray, marked: np.ndarray) -> float:
    """The lowest contrast across the edge of ``marked`` (the pixels the highlight draws on or
    keeps as the region) to its 4-neighbours outside it, in ``rendered``."""
    lowest = math.inf
    for axis in (0, 1):
        for shift in (1, -1):
            neighbour_marked = np.roll(marked, shift, axis=axis)
            neighbour = np.roll(rendered, shift, axis=axis)
            edge = marked & ~neighbour_marked
            # np.roll wraps around: drop the first/last row or column it brought in
            index = [slice(None), slice(None)]
            index[axis] = slice(0, 1) if shift == 1 else slice(-1, None)
            edge[tuple(index)] = False
            if edge.any():
                lowest = min(lowest, float(contrast(rendered[edge], neighbour[edge]).min()))
    return lowest


def old_green_highlight(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The highlight this replaced: 50 % green tint inside, a 1-px pure green outline on the mask's border."""
    out = image.copy()
    out[mask] = np.floor(0.5 * image[mask] + 0.5 * np.array([0, 255, 0]) + 0.5).astype(np.uint8)
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    out[mask & ~inner] = (0, 255, 0)
    return out


# ------------------------------------------------------------------------------ test scenes
SIZE = 120


def disc(size: int = SIZE) -> np.ndarray:
    rows, cols = np.mgrid[0:size, 0:size]
    return (rows - size / 2) ** 2 + (cols - size / 2) ** 2 <= (size / 4) ** 2


def scene(background, region) -> tuple[np.ndarray, np.ndarray]:
    """A uniform ``background`` with a disc of colour ``region``, and the disc's mask."""
    mask = disc()
    image = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    image[:] = background
    image[mask] = region
    return image, mask


GREEN, DARK_GREEN, RED, WHITE, BLACK, GREY = (0, 255, 0), (40, 150, 50), (200, 30, 30), (255,) * 3, (0,) * 3, (128,) * 3
SCENES = {
    "green region on the same green": (GREEN, GREEN),
    "grass-green region on grass": (DARK_GREEN, DARK_GREEN),
    "red object on green": (DARK_GREEN, RED),
    "red object on red": (RED, RED),
    "white on white": (WHITE, WHITE),
    "black on black": (BLACK, BLACK),
    "grey on white": (WHITE, GREY),
    "white on black": (BLACK, WHITE),
}


def marked_pixels(mask: np.ndarray) -> np.ndarray:
    """The region and its outline: every pixel within two band widths of the mask."""
    from scipy import ndimage

    return ndimage.distance_transform_edt(~mask) <= 2 * outline_width(mask.shape)


# ----------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", sorted(SCENES))
def test_the_highlight_edge_stands_out_on_any_background(name):
    image, mask = scene(*SCENES[name])
    rendered = highlight_segment(image, mask)
    # the white band against the dimmed surroundings: at least 4.5:1 whatever their colour
    assert boundary_contrast(rendered, marked_pixels(mask)) >= 4.5
    # and the two bands against each other
    assert contrast(np.array(OUTLINE_INNER_RGB), np.array(OUTLINE_OUTER_RGB)) == pytest.approx(21.0)


def test_the_old_green_highlight_fails_the_same_check_on_green():
    """The measure sees the issue's defect: on green, the old highlight's edge vanishes."""
    image, mask = scene(*SCENES["green region on the same green"])
    assert boundary_contrast(old_green_highlight(image, mask), mask) == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(SCENES))
def test_the_region_keeps_its_colours_and_the_rest_is_dimmed(name):
    image, mask = scene(*SCENES[name])
    rendered = highlight_segment(image, mask)
    np.testing.assert_array_equal(rendered[mask], image[mask])  # a red object stays red, not olive
    away = ~marked_pixels(mask)
    expected = np.floor(image[away].astype(np.float64) * DIM_FACTOR + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(rendered[away], expected)


def test_the_old_tint_turned_red_olive():
    image, mask = scene(*SCENES["red object on green"])
    tinted = old_green_highlight(image, mask)[SIZE // 2, SIZE // 2]
    assert tuple(tinted) == (100, 143, 15)  # olive: what the issue saw


SAME_COLOUR = ["green region on the same green", "grass-green region on grass", "red object on red", "white on white"]


@pytest.mark.parametrize("name", SAME_COLOUR)
def test_a_region_of_its_surroundings_colour_stands_out_as_a_whole(name):
    """Where region and surroundings have one colour (the tint's worst case) dimming sets the
    region apart by at least 2.5:1, where the old tint managed at most 1.8:1. (Black stays black,
    and a dark region on a bright background can match the dimmed background: there the
    outline, checked above on every background, shows the region.)"""
    image, mask = scene(*SCENES[name])
    away = ~marked_pixels(mask)
    rendered = highlight_segment(image, mask)
    assert contrast(rendered[mask].mean(axis=0), rendered[away].mean(axis=0)) >= 2.5
    old = old_green_highlight(image, mask)
    assert contrast(old[mask].mean(axis=0), old[away].mean(axis=0)) < 1.8


def test_outline_is_two_bands_of_the_stated_width_outside_the_region():
    image, mask = scene(GREY, GREY)
    width = outline_width(mask.shape)
    assert width == 2  # max(2, round(120 / 60))
    rendered = highlight_segment(image, mask)
    row = SIZE // 2
    first = int(np.argmax(mask[row]))  # the region's leftmost pixel on the middle row
    assert [tuple(rendered[row, first - k]) for k in range(1, 2 * width + 2)] == (
        [OUTLINE_INNER_RGB] * width + [OUTLINE_OUTER_RGB] * width + [(45, 45, 45)]  # 128 * 0.35 = 44.8
    )
    assert outline_width((375, 500)) == 6 and outline_width((64, 96)) == 2


def reference_segmented(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pixel by pixel, independently of the implementation: inside the mask the image; outside,
    by the Euclidean distance d to the nearest mask pixel: d <= w black, d <= 2w white, else the
    pixel times 0.35 rounded half up (w = max(2, round(min(H, W) / 60)))."""
    height, width = mask.shape
    band = max(2, round(min(height, width) / 60))
    inside = np.argwhere(mask)
    out = np.empty_like(image)
    for y in range(height):
        for x in range(width):
            if mask[y, x]:
                out[y, x] = image[y, x]
                continue
            distance = np.sqrt(((inside - (y, x)) ** 2).sum(axis=1)).min() if len(inside) else np.inf
            if distance <= band:
                out[y, x] = (0, 0, 0)
            elif distance <= 2 * band:
                out[y, x] = (255, 255, 255)
            else:
                out[y, x] = [math.floor(int(value) * 0.35 + 0.5) for value in image[y, x]]
    return out


def test_highlight_matches_the_reference_on_noise():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(23, 31, 3), dtype=np.uint8)
    mask = np.zeros((23, 31), dtype=bool)
    mask[5:12, 8:20] = True
    mask[12:16, 14:17] = True
    mask[0:3, 0:4] = True  # touching the image's corner
    np.testing.assert_array_equal(highlight_segment(image, mask), reference_segmented(image, mask))


def test_rating_image_is_input_then_segmented():
    image, mask = scene(RED, DARK_GREEN)
    panels = rating_image(image, mask)
    assert panels.shape == (SIZE, 2 * SIZE + PANEL_GAP_PX, 3)
    np.testing.assert_array_equal(panels[:, :SIZE], image)
    assert (panels[:, SIZE : SIZE + PANEL_GAP_PX] == 255).all()
    np.testing.assert_array_equal(panels[:, SIZE + PANEL_GAP_PX :], highlight_segment(image, mask))


def test_highlight_refuses_mismatched_mask():
    with pytest.raises(ValueError, match="does not match"):
        highlight_segment(np.zeros((4, 4, 3), np.uint8), np.zeros((3, 4), bool))
