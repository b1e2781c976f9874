"""Label config -> adapters: mode selection, tag options, region shapes, id linking, reporting."""

from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.label_interface import LabelInterface

from backend.service.adapters import (
    ClassBrushAdapter,
    ClassPolygonAdapter,
    LabelConfigError,
    ZeroGuidanceBrushAdapter,
    ZeroGuidancePolygonAdapter,
    control_mode,
    detect_adapters,
)
from backend.service.images import LoadedImage
from backend.service.masks import polygon_to_mask, rle_to_mask
from backend.service.runtime import ModelRuntime
from backend.fmbseg.results import ClassMaskPrediction
from backend.zeroguide.results import ZeroGuidanceResult

from .conftest import FakeMethods, fake_segment, load_recorded, sample_image

REPO = Path(__file__).resolve().parents[2]
RECORDED_CONFIG = load_recorded("setup.json")["body"]["schema"]


def adapters_for(config_xml, service_config, methods=None):
    runtime = ModelRuntime(service_config, methods or FakeMethods())
    return detect_adapters(LabelInterface(config_xml), service_config, runtime), runtime


def view(*tags):
    return '<View><Image name="image" value="$image"/>' + "".join(tags) + "</View>"


def loaded(width=32, height=24):
    return LoadedImage(sample_image(width, height), width, height, source="test.png")


def test_recorded_config_one_zero_guidance_and_one_class_tag(config):
    adapters, _ = adapters_for(RECORDED_CONFIG, config)
    assert [type(a) for a in adapters] == [ZeroGuidanceBrushAdapter, ClassBrushAdapter]
    zero_guidance, classes = adapters
    assert zero_guidance.from_name == "segment" and zero_guidance.text_area.name == "caption"
    assert zero_guidance.image_key == "image" and zero_guidance.to_name == "image"
    assert classes.classes == ["cat", "sky"]


def test_repository_label_config_parses_and_selects_both_methods(config):
    xml = (REPO / "label_config.xml").read_text()
    interface = LabelInterface(xml)
    interface.validate()  # schema, unique names, toName targets
    adapters, _ = adapters_for(xml, config)
    by_name = {a.from_name: a for a in adapters}
    assert isinstance(by_name["segment"], ZeroGuidanceBrushAdapter)
    assert by_name["segment"].text_area.name == "caption"
    assert isinstance(by_name["class_mask"], ClassBrushAdapter)
    assert len(by_name["class_mask"].classes) >= 3
    rating = interface.get_control("rating")
    assert rating.labels == ["0", "1", "2", "3"] and rating.attr["perRegion"] == "true"
    # the segment colours: a palette of distinct colours, every one rated and captioned, texts in the Regions list
    palette = by_name["segment"].palette
    assert len(palette) >= 6 and palette[0] == "segment"
    colours = [by_name["segment"].control.labels_attrs[label].attr["background"].lower() for label in palette]
    assert len(set(colours)) == len(colours)
    assert rating.attr["whenLabelValue"].split(",") == list(palette)
    assert interface.get_control("caption").attr["displayMode"] == "region-list"


@pytest.mark.parametrize(
    "tags, expected",
    [
        # one label + per-region TextArea: zero-guidance
        (
            [
                '<BrushLabels name="b" toName="image"><Label value="s"/></BrushLabels>',
                '<TextArea name="t" toName="image" perRegion="true"/>',
            ],
            "zero-guidance",
        ),
        # no per-region TextArea: classes, even with one label
        (
            [
                '<BrushLabels name="b" toName="image"><Label value="s"/></BrushLabels>',
                '<TextArea name="t" toName="image"/>',
            ],
            "classes",
        ),
        # several labels: classes
        (
            [
                '<BrushLabels name="b" toName="image"><Label value="a"/><Label value="c"/></BrushLabels>',
                '<TextArea name="t" toName="image" perRegion="true"/>',
            ],
            "classes",
        ),
        # the attribute wins
        (
            [
                '<BrushLabels name="b" toName="image" model_mode="zero-guidance"><Label value="a"/><Label value="c"/>'
                "</BrushLabels>"
            ],
            "zero-guidance",
        ),
        (
            [
                '<BrushLabels name="b" toName="image" model_mode="classes"><Label value="s"/></BrushLabels>',
                '<TextArea name="t" toName="image" perRegion="true"/>',
            ],
            "classes",
        ),
        (['<BrushLabels name="b" toName="image" model_mode=" Classes "><Label value="s"/></BrushLabels>'], "classes"),
    ],
)
def test_control_mode_rules(tags, expected):
    interface = LabelInterface(view(*tags))
    assert control_mode(interface.get_control("b"), interface) == expected


