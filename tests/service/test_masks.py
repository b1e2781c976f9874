"""Brush RLE and polygon conversion on hand-made masks."""

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from backend.service.masks import mask_to_polygons, mask_to_rle, polygon_to_mask, rle_to_mask


def disc(height: int, width: int, cy: float, cx: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


@pytest.mark.parametrize("shape", [(7, 11), (240, 320), (1, 1), (33, 1)])
def test_rle_round_trip_alpha_is_255_on_foreground(shape):
    rng = np.random.default_rng(0)
    height, width = shape
    mask = disc(height, width, height / 2, width / 3, min(shape) / 3)
    mask[: min(height, 8), : min(width, 8)] = rng.random((min(height, 8), min(width, 8))) > 0.5  # noisy corner
    rle = mask_to_rle(mask)
    alpha = decode_rle(rle).reshape(height, width, 4)[:, :, 3]
    np.testing.assert_array_equal(alpha, mask.astype(np.uint8) * 255)
    np.testing.assert_array_equal(rle_to_mask(rle, height, width), mask)


def test_rle_accepts_0_1_and_0_255_masks_alike():
    mask = disc(20, 30, 10, 15, 6)
    assert mask_to_rle(mask.astype(np.uint8)) == mask_to_rle(mask) == mask_to_rle(mask.astype(np.uint8) * 255)


def test_rle_of_wrong_size_is_rejected():
    with pytest.raises(ValueError, match="expected 5x5"):
        rle_to_mask(mask_to_rle(np.ones((4, 4), bool)), 5, 5)
    with pytest.raises(ValueError, match="2-D"):
        mask_to_rle(np.ones((2, 2, 2), bool))


def test_rectangle_polygon_corners_in_percent_of_pixel_centres():
    width, height = 100, 50
    mask = np.zeros((height, width), bool)
    mask[10:20, 20:40] = True  # rows 10..19, columns 20..39
    (polygon,) = mask_to_polygons(mask, tolerance=0.0)
    # hand-worked: corner pixel centres (x + 0.5) / W * 100, (y + 0.5) / H * 100
    expected = {(20.5, 21.0), (39.5, 21.0), (39.5, 39.0), (20.5, 39.0)}
    assert {(round(x, 6), round(y, 6)) for x, y in polygon} == expected
    np.testing.assert_array_equal(polygon_to_mask(polygon, height, width), mask)


def test_two_components_give_two_polygons_largest_first():
    mask = np.zeros((60, 80), bool)
    mask[5:10, 5:10] = True  # 25 px
    mask[20:50, 30:70] = True  # 1200 px
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 2
    big = polygon_to_mask(polygons[0], 60, 80)
    small = polygon_to_mask(polygons[1], 60, 80)
    assert big.sum() == 1200 and small.sum() == 25


def test_disc_polygon_rasterises_back_to_nearly_the_same_mask():
    mask = disc(120, 160, 60, 70, 40)
    (polygon,) = mask_to_polygons(mask, tolerance=1.0)
    back = polygon_to_mask(polygon, 120, 160)
    iou = (back & mask).sum() / (back | mask).sum()
    assert iou > 0.95
    assert all(0 <= x <= 100 and 0 <= y <= 100 for x, y in polygon)


def test_holes_are_filled_and_specks_dropped():
    mask = disc(100, 100, 50, 50, 30) & ~disc(100, 100, 50, 50, 10)  # a donut
    mask[2, 2] = True  # a one-pixel speck
    polygons = mask_to_polygons(mask, tolerance=0.5, min_area=5)
    assert len(polygons) == 1
    filled = polygon_to_mask(polygons[0], 100, 100)
    assert filled[50, 50]  # the hole is inside the outer ring
    assert not filled[2, 2]


def test_min_area_counts_pixels_not_the_filled_hull():
    ring = disc(50, 50, 25, 25, 12) & ~disc(50, 50, 25, 25, 11)
    area = int(ring.sum())
    assert mask_to_polygons(ring, min_area=area) and not mask_to_polygons(ring, min_area=area + 1)


def test_empty_mask_has_no_polygons():
    assert mask_to_polygons(np.zeros((10, 10), bool)) == []


def test_one_alpha_rule_for_retraining_export_and_rating():
    """Alpha 127 is not drawn, 128 is: the service's decoder and the plugin's are one function."""
    from label_studio_sdk.converter.brush import encode_rle

    from backend.service.regions import regions_from_results
    from plugin.regions import decode_brush as plugin_decode_brush

    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3], rgba[1, 2, 3] = 1, 127, 128
    rgba[1, 1, 3] = 255
    rle = encode_rle(rgba.ravel())
    expected = np.array([[False, False, False], [False, True, True]])
    np.testing.assert_array_equal(rle_to_mask(rle, 2, 3), expected)
    np.testing.assert_array_equal(plugin_decode_brush({"format": "rle", "rle": rle}, 2, 3), expected)
    brush = {
        "id": "r",
        "from_name": "seg",
        "type": "brushlabels",
        "original_width": 3,
        "original_height": 2,
        "value": {"format": "rle", "rle": rle, "brushlabels": ["cat"]},
    }
    (region,) = regions_from_results([brush])
    np.testing.assert_array_equal(region.mask, expected)
