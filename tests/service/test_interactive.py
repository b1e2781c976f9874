"""Label Studio's interactive mode: smart-tool clicks and boxes in ``/predict``'s context, one region out.

The methods are fakes (tests/service/conftest.py ``FakeClicker``: a square around each positive
click, minus one around each negative click, or the box; the first class is the nearest).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.label_interface import LabelInterface

from backend.interactive.settings import ClickSettings
from backend.service.app import create_app
from backend.service.images import LoadedImage
from backend.service.interactive import InteractiveContextError, parse_context
from backend.service.masks import rle_to_mask

from .conftest import FakeClicker, load_recorded, png_bytes, sample_image

REPOSITORY = Path(__file__).resolve().parents[2]
LABEL_CONFIG = (REPOSITORY / "label_config.xml").read_text()
WIDTH, HEIGHT = 320, 240  # the task image; the model sees it at 80x60 (MODEL_MAX_PIXELS)
SIDE = FakeClicker.SIDE * WIDTH // 80  # the fake's square at the original size


def click(x: float, y: float, positive: bool = True, label: str = "object", from_name: str = "click") -> dict:
    """A keypoint as Label Studio 1.23's editor serialises a smart-tool click."""
    return {
        "id": "k1",
        "type": "keypointlabels",
        "from_name": from_name,
        "to_name": "image",
        "origin": "manual",
        "original_width": WIDTH,
        "original_height": HEIGHT,
        "image_rotation": 0,
        "is_positive": positive,
        "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": [label], "labels": [label]},
    }


def box(x: float, y: float, width: float, height: float, label: str = "object", **extra) -> dict:
    return {
        "id": "r1",
        "type": "rectanglelabels",
        "from_name": "box",
        "to_name": "image",
        "original_width": WIDTH,
        "original_height": HEIGHT,
        "value": {"x": x, "y": y, "width": width, "height": height, "rotation": 0, "rectanglelabels": [label], **extra},
    }


@pytest.fixture
def served(fake_ls, config, fake_methods):
    fake_ls.state.public["/image.png"] = png_bytes(sample_image(WIDTH, HEIGHT))
    app = create_app(config.replace(model_max_pixels=80 * 60), methods=fake_methods)
    return app.test_client(), fake_ls.url + "/image.png", fake_methods


def predict(client, image_url, context, label_config=LABEL_CONFIG, tasks=None, where="params"):
    body = {
        "tasks": tasks or [{"id": 7, "data": {"image": image_url}}],
        "label_config": label_config,
        "project": "3.1700000000",
    }
    if where == "params":
        body["params"] = {"login": None, "password": None, "context": context}
    else:
        body["context"] = context
    return client.post("/predict", json=body)


def mask_of(region: dict) -> np.ndarray:
    return rle_to_mask(region["value"]["rle"], region["original_height"], region["original_width"])