@pytest.mark.parametrize("mode", ["magic", "fmbseg", "zero_guidance"])
def test_bad_model_mode_is_a_config_error(config, mode):
    """One spelling of each mode: "zero-guidance" and "classes"."""
    xml = view(f'<BrushLabels name="b" toName="image" model_mode="{mode}"><Label value="s"/></BrushLabels>')
    with pytest.raises(LabelConfigError, match='model_mode must be "zero-guidance" or "classes"'):
        adapters_for(xml, config)


def test_polygon_tags_and_skips(config):
    xml = view(
        '<PolygonLabels name="p" toName="image"><Label value="cat"/><Label value="dog" model_skip="true"/></PolygonLabels>',
        '<PolygonLabels name="z" toName="image" model_mode="zero-guidance"><Label value="thing"/></PolygonLabels>',
        '<BrushLabels name="skipped" toName="image" model_skip="true"><Label value="x"/></BrushLabels>',
        '<RectangleLabels name="r" toName="image" smart="true"><Label value="box"/></RectangleLabels>',
        '<KeyPointLabels name="k" toName="image" smart="true"><Label value="click"/></KeyPointLabels>',
    )
    adapters, _ = adapters_for(xml, config)
    assert [type(a) for a in adapters] == [ClassPolygonAdapter, ZeroGuidancePolygonAdapter]  # smart tools: prompts
    assert adapters[0].classes == ["cat"]  # dog has model_skip


def test_tag_options_override_environment_defaults(config):
    env_defaults = config.replace(
        score_threshold=0.5,
        max_regions=7,
        fmbseg_refine=False,
        zeroguide_settings={"n_clusters": 5, "merge_threshold": 0.7},
    )
    xml = view(
        '<BrushLabels name="z" toName="image" model_mode="zero-guidance" model_score_threshold="0.25"'
        ' model_settings=\'{"n_clusters": 9}\'><Label value="s"/></BrushLabels>',
        '<BrushLabels name="c" toName="image" model_refine="true"><Label value="a"/><Label value="b"/></BrushLabels>',
    )
    zero_guidance, classes = adapters_for(xml, env_defaults)[0]
    assert zero_guidance.score_threshold == 0.25 and zero_guidance.max_regions == 7
    assert (zero_guidance.settings.n_clusters, zero_guidance.settings.merge_threshold) == (9, 0.7)
    assert zero_guidance.settings.dino_stride == 6  # the cpu preset's, under the environment's and the tag's
    assert classes.score_threshold == 0.5 and classes.refine is True


@pytest.mark.parametrize(
    "attribute, message",
    [
        ('model_score_threshold="high"', "must be a number"),
        ('model_score_threshold="1.5"', r"must be in \[0.0, 1.0\]"),
        ('model_max_regions="2.5"', "must be an integer"),
        ('model_skip="perhaps"', "must be true/false"),
        ("model_settings='[1, 2]'", "must be a JSON object"),
        ('model_label="other"', "not one of its labels"),
        ('model_text_area="nothing"', 'no <TextArea name="nothing"'),
    ],
)
def test_bad_tag_options_are_config_errors_naming_the_tag(config, attribute, message):
    xml = view(
        f'<BrushLabels name="z" toName="image" model_mode="zero-guidance" {attribute}><Label value="s"/></BrushLabels>',
        '<TextArea name="t" toName="image" perRegion="true"/>',
    )
    with pytest.raises(LabelConfigError, match=message) as error:
        adapters_for(xml, config)
    assert 'name="z"' in str(error.value)


