import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle

from plugin.errors import PluginError
from plugin.regions import Region, decode_brush, rating_of, regions_from_result
from plugin.schema import LabelingSchema

H, W = 6, 8


def brush(region_id, mask, control="segment", labels=("segment",)):
    return {
        "id": region_id,
        "from_name": control,
        "to_name": "image",
        "type": "brushlabels",
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": list(labels)},
    }


def text(region_id, *texts):
    return {
        "id": region_id,
        "from_name": "caption",
        "to_name": "image",
        "type": "textarea",
        "value": {"text": list(texts)},
    }


def choice(region_id, *choices):
    return {
        "id": region_id,
        "from_name": "rating",
        "to_name": "image",
        "type": "choices",
        "value": {"choices": list(choices)},
    }


def box(top, left, bottom, right):
    mask = np.zeros((H, W), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


@pytest.fixture
def schema(label_config):
    return LabelingSchema.from_config(label_config)


def test_regions_keep_masks_and_their_per_region_answers(schema):
    first, second = box(0, 0, 3, 4), box(2, 5, 6, 8)
    result = [
        brush("a", first),
        text("a", "a red roof"),
        choice("a", "2"),
        brush("b", second, control="class_mask", labels=("sky",)),
        text("b", "sky", "clouds"),
    ]
    regions = regions_from_result(result, schema)
    assert [region.id for region in regions] == ["a", "b"]
    np.testing.assert_array_equal(regions[0].mask, first)
    np.testing.assert_array_equal(regions[1].mask, second)
    assert regions[0].texts == {"caption": ["a red roof"]}
    assert regions[0].choices == {"rating": ["2"]}
    assert (regions[1].control, regions[1].labels) == ("class_mask", ["sky"])
    assert regions[1].texts == {"caption": ["sky", "clouds"]}
    assert regions[1].choices == {}


def test_answers_before_their_brush_and_orphans(schema):
    regions = regions_from_result([text("a", "late"), brush("a", box(0, 0, 2, 2)), text("zz", "no region")], schema)
    assert len(regions) == 1
    assert regions[0].texts == {"caption": ["late"]}


def test_two_brush_results_with_one_id_are_merged(schema):
    regions = regions_from_result(
        [brush("a", box(0, 0, 2, 2)), brush("a", box(4, 4, 6, 8), labels=("segment", "other"))], schema
    )
    assert len(regions) == 1
    np.testing.assert_array_equal(regions[0].mask, box(0, 0, 2, 2) | box(4, 4, 6, 8))
    assert regions[0].labels == ["segment", "other"]


def test_unknown_controls_are_ignored(schema):
    other = {"id": "a", "from_name": "elsewhere", "type": "textarea", "value": {"text": ["x"]}}
    assert regions_from_result([other], schema) == []


def test_alpha_one_masks_are_invisible_hence_empty():
    mask = box(1, 1, 4, 4).astype(np.uint8)  # 0/1 values: what a common mistake sends
    value = {"format": "rle", "rle": mask2rle(mask)}
    assert not decode_brush(value, H, W).any()
    value = {"format": "rle", "rle": mask2rle(mask * 255)}
    np.testing.assert_array_equal(decode_brush(value, H, W), box(1, 1, 4, 4))


def test_decode_brush_rejects_wrong_sizes_and_formats():
    value = {"format": "rle", "rle": mask2rle(np.zeros((H, W), dtype=np.uint8))}
    with pytest.raises(PluginError, match=f"expected 7x{W}"):
        decode_brush(value, 7, W)
    with pytest.raises(PluginError, match="'polygon' is not supported"):
        decode_brush({"format": "polygon"}, H, W)


@pytest.mark.parametrize("choices, expected", [(["3"], 3), ([], None), (["1", "2"], None), (["good"], None)])
def test_rating_of(choices, expected):
    region = Region(id="r", control="segment", labels=[], mask=np.zeros((1, 1), bool), choices={"rating": choices})
    assert rating_of(region, "rating") == expected