def square(x: int, y: int, side: int = SIDE) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[y - side // 2 : y + side // 2, x - side // 2 : x + side // 2] = True
    return mask


# ---- /predict with a context ------------------------------------------------------------------


def test_a_click_gives_one_class_mask_region_with_its_text(served):
    client, image, methods = served
    reply = predict(client, image, {"result": [click(50, 50)]})
    assert reply.status_code == 200, reply.json
    (prediction,) = reply.json["results"]
    brush, text = prediction["result"]
    # the smart label "object" is no brush label: the class-mask tag, labelled with the nearest class
    assert (brush["from_name"], brush["type"]) == ("class_mask", "brushlabels")
    assert brush["value"]["brushlabels"] == ["person"]
    assert brush["score"] == 0.7 and prediction["score"] == 0.7  # the class score
    assert (text["from_name"], text["id"], text["value"]) == ("caption", brush["id"], {"text": ["a clicked thing"]})
    assert (brush["original_width"], brush["original_height"]) == (WIDTH, HEIGHT)
    np.testing.assert_array_equal(mask_of(brush), square(160, 120))
    (clicker,) = methods.clickers
    (call,) = clicker.calls
    np.testing.assert_array_equal(call["points"], [[40, 30]])  # pixels of the 80x60 image the model sees
    np.testing.assert_array_equal(call["labels"], [1])
    assert call["box"] is None and call["shape"] == (60, 80)
    assert call["classes"] == ["person", "dog", "cat", "tree", "sky", "road"]
    assert call["class_template"] == "a photo of a {}" and call["task_key"] == "3:7"
    errors = LabelInterface(LABEL_CONFIG).validate_prediction(
        {**prediction, "result": [{**brush, "value": {**brush["value"], "rle": [0, 1]}}, text]}, return_errors=True
    )
    assert errors == []


def test_a_negative_click_changes_the_mask(served):
    client, image, methods = served
    positive = mask_of(predict(client, image, {"result": [click(50, 50)]}).json["results"][0]["result"][0])
    both = predict(client, image, {"result": [click(50, 50), click(52.5, 52.5, positive=False)]})
    changed = mask_of(both.json["results"][0]["result"][0])
    assert changed.sum() < positive.sum() and not (changed & ~positive).any()
    np.testing.assert_array_equal(methods.clickers[0].calls[-1]["labels"], [1, 0])


def test_a_box_works_and_context_may_come_at_the_top_level(served):
    client, image, methods = served
    reply = predict(client, image, {"result": [box(25, 50, 50, 25)]}, where="top")
    (prediction,) = reply.json["results"]
    brush = prediction["result"][0]
    expected = np.zeros((HEIGHT, WIDTH), bool)
    expected[120:180, 80:240] = True
    np.testing.assert_array_equal(mask_of(brush), expected)
    call = methods.clickers[0].calls[-1]
    assert call["points"] is None
    np.testing.assert_array_equal(call["box"], [20, 30, 60, 45])


def test_the_smart_label_picks_the_tag_with_that_label(served):
    client, image, methods = served
    config = LABEL_CONFIG.replace('<Label value="object" hotkey="c"', '<Label value="segment" hotkey="c"')
    (prediction,) = predict(client, image, {"result": [click(50, 50, label="segment")]}, config).json["results"]
    brush, text = prediction["result"]
    assert (brush["from_name"], brush["value"]["brushlabels"], brush["score"]) == ("segment", ["segment"], 0.3)
    assert text["from_name"] == "caption" and text["id"] == brush["id"]
    assert methods.clickers[-1].calls[-1]["classes"] == []  # no class needed


def test_without_class_labels_the_zero_guidance_tag_takes_the_region(served):
    client, image, _ = served
    config = """<View><Image name="image" value="$image"/>
      <BrushLabels name="segment" toName="image" model_mode="zero-guidance"><Label value="segment"/></BrushLabels>
      <TextArea name="caption" toName="image" perRegion="true"/>
      <KeyPointLabels name="click" toName="image" smart="true"><Label value="object"/></KeyPointLabels></View>"""
    (prediction,) = predict(client, image, {"result": [click(50, 50)]}, config).json["results"]
    brush, text = prediction["result"]
    assert brush["value"]["brushlabels"] == ["segment"] and brush["score"] == 0.3
    assert text["value"]["text"] == ["a clicked thing"]


def test_polygons_give_one_region_and_text_follows_when_label_value(served):
    client, image, _ = served
    config = """<View><Image name="image" value="$image"/>
      <PolygonLabels name="outline" toName="image" model_mode="classes">
        <Label value="cat"/><Label value="dog"/>
      </PolygonLabels>
      <TextArea name="only_dogs" toName="image" perRegion="true" whenLabelValue="dog"/>
      <TextArea name="only_cats" toName="image" perRegion="true" whenLabelValue="cat"/></View>"""
    reply = predict(client, image, {"result": [click(50, 50), click(90, 90)]}, config)  # two squares
    (prediction,) = reply.json["results"]
    polygon, text = prediction["result"]
    assert polygon["type"] == "polygonlabels" and polygon["value"]["polygonlabels"] == ["cat"]
    assert text["from_name"] == "only_cats"  # the text area for the region's label
    assert len(prediction["result"]) == 2  # one polygon (the largest component), not one per component


def test_without_a_context_predict_works_as_before(served):
    client, image, methods = served
    for context in (None, {}, {"result": []}):
        (prediction,) = predict(client, image, context).json["results"]
        types = [r["type"] for r in prediction["result"]]
        assert types.count("brushlabels") > 1  # whole-image segments and class masks
    assert methods.clickers == []


def test_the_embedding_is_keyed_by_project_and_task(served):
    client, image, methods = served
    tasks = [{"id": 11, "data": {"image": image}}]
    predict(client, image, {"result": [click(50, 50)]}, tasks=tasks)
    assert methods.clickers[0].calls[-1]["task_key"] == "3:11"


def test_the_smart_tools_settings_reach_the_method_typed(served):
    client, image, methods = served
    config = LABEL_CONFIG.replace(
        '<KeyPointLabels name="click" toName="image"',
        '<KeyPointLabels name="click" toName="image" model_settings=\'{"multimask_output": false}\'',
    )
    predict(client, image, {"result": [click(50, 50)]}, config)
    assert methods.clickers[-1].click_settings == ClickSettings(multimask_output=False)


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ('{"embedding_cache_bytes": 99999999999}', "embedding_cache_bytes cannot be set by a project"),
        ('{"sam_precision": "float8"}', "sam_precision is not a setting"),
    ],
)
def test_refused_smart_tool_settings_answer_400_at_setup_and_predict(served, settings, fragment):
    client, image, methods = served
    config = LABEL_CONFIG.replace(
        '<KeyPointLabels name="click" toName="image"',
        f'<KeyPointLabels name="click" toName="image" model_settings=\'{settings}\'',
    )
    setup = client.post("/setup", json={**load_recorded("setup.json")["body"], "schema": config})
    assert setup.status_code == 400 and fragment in setup.json["error"]
    reply = predict(client, image, {"result": [click(50, 50)]}, config)
    assert reply.status_code == 400 and fragment in reply.json["error"]
    assert methods.clickers == []