def test_zero_guidance_regions_link_text_by_id_and_carry_scores(config):
    adapters, runtime = adapters_for(RECORDED_CONFIG, config)
    runtime.start_loading()
    results = adapters[0].predict_regions(loaded(), cache={})
    brushes = [r for r in results if r["type"] == "brushlabels"]
    texts = [r for r in results if r["type"] == "textarea"]
    assert len(brushes) == len(texts) == 2
    assert [b["id"] for b in brushes] == [t["id"] for t in texts]  # each text follows its brush
    assert len({b["id"] for b in brushes}) == 2
    first = brushes[0]  # the fake's left half, score 0.9, comes first
    assert first["score"] == 0.9 and texts[0]["value"] == {"text": ["a left half"]}
    assert first["value"]["brushlabels"] == ["segment"] and first["value"]["format"] == "rle"
    mask = rle_to_mask(first["value"]["rle"], 24, 32)
    assert mask[:, :16].all() and not mask[:, 16:].any()
    for result in results:
        assert (result["original_width"], result["original_height"], result["image_rotation"]) == (32, 24, 0)
        assert result["to_name"] == "image"
    assert {t["from_name"] for t in texts} == {"caption"}


def test_zero_guidance_threshold_and_max_regions(config):
    xml = RECORDED_CONFIG.replace(
        '<BrushLabels name="segment" toName="image">',
        '<BrushLabels name="segment" toName="image" model_score_threshold="0.5">',
    )
    adapters, runtime = adapters_for(xml, config)
    assert len([r for r in adapters[0].predict_regions(loaded(), {}) if r["type"] == "brushlabels"]) == 1
    adapters, runtime = adapters_for(RECORDED_CONFIG, config.replace(max_regions=1))
    assert len([r for r in adapters[0].predict_regions(loaded(), {}) if r["type"] == "brushlabels"]) == 1


def test_class_masks_are_exactly_the_labels(config):
    adapters, runtime = adapters_for(RECORDED_CONFIG, config)
    results = adapters[1].predict_regions(loaded(32, 24), {})
    assert [r["value"]["brushlabels"] for r in results] == [["cat"], ["sky"]]
    cat = rle_to_mask(results[0]["value"]["rle"], 24, 32)
    assert cat[:12].all() and not cat[12:].any()  # the fake's first band
    assert all("score" not in r for r in results)  # the fake gives no per-class score
    assert runtime.methods.predictors[0].calls == [(("cat", "sky"), None, False)]  # refine: the method's default


def test_label_prompts_and_unsupported_labels_are_reported(config):
    xml = view(
        '<BrushLabels name="c" toName="image">'
        '<Label value="Cat" model_prompt="a cat"/>'
        '<Label value="unknown blob"/>'
        '<Label value="Kitty" model_prompt="a cat"/>'
        '<Label value="Dog" predicted_values="dog,puppy"/>'
        "</BrushLabels>"
    )
    (adapter,), runtime = adapters_for(xml, config)
    assert adapter.classes == ["a cat", "unknown blob", "dog"]
    assert "Kitty" in adapter.unsupported and "already used" in adapter.unsupported["Kitty"]
    results = adapter.predict_regions(loaded(), {})
    assert [r["value"]["brushlabels"][0] for r in results] == ["Cat", "Dog"]
    assert adapter.unsupported["unknown blob"] == "the model returned no prediction for it"
    assert any('label "unknown blob" is not predicted' in p for p in adapter.problems)


def test_polygon_regions_one_per_component(config):
    xml = view('<PolygonLabels name="p" toName="image"><Label value="a"/><Label value="b"/></PolygonLabels>')
    (adapter,), _ = adapters_for(xml, config)
    results = adapter.predict_regions(loaded(40, 20), {})
    assert [r["value"]["polygonlabels"] for r in results] == [["a"], ["b"]]
    assert all(r["type"] == "polygonlabels" and r["value"]["closed"] for r in results)
    top = polygon_to_mask(results[0]["value"]["points"], 20, 40)
    assert top[:10].all() and not top[10:].any()


