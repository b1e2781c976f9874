"""COCO RLE, image reading guards, overlays."""

import numpy as np
import pytest
from PIL import Image

from backend.outputs import ImageReadError, decode_rle, draw_overlay, encode_rle, read_image


def test_rle_hand_worked():
    mask = np.array([[0, 1], [1, 1]], dtype=bool)
    # column-major: 0, 1, 1, 1 -> one 0 then three 1s
    assert encode_rle(mask) == {"size": [2, 2], "counts": [1, 3]}
    starts_with_one = np.array([[1, 0], [1, 0]], dtype=bool)
    assert encode_rle(starts_with_one)["counts"] == [0, 2, 2]


def test_rle_round_trip():
    mask = np.random.RandomState(0).rand(31, 17) > 0.6
    assert np.array_equal(decode_rle(encode_rle(mask)), mask)
    assert np.array_equal(decode_rle(encode_rle(np.zeros((3, 4), bool))), np.zeros((3, 4), bool))


def test_read_image_applies_exif_orientation(tmp_path):
    pixels = np.zeros((10, 20, 3), dtype=np.uint8)
    pixels[:, :10] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    loaded = read_image(tmp_path / "rotated.jpg")
    assert loaded.shape == (20, 10, 3)


def test_read_image_errors(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ImageReadError, match="not a readable image"):
        read_image(tmp_path / "bad.png")
    Image.new("RGB", (300, 300)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="exceeds the limit"):
        read_image(tmp_path / "big.png", max_pixels=1000)


def test_overlay_colours_masks():
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    mask = np.zeros((40, 60), dtype=bool)
    mask[5:35, 5:30] = True
    overlay = np.asarray(draw_overlay(image, [mask, ~mask], ["a", "b"], banner="tiny"))
    assert overlay.shape == (40, 60, 3)
    assert overlay[20, 10].sum() > 0 and overlay[20, 50].sum() > 0