@pytest.mark.parametrize(
    "context, fragment",
    [
        ("clicks", "context must be a JSON object"),
        ({"result": "x"}, "context.result must be a list"),
        ({"result": [1]}, "context.result[0] must be a JSON object"),
        ({"result": [{"type": "brushlabels", "value": {}}]}, "context.result[0].type must be one of"),
        ({"result": [{**click(50, 50), "value": {"x": 150, "y": 1}}]}, "context.result[0].value.x must be <= 100"),
        ({"result": [{**click(50, 50), "value": {"x": "1", "y": 1}}]}, "value.x must be a finite number"),
        ({"result": [{**click(50, 50), "is_positive": "yes"}]}, "is_positive must be true or false"),
        ({"result": [click(50, 50, positive=False)]}, "only negative clicks"),
        ({"result": [box(1, 1, 5, 5), box(10, 10, 5, 5)]}, "SAM takes one box"),
        ({"result": [box(1, 1, 0, 5)]}, "a width and a height > 0"),
        ({"result": [click(1, 1)] * 65}, "at most 64"),
        ({"result": [{**click(50, 50), "value": {"x": 1, "y": 1, "keypointlabels": "object"}}]}, "list of label names"),
    ],
)
def test_malformed_contexts_answer_400_with_the_reason(served, context, fragment):
    client, image, methods = served
    reply = predict(client, image, context)
    assert reply.status_code == 400, reply.json
    assert fragment in reply.json["error"]
    assert methods.clickers == []


def test_an_interactive_request_takes_exactly_one_task(served):
    client, image, _ = served
    tasks = [{"id": 1, "data": {"image": image}}, {"id": 2, "data": {"image": image}}]
    reply = predict(client, image, {"result": [click(50, 50)]}, tasks=tasks)
    assert reply.status_code == 400 and "takes one task, got 2" in reply.json["error"]