def test_zero_guidance_polygons_repeat_the_text_per_component(config):
    class TwoBlobs(FakeMethods):
        def zero_guidance(self, models, settings):
            segmenter = super().zero_guidance(models, settings)

            def segment(image):
                mask = np.zeros(image.shape[:2], bool)
                mask[2:6, 2:6] = mask[10:20, 20:30] = True
                return ZeroGuidanceResult(
                    [fake_segment(mask, "blobs", 0.7, 1)], mask.shape, settings, "v", "tiny", True
                )

            segmenter.segment = segment
            return segmenter

    xml = view(
        '<PolygonLabels name="z" toName="image" model_mode="zero-guidance"><Label value="thing"/></PolygonLabels>',
        '<TextArea name="t" toName="image" perRegion="true"/>',
    )
    (adapter,), _ = adapters_for(xml, config, TwoBlobs())
    results = adapter.predict_regions(loaded(32, 24), {})
    polygons = [r for r in results if r["type"] == "polygonlabels"]
    texts = [r for r in results if r["type"] == "textarea"]
    assert len(polygons) == 2 and [p["id"] for p in polygons] == [t["id"] for t in texts]
    assert all(t["value"]["text"] == ["blobs"] for t in texts)


def test_masks_come_back_at_the_original_size(config):
    adapters, _ = adapters_for(RECORDED_CONFIG, config)
    small = LoadedImage(sample_image(16, 12), original_width=64, original_height=48, source="big.png")
    result = adapters[0].predict_regions(small, {})[0]
    assert (result["original_width"], result["original_height"]) == (64, 48)
    mask = rle_to_mask(result["value"]["rle"], 48, 64)
    assert mask[:, :32].all() and not mask[:, 32:].any()


def test_text_area_conditions(config):
    xml = view(
        '<BrushLabels name="z" toName="image" model_mode="zero-guidance"><Label value="s"/></BrushLabels>',
        '<TextArea name="other" toName="image" perRegion="true" whenTagName="elsewhere"/>',
        '<TextArea name="wrong_label" toName="image" perRegion="true" whenLabelValue="x"/>',
        '<TextArea name="right" toName="image" perRegion="true" whenLabelValue="s"/>',
    )
    (adapter,), _ = adapters_for(xml, config)
    assert adapter.text_area.name == "right"


def test_a_trained_checkpoint_decides_the_vocabulary(config):
    xml = view('<BrushLabels name="c" toName="image"><Label value="cat"/><Label value="sky"/></BrushLabels>')
    (adapter,), runtime = adapters_for(xml, config, FakeMethods(trained=["dog", "cat"]))
    results = adapter.predict_regions(loaded(), {})
    assert runtime.methods.predictors[0].calls == [(("dog", "cat"), None, False)]  # the checkpoint's classes
    assert [r["value"]["brushlabels"] for r in results] == [["cat"]]
    assert "alignment checkpoint was trained for ['cat', 'dog']" in adapter.unsupported["sky"]
    assert 'model_open_vocabulary="true"' in adapter.unsupported["sky"]


def test_open_vocabulary_predicts_labels_outside_the_checkpoint(config):
    xml = view(
        '<BrushLabels name="c" toName="image" model_open_vocabulary="true" model_refine="false">'
        '<Label value="cat"/><Label value="sky"/></BrushLabels>'
    )
    (adapter,), runtime = adapters_for(xml, config, FakeMethods(trained=["dog", "cat"]))
    results = adapter.predict_regions(loaded(), {})
    assert runtime.methods.predictors[0].calls == [(("cat", "sky"), False, True)]
    assert [r["value"]["brushlabels"] for r in results] == [["cat"], ["sky"]] and not adapter.unsupported


