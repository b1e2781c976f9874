"""/predict end to end with the real methods on MODEL_PRESET=tiny (random weights: the shapes
and the protocol are checked, not the quality of the segments)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.label_interface import LabelInterface

from backend.service.app import create_app
from backend.service.masks import rle_to_mask

from .conftest import png_bytes

REPO = Path(__file__).resolve().parents[2]
LABEL_CONFIG = (REPO / "label_config.xml").read_text()


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def scene(width=64, height=48) -> np.ndarray:
    """Sky-blue top, green bottom, a red square: something to segment."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2] = (110, 160, 230)
    image[height // 2 :] = (60, 150, 60)
    image[10:26, 20:40] = (220, 40, 40)
    return image


@pytest.fixture(scope="module")
def tiny_client(tmp_path_factory):
    from backend.service.config import ServiceConfig

    config = ServiceConfig(
        model_preset="tiny", device="cpu", model_dir=tmp_path_factory.mktemp("state"), model_load_wait_s=600
    )
    return create_app(config).test_client()


def predict(client, label_config, image_png):
    import base64

    body = {
        "tasks": [{"id": 1, "data": {"image": "data:image/png;base64," + base64.b64encode(image_png).decode()}}],
        "project": "1.1",
        "label_config": label_config,
        "params": {"context": None},
    }
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json


def check_results(prediction, width, height):
    interface = LabelInterface(LABEL_CONFIG)
    structural = [
        {**r, "value": {**r["value"], "rle": [0, 1]}} if r["type"] == "brushlabels" else r for r in prediction["result"]
    ]
    assert interface.validate_prediction({**prediction, "result": structural}, return_errors=True) == []
    for region in prediction["result"]:
        assert (region["original_width"], region["original_height"]) == (width, height)
        if region["type"] == "brushlabels":
            assert rle_to_mask(region["value"]["rle"], height, width).any()


@pytest.mark.skipif(not has_module("backend.zeroguide.pipeline"), reason="backend.zeroguide not in this checkout yet")
def test_zero_guidance_segments_with_text_on_tiny(tiny_client):
    only_segments = LABEL_CONFIG.replace('model_mode="classes"', 'model_mode="classes" model_skip="true"')
    reply = predict(tiny_client, only_segments, png_bytes(scene()))
    (prediction,) = reply["results"]
    assert reply["warnings"] == [], reply["warnings"]
    check_results(prediction, 64, 48)
    brushes = [r for r in prediction["result"] if r["from_name"] == "segment"]
    captions = {r["id"]: r["value"]["text"][0] for r in prediction["result"] if r["from_name"] == "caption"}
    assert brushes and all(b["id"] in captions and captions[b["id"]] for b in brushes)
    assert all(0.0 <= b["score"] <= 1.0 for b in brushes)
    masks = [rle_to_mask(b["value"]["rle"], 48, 64) for b in brushes]
    assert sum(m.sum() for m in masks) <= 64 * 48  # segments do not overlap
    assert reply["model_version"].startswith("tiny-zg.") and "fmbseg" not in reply["model_version"]
    assert tiny_client.get("/health").json["models"] == "ready"


@pytest.mark.skipif(
    not has_module("backend.fmbseg.pipeline"), reason="backend.fmbseg's FMbSegPredictor not in this checkout yet"
)
def test_full_label_config_on_tiny(tiny_client):
    reply = predict(tiny_client, LABEL_CONFIG, png_bytes(scene()))
    (prediction,) = reply["results"]
    check_results(prediction, 64, 48)
    class_labels = {r["value"]["brushlabels"][0] for r in prediction["result"] if r["from_name"] == "class_mask"}
    assert class_labels <= {"person", "dog", "cat", "tree", "sky", "road"}
    assert "-fmbseg." in reply["model_version"] and reply["model_version"].endswith(".base")
    json.dumps(reply)