def test_a_failing_image_gives_an_empty_prediction_and_a_warning(served):
    client, image, _ = served
    reply = predict(client, image + "-missing", {"result": [click(50, 50)]})
    assert reply.status_code == 200
    assert reply.json["results"] == [{"result": [], "score": 0.0, "model_version": reply.json["model_version"]}]
    assert "404" in reply.json["warnings"][0]


def test_a_click_on_another_image_is_refused(served):
    client, image, _ = served
    reply = predict(client, image, {"result": [{**click(50, 50), "to_name": "other"}]})
    assert reply.status_code == 400 and "smart tools' image ['other']" in reply.json["error"]


def test_the_recorded_interactive_request_gives_one_region(served, fake_ls):
    client, _, methods = served
    recording = load_recorded("predict-interactive.json")
    fake_ls.state.public["/data/upload/1/fa1c29ae-upload2.png"] = png_bytes(sample_image(320, 240))
    body = {**recording["body"], "tasks": [{**recording["body"]["tasks"][0]}]}
    body["tasks"][0]["data"] = {"image": fake_ls.url + "/data/upload/1/fa1c29ae-upload2.png"}
    (prediction,) = client.post("/predict", json=body).json["results"]
    brush, text = prediction["result"]
    assert brush["from_name"] == "class_mask" and brush["value"]["brushlabels"] == ["cat"]
    assert text["from_name"] == "caption" and text["id"] == brush["id"]
    np.testing.assert_array_equal(methods.clickers[0].calls[0]["labels"], [1])  # no is_positive: positive


# ---- parsing, in pixels -----------------------------------------------------------------------


def loaded(original: tuple[int, int], model: tuple[int, int]) -> LoadedImage:
    return LoadedImage(np.zeros((model[1], model[0], 3), np.uint8), original[0], original[1], "x")


def test_percentages_become_pixels_of_the_models_image():
    context = parse_context({"result": [click(25, 75), click(100, 0, positive=False), box(10, 20, 30, 40)]})
    prompts = context.prompts_for(loaded((400, 200), (200, 100)))
    np.testing.assert_allclose(prompts.points, [[50, 75], [200, 0]])
    np.testing.assert_array_equal(prompts.labels, [1, 0])
    np.testing.assert_allclose(prompts.box, [20, 20, 80, 60])
    assert context.labels == ("object",) and context.from_names == ("click", "box")


def test_a_rotated_box_gives_its_bounds_in_original_pixels():
    context = parse_context({"result": [box(50, 10, 25, 25, rotation=90)]})
    # 100x100 image: a 25x25 square at (50, 10) turned 90 degrees clockwise about its top-left corner
    np.testing.assert_allclose(context.prompts_for(loaded((100, 100), (100, 100))).box, [25, 10, 50, 35], atol=1e-4)


@pytest.mark.parametrize("context", [None, {}, {"result": []}, {"other": 1}])
def test_contexts_without_prompts_are_ordinary_predictions(context):
    assert parse_context(context) is None


def test_context_errors_are_payload_errors():
    with pytest.raises(InteractiveContextError) as error:
        parse_context({"result": [{"type": "keypointlabels", "value": {"x": 1}}]})
    assert "value.y must be a finite number" in str(error.value)


def test_a_box_tag_never_takes_the_clicked_mask(served):
    """Non-smart RectangleLabels get boxes when pre-labelling; a clicked object's mask goes to a brush."""
    client, image, _ = served
    config = """<View><Image name="image" value="$image"/>
      <RectangleLabels name="boxes" toName="image" model_mode="classes"><Label value="cat"/></RectangleLabels>
      <BrushLabels name="masks" toName="image" model_mode="classes"><Label value="dog"/><Label value="cat"/></BrushLabels>
      <KeyPointLabels name="click" toName="image" smart="true"><Label value="cat"/></KeyPointLabels></View>"""
    (prediction,) = predict(client, image, {"result": [click(50, 50, label="cat")]}, config).json["results"]
    (region,) = prediction["result"]
    assert (region["from_name"], region["type"], region["value"]["brushlabels"]) == ("masks", "brushlabels", ["cat"])
    assert region["score"] == 0.9  # the annotator chose the class: SAM's predicted IoU