@pytest.mark.parametrize(
    "label_attributes, tag_attributes, expected_texts",
    [
        ("", "", ["a left half", "a right half"]),  # text scores 0.9 and 0.4: both, best first
        ('model_score_threshold="0.5"', "", ["a left half"]),  # the label's threshold drops 0.4
        ('model_score_threshold="0.5"', 'model_score_threshold="0.95"', ["a left half"]),  # the label wins
        ("", 'model_score_threshold="0.95"', []),
        ('model_max_regions="1"', "", ["a left half"]),
    ],
)
def test_a_labels_own_threshold_and_cap_win_over_the_tags(config, label_attributes, tag_attributes, expected_texts):
    xml = view(
        f'<BrushLabels name="z" toName="image" model_mode="zero-guidance" {tag_attributes}>'
        f'<Label value="s" {label_attributes}/></BrushLabels>',
        '<TextArea name="t" toName="image" perRegion="true"/>',
    )
    (adapter,), _ = adapters_for(xml, config)
    results = adapter.predict_regions(loaded(), {})
    assert [r["value"]["text"][0] for r in results if r["type"] == "textarea"] == expected_texts


def test_a_labels_region_cap_keeps_the_largest_polygons(config):
    class TwoBlobsForCat(FakeMethods):
        def fmbseg(self, models, settings, checkpoint):
            predictor = super().fmbseg(models, settings, checkpoint)

            def predict(image, classes, refine=None, open_vocabulary=False):
                label_map = np.full(image.shape[:2], -1)
                label_map[1:4, 1:4] = 0  # 9 pixels
                label_map[10:20, 10:20] = 0  # 100 pixels
                return ClassMaskPrediction(label_map, list(classes), "stage1", "v", True)

            predictor.predict = predict
            return predictor

    xml = view('<PolygonLabels name="p" toName="image"><Label value="cat" model_max_regions="1"/></PolygonLabels>')
    (adapter,), _ = adapters_for(xml, config, TwoBlobsForCat())
    (region,) = adapter.predict_regions(loaded(32, 24), {})
    assert polygon_to_mask(region["value"]["points"], 24, 32)[10:20, 10:20].all()


def test_a_bad_label_option_names_the_label(config):
    xml = view('<BrushLabels name="c" toName="image"><Label value="cat" model_score_threshold="high"/></BrushLabels>')
    with pytest.raises(LabelConfigError, match='<Label value="cat" model_score_threshold=...> must be a number'):
        adapters_for(xml, config)


def test_mask_to_boxes_by_hand():
    from backend.service.masks import mask_to_boxes

    mask = np.zeros((10, 20), bool)
    mask[2:4, 5:9] = True  # 8 pixels: columns 5-8, rows 2-3
    mask[6:10, 0:10] = True  # 40 pixels
    big, small = mask_to_boxes(mask)
    assert big == {"x": 0.0, "y": 60.0, "width": 50.0, "height": 40.0, "rotation": 0}
    assert small == {"x": 25.0, "y": 20.0, "width": 20.0, "height": 20.0, "rotation": 0}
    assert mask_to_boxes(mask, min_area=9) == [big]


def test_class_masks_and_named_segments_also_come_as_boxes(config):
    """A RectangleLabels beside the mask tags: boxes for the classes, and for the segments with
    their text under the box's region id; one FMbSeg and one zero-guidance call a task."""
    xml = view(
        '<BrushLabels name="classes" toName="image"><Label value="cat"/><Label value="sky"/></BrushLabels>',
        '<RectangleLabels name="class_boxes" toName="image"><Label value="cat"/><Label value="sky"/></RectangleLabels>',
        '<BrushLabels name="z" toName="image" model_mode="zero-guidance"><Label value="thing"/></BrushLabels>',
        '<RectangleLabels name="z_boxes" toName="image" model_mode="zero-guidance"><Label value="thing"/></RectangleLabels>',
        '<TextArea name="t" toName="image" perRegion="true"/>',
    )
    methods = FakeMethods()
    adapters, _ = adapters_for(xml, config, methods)
    cache: dict = {}
    by_name = {a.from_name: a.predict_regions(loaded(32, 24), cache) for a in adapters}
    cat, sky = by_name["class_boxes"]
    assert cat["value"] == {
        "x": 0.0,
        "y": 0.0,
        "width": 100.0,
        "height": 50.0,
        "rotation": 0,
        "rectanglelabels": ["cat"],
    }
    assert sky["value"]["y"] == 50.0 and sky["type"] == "rectanglelabels"
    boxes = [r for r in by_name["z_boxes"] if r["type"] == "rectanglelabels"]
    texts = {r["id"]: r["value"]["text"][0] for r in by_name["z_boxes"] if r["type"] == "textarea"}
    assert [texts[b["id"]] for b in boxes] == ["a left half", "a right half"]
    assert boxes[0]["value"]["width"] == 50.0 and boxes[0]["score"] == 0.9
    assert len(methods.predictors[-1].calls) == 1 and methods.segmenters[-1].calls == 1


