"""Label Studio's interactive mode end to end: its own ``/api/ml/{id}/interactive-annotating`` API
on a real Label Studio 1.23.2, our backend (tiny preset) connected with ``is_interactive``.

Each request carries what the editor's smart tools send (``context.result``: the object's
keypoints, ``is_positive`` false for a negative click, or its box); Label Studio forwards it to
``/predict`` and answers ``{"data": <the first prediction>}``.
"""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from label_studio_sdk.label_interface import LabelInterface

from tests.e2e.conftest import LABEL_CONFIG
from tests.e2e.servers import log_tail

pytestmark = pytest.mark.e2e

IMAGE_WIDTH, IMAGE_HEIGHT = 96, 64  # conftest.e2e_images


def keypoint(x: float, y: float, positive: bool = True) -> dict:
    """A smart keypoint as Label Studio 1.23's editor serialises it (percent of the image)."""
    return {
        "id": f"k{x}-{y}",
        "type": "keypointlabels",
        "from_name": "click",
        "to_name": "image",
        "origin": "manual",
        "original_width": IMAGE_WIDTH,
        "original_height": IMAGE_HEIGHT,
        "image_rotation": 0,
        "is_positive": positive,
        "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": ["object"], "labels": ["object"]},
    }


def rectangle(x: float, y: float, width: float, height: float) -> dict:
    return {
        "id": "r1",
        "type": "rectanglelabels",
        "from_name": "box",
        "to_name": "image",
        "origin": "manual",
        "original_width": IMAGE_WIDTH,
        "original_height": IMAGE_HEIGHT,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": width, "height": height, "rotation": 0, "rectanglelabels": ["object"]},
    }


def interactive(label_studio, project, task_id: int, results: list[dict]) -> dict:
    """``POST /api/ml/{id}/interactive-annotating``; returns Label Studio's ``data`` (a prediction)."""
    response = label_studio.api(
        "POST",
        f"/api/ml/{project.ml_backend_id}/interactive-annotating",
        token=project.api_key,
        json={"task": task_id, "context": {"result": results}},
    )
    assert response.status_code == 200, response.text[:1000]
    body = response.json()
    assert "errors" not in body, f"{body}\n{log_tail(project.backend.process.log_path)}"
    return body["data"]


def one_region(prediction: dict) -> tuple[np.ndarray, dict, str]:
    """(mask, brush result, text) of the prediction's one region, checked against the label config."""
    ids = {item["id"] for item in prediction["result"]}
    assert len(ids) == 1, prediction["result"]
    brushes = [item for item in prediction["result"] if item["type"] == "brushlabels"]
    texts = [item for item in prediction["result"] if item["type"] == "textarea"]
    assert len(brushes) == 1 and len(texts) == 1, prediction["result"]
    (brush,), (text,) = brushes, texts
    interface = LabelInterface(LABEL_CONFIG.read_text())
    assert interface.validate_prediction({"result": [text]}, return_errors=True) == []
    assert brush["from_name"] == "class_mask"  # the smart label "object" is no brush label: the nearest class
    assert brush["value"]["brushlabels"][0] in interface.get_control("class_mask").labels
    assert 0.0 <= brush["score"] <= 1.0
    assert (brush["original_width"], brush["original_height"]) == (IMAGE_WIDTH, IMAGE_HEIGHT)
    assert text["from_name"] == "caption"
    alpha = np.asarray(decode_rle(brush["value"]["rle"]), dtype=np.uint8).reshape(IMAGE_HEIGHT, IMAGE_WIDTH, 4)[..., 3]
    words = " ".join(text["value"]["text"]).strip()
    return alpha >= 128, brush, words


def test_interactive_click_gives_one_region_with_a_mask_and_its_text(interactive_project, label_studio):
    task_id = interactive_project.task_ids[0]
    mask, brush, text = one_region(interactive(label_studio, interactive_project, task_id, [keypoint(40, 50)]))
    assert mask.any(), "an empty mask"
    assert text, "no text for the region"


def test_interactive_negative_click_changes_the_mask(interactive_project, label_studio):
    task_id = interactive_project.task_ids[0]
    positive, _, _ = one_region(interactive(label_studio, interactive_project, task_id, [keypoint(40, 50)]))
    clicks = [keypoint(40, 50), keypoint(75, 75, positive=False)]
    with_negative, _, text = one_region(interactive(label_studio, interactive_project, task_id, clicks))
    assert with_negative.any() and text
    assert (with_negative != positive).any(), "the negative click changed nothing"


def test_interactive_box_gives_one_region(interactive_project, label_studio):
    task_id = interactive_project.task_ids[-1]
    mask, _, text = one_region(interactive(label_studio, interactive_project, task_id, [rectangle(10, 15, 50, 60)]))
    assert mask.any() and text


def test_interactive_needs_is_interactive(interactive_project, label_studio):
    """Label Studio itself refuses interactive requests for a backend connected without it."""
    from label_studio_sdk import LabelStudio

    client = LabelStudio(base_url=label_studio.url, api_key=interactive_project.api_key)
    (record,) = client.ml.list(project=interactive_project.project_id)
    assert record.is_interactive
