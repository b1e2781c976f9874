"""End to end with a real Label Studio 1.23.2 and ``python -m backend`` (tiny preset).

For each kind of API key (legacy token, personal access token) the project is set up the
way a user would do it, with ``python -m plugin setup``: create from label_config.xml,
connect the backend, upload two synthetic PNGs, run "Retrieve predictions". Then:

- Label Studio stored one valid prediction per task, with masks at the image's size;
- those predictions are exactly what the backend answers when we send it the same task
  ourselves. Both answers come from the same backend process (same seeded tiny weights,
  same image bytes fetched from Label Studio with the same key, inference serialised, no
  sampling), so they must be identical; a difference means Label Studio's copy was
  altered, or the backend is not deterministic, and either is a bug for pre-labelling;
- a human annotation created through the API reaches the backend's ``/webhook`` and is
  stored under its MODEL_DIR;
- ``python -m plugin export`` writes that annotation's masks and texts back out.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter.brush import decode_rle
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image

from plugin.cli import main as plugin_main
from tests.e2e.conftest import LABEL_CONFIG, TOKEN_KINDS
from tests.e2e.servers import log_tail

pytestmark = pytest.mark.e2e

IMAGE_WIDTH, IMAGE_HEIGHT = 96, 64  # conftest.e2e_images


def brush_alpha(item: dict) -> np.ndarray:
    """The alpha layer of a brush result, ``(H, W)`` uint8 (decoded here, not by the plugin)."""
    height, width = item["original_height"], item["original_width"]
    return np.asarray(decode_rle(item["value"]["rle"]), dtype=np.uint8).reshape(height, width, 4)[:, :, 3]


def region_signatures(result: list[dict]) -> list[tuple]:
    """Id-independent description of a result: per region (control, labels, mask hash, texts, choices)."""
    by_id: dict[str, dict] = {}
    for item in result:
        region = by_id.setdefault(item["id"], {"brush": [], "texts": [], "choices": []})
        value = item["value"]
        if item["type"] == "brushlabels":
            mask_hash = hashlib.sha256(brush_alpha(item).tobytes()).hexdigest()
            region["brush"].append((item["from_name"], tuple(value.get("brushlabels", [])), mask_hash))
        elif item["type"] == "textarea":
            region["texts"].append((item["from_name"], tuple(value["text"])))
        elif item["type"] == "choices":
            region["choices"].append((item["from_name"], tuple(value["choices"])))
        else:
            region.setdefault("other", []).append(json.dumps(item, sort_keys=True))
    return sorted(
        (tuple(r["brush"]), tuple(sorted(r["texts"])), tuple(sorted(r["choices"])), tuple(r.get("other", [])))
        for r in by_id.values()
    )


def sdk_client(url: str, api_key: str) -> LabelStudio:
    return LabelStudio(base_url=url, api_key=api_key)


@pytest.fixture(params=TOKEN_KINDS)
def project(request, prelabelled):
    return prelabelled(request.param)


def test_setup_stores_valid_predictions_for_every_uploaded_image(project, label_studio):
    client = sdk_client(label_studio.url, project.api_key)
    tasks = {task.id: task for task in client.tasks.list(project=project.project_id)}
    assert sorted(tasks) == sorted(project.task_ids)
    assert len(tasks) == 2, project.setup_output
    uploaded = sorted(task.data["image"].rsplit("/", 1)[-1].split("-", 1)[1] for task in tasks.values())
    assert uploaded == ["shapes-2.png", "shapes_one.png"]  # Label Studio turns spaces into _

    interface = LabelInterface(LABEL_CONFIG.read_text())
    brush_controls = {control.name for control in interface.controls if control.tag == "BrushLabels"}
    predictions = client.predictions.list(project=project.project_id)
    assert sorted(prediction.task for prediction in predictions) == sorted(tasks)
    for prediction in predictions:
        brushes = [item for item in prediction.result if item["type"] == "brushlabels"]
        assert brushes, (
            f"task {prediction.task}: empty prediction (the backend failed?)\n"
            f"{log_tail(project.backend.process.log_path)}"
        )
        # The SDK's validator reads brush RLE as (value, count) pairs, which Label Studio's
        # RLE is not, so it rejects every real brush: validate the other items with it and
        # decode the brushes ourselves.
        others = [item for item in prediction.result if item["type"] != "brushlabels"]
        assert others, "no per-region text or choice"
        assert interface.validate_prediction({"result": others}, return_errors=True) == []
        brush_ids = {item["id"] for item in brushes}
        assert {item["id"] for item in others} <= brush_ids, "a per-region answer without its region"
        for item in brushes:
            assert item["from_name"] in brush_controls
            assert set(item["value"]["brushlabels"]) <= set(interface.get_control(item["from_name"]).labels)
            assert item["to_name"] == "image"
            assert (item["original_width"], item["original_height"]) == (IMAGE_WIDTH, IMAGE_HEIGHT)
            alpha = brush_alpha(item)
            assert set(np.unique(alpha)) <= {0, 255}
            assert alpha.any(), "a region with an empty mask"


def test_stored_predictions_equal_what_the_backend_computes(project, label_studio):
    client = sdk_client(label_studio.url, project.api_key)
    label_config = LABEL_CONFIG.read_text()
    for task_id in project.task_ids:
        stored = client.predictions.list(task=task_id)
        assert len(stored) == 1
        task = label_studio.api("GET", f"/api/tasks/{task_id}").json()
        # The body Label Studio sends (shared/label-studio-requests/predict-uploaded-task.json)
        body = {
            "tasks": [task],
            "project": f"{project.project_id}.{int(time.time())}",
            "label_config": label_config,
            "params": {"login": None, "password": None, "context": None},
        }
        response = requests.post(f"{project.backend.url}/predict", json=body, timeout=120)
        assert response.status_code == 200, response.text[:1000]
        fresh = response.json()["results"][0]
        assert fresh["model_version"] == stored[0].model_version
        assert region_signatures(fresh["result"]) == region_signatures(stored[0].result)


def test_human_annotation_reaches_the_backend_webhook(project, label_studio, monkeypatch, capsys):
    client = sdk_client(label_studio.url, project.api_key)
    task_id = project.task_ids[0]
    prediction = client.predictions.list(task=task_id)[0]
    caption = f"e2e caption {uuid.uuid4().hex[:8]}"
    result = [dict(item) for item in prediction.result]
    first_region = next(item["id"] for item in result if item["type"] == "brushlabels")
    result = [item for item in result if not (item["id"] == first_region and item["type"] == "textarea")]
    result.append(
        {
            "id": first_region,
            "from_name": "caption",
            "to_name": "image",
            "type": "textarea",
            "original_width": IMAGE_WIDTH,
            "original_height": IMAGE_HEIGHT,
            "image_rotation": 0,
            "value": {"text": [caption]},
        }
    )
    annotation = client.annotations.create(id=task_id, result=result, lead_time=2.5, parent_prediction=prediction.id)

    deadline = time.monotonic() + 30
    stored_files: list[Path] = []
    while time.monotonic() < deadline and not stored_files:
        stored_files = sorted(project.backend.model_dir.rglob(f"annotation-{annotation.id}/v-*.json"))
        time.sleep(0.3)
    assert stored_files, (
        f"annotation {annotation.id} not stored under {project.backend.model_dir} within 30 s\n"
        f"{log_tail(project.backend.process.log_path)}"
    )
    record = json.loads(stored_files[-1].read_text())
    assert record["annotation"]["id"] == annotation.id
    assert region_signatures(record["annotation"]["result"]) == region_signatures(result)
    texts = [item["value"]["text"] for item in record["annotation"]["result"] if item["type"] == "textarea"]
    assert [caption] in texts

    # ... and the plugin exports it: the mask PNG is the brush, the JSON has the caption.
    out_dir = Path(label_studio.data_dir).parent / f"export-{project.kind}"
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", project.api_key)
    status = plugin_main(["export", "--project", str(project.project_id), "--out", str(out_dir)])
    assert status == 0, capsys.readouterr()
    dataset = json.loads((out_dir / "dataset.json").read_text())
    (item,) = [item for item in dataset["items"] if item["annotation_id"] == annotation.id]
    assert (item["width"], item["height"]) == (IMAGE_WIDTH, IMAGE_HEIGHT)
    with Image.open(out_dir / item["image"]) as image:
        assert image.size == (IMAGE_WIDTH, IMAGE_HEIGHT)
    (region,) = [region for region in item["regions"] if region["id"] == first_region]
    assert region["texts"]["caption"] == [caption]
    brush = next(r for r in result if r["id"] == first_region and r["type"] == "brushlabels")
    exported_mask = np.asarray(Image.open(out_dir / region["mask"]))
    np.testing.assert_array_equal(exported_mask, np.where(brush_alpha(brush) >= 128, 255, 0))
    assert region["area"] == int((brush_alpha(brush) >= 128).sum())

    # ... and the backend measured how much of its prediction was kept: one caption changed, the
    # rest as served (every region unchanged, every label's pixels the same)
    old_caption = next(
        item["value"]["text"][0]
        for item in prediction.result
        if item["id"] == first_region and item["type"] == "textarea"
    )
    counts: dict[str, int] = {}
    for item in prediction.result:
        if item["type"] == "brushlabels":
            counts[item["from_name"]] = counts.get(item["from_name"], 0) + 1
    acceptance = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and acceptance is None:
        metrics = requests.get(f"{project.backend.url}/metrics", timeout=10).json()
        acceptance = metrics["acceptance"].get(str(project.project_id))
        time.sleep(0.5)
    assert acceptance is not None, f"no acceptance measured\n{log_tail(project.backend.process.log_path)}"
    segments = acceptance["methods"]["zero-guidance"]["segment"]
    assert (segments["unchanged"], segments["edited"], segments["deleted"], segments["added"]) == (
        counts["segment"] - 1,
        1,
        0,
        0,
    )
    assert segments["iou"] == 1.0 and (segments["texts_edited"], acceptance["text_edits"]) == (
        1,
        [[old_caption, caption]],
    )
    for label, figures in acceptance["methods"].get("classes", {}).items():
        assert figures["edited"] == figures["deleted"] == 0 and figures["iou"] == 1.0, label
    assert plugin_main(["report", "--project", str(project.project_id), "--out", str(out_dir / "report")]) == 0
    assert f"- {old_caption} -> {caption}" in (out_dir / "report" / "report.md").read_text()


def test_setup_again_changes_nothing(prelabelled, label_studio, e2e_images, monkeypatch, capsys):
    project = prelabelled("legacy")
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", project.api_key)
    status = plugin_main(
        [
            "setup",
            "--title",
            "e2e legacy",
            "--config",
            str(LABEL_CONFIG),
            "--backend-url",
            project.backend.url,
            "--images",
            str(e2e_images),
            "--json",
        ]
    )
    output = capsys.readouterr().out
    assert status == 0, output
    summary = json.loads(output.strip().splitlines()[-1])
    assert summary["project_id"] == project.project_id
    assert summary["created_task_ids"] == []
    assert summary["task_ids"] == project.task_ids
    assert "already connected" in output
    client = sdk_client(label_studio.url, project.api_key)
    assert len(client.ml.list(project=project.project_id)) == 1
    assert len(client.predictions.list(project=project.project_id)) == len(project.task_ids)


@pytest.mark.parametrize("kind", ["legacy token", "personal access token"])
def test_plugin_explains_a_rejected_key(kind, label_studio, monkeypatch, capsys):
    pat = label_studio.personal_access_token
    wrong_key = "0" * 40 if kind == "legacy token" else pat[:-4] + ("AAAA" if not pat.endswith("AAAA") else "BBBB")
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", wrong_key)
    status = plugin_main(["setup", "--config", str(LABEL_CONFIG), "--title", "never created"])
    error = capsys.readouterr().err
    assert status == 2
    assert "(401)" in error and f"read as a {kind}" in error, error