class FourStrips(FakeMethods):
    """Zero-guidance stand-in: four vertical strips side by side, best first from the left."""

    def zero_guidance(self, models, settings):
        segmenter = super().zero_guidance(models, settings)

        def segment(image):
            height, width = image.shape[:2]
            segments = []
            for index in range(4):
                mask = np.zeros((height, width), bool)
                mask[:, index * width // 4 : (index + 1) * width // 4] = True
                segments.append(fake_segment(mask, f"strip {index}", 0.9 - 0.1 * index, index))
            return ZeroGuidanceResult(segments, (height, width), settings, "v", "tiny", True)

        segmenter.segment = segment
        return segmenter


PALETTE_XML = view(
    '<BrushLabels name="z" toName="image" model_mode="zero-guidance" {extra}>'
    '<Label value="segment"/><Label value="segment 2"/><Label value="segment 3"/></BrushLabels>',
    '<TextArea name="t" toName="image" perRegion="true" displayMode="region-list"'
    ' whenLabelValue="segment,segment 2,segment 3"/>',
)


def test_zero_guidance_labels_are_a_palette_touching_segments_differ(config):
    (adapter,), _ = adapters_for(PALETTE_XML.format(extra=""), config, FourStrips())
    assert adapter.palette == ("segment", "segment 2", "segment 3") and adapter.label == "segment"
    assert adapter.text_area.name == "t"  # whenLabelValue lists the whole palette
    results = adapter.predict_regions(loaded(32, 24), {})
    brushes = [r for r in results if r["type"] == "brushlabels"]
    # strips 0..3 in a row, three colours: each its least used free colour (tests/service/test_palette.py)
    assert [b["value"]["brushlabels"] for b in brushes] == [["segment"], ["segment 2"], ["segment 3"], ["segment"]]
    texts = {r["id"]: r["value"]["text"] for r in results if r["type"] == "textarea"}
    assert [texts[b["id"]] for b in brushes] == [["strip 0"], ["strip 1"], ["strip 2"], ["strip 3"]]


def test_model_label_names_one_label_for_every_segment(config):
    (adapter,), _ = adapters_for(PALETTE_XML.format(extra='model_label="segment 2"'), config, FourStrips())
    results = adapter.predict_regions(loaded(32, 24), {})
    assert {r["value"]["brushlabels"][0] for r in results if r["type"] == "brushlabels"} == {"segment 2"}


def test_a_text_area_for_part_of_the_palette_is_not_the_segments_text_area(config):
    xml = view(
        '<BrushLabels name="z" toName="image" model_mode="zero-guidance">'
        '<Label value="a"/><Label value="b"/></BrushLabels>',
        '<TextArea name="only_a" toName="image" perRegion="true" whenLabelValue="a"/>',
        '<TextArea name="spaced" toName="image" perRegion="true" whenLabelValue="a, b"/>',  # the editor: "a", " b"
        '<TextArea name="both" toName="image" perRegion="true" whenLabelValue="b,a"/>',
    )
    (adapter,), _ = adapters_for(xml, config)
    assert adapter.text_area.name == "both"
