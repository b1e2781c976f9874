"""Human corrections in a real Label Studio retrain FMbSeg's alignment module, served at once.

A user corrects the class masks of both tasks (sky above, road below), presses "Start training"
(``POST /api/ml/ID/train``, which Label Studio turns into a ``START_TRAINING`` webhook), and the
backend trains a new alignment module on those corrections, fetching the images from Label
Studio with its key. Its next answer carries the new module's version, without a restart.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests
from label_studio_sdk import LabelStudio

from backend.service.masks import mask_to_rle
from tests.e2e.servers import log_tail

pytestmark = pytest.mark.e2e

IMAGE_WIDTH, IMAGE_HEIGHT = 96, 64  # conftest.e2e_images


def brush(region_id: str, mask: np.ndarray, label: str) -> dict:
    return {
        "id": region_id,
        "from_name": "class_mask",
        "to_name": "image",
        "type": "brushlabels",
        "original_width": IMAGE_WIDTH,
        "original_height": IMAGE_HEIGHT,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [label]},
    }


def test_start_training_retrains_on_corrections_and_serves_the_new_module(prelabelled, label_studio):
    project = prelabelled("legacy")
    backend = project.backend
    client = LabelStudio(base_url=label_studio.url, api_key=project.api_key)
    sky = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), dtype=bool)
    sky[: IMAGE_HEIGHT // 2] = True
    for task_id in project.task_ids:
        client.annotations.create(id=task_id, result=[brush("sky", sky, "sky"), brush("road", ~sky, "road")])

    before = requests.get(f"{backend.url}/metrics", timeout=5).json()["training"]
    (ml_backend,) = [b for b in client.ml.list(project=project.project_id)]
    client.ml.train(id=ml_backend.id)

    deadline = time.monotonic() + 240
    training = before
    while time.monotonic() < deadline:
        training = requests.get(f"{backend.url}/metrics", timeout=5).json()["training"]
        if training["runs"] > before["runs"] and training["state"] in ("succeeded", "failed"):
            break
        time.sleep(1)
    assert training["state"] == "succeeded", f"{training}\n{log_tail(backend.process.log_path)}"
    summary = training["last_result"]
    assert summary["classes"] == ["person", "dog", "cat", "tree", "sky", "road"]
    # our two corrections, plus any earlier annotation of this shared project that kept class masks
    assert summary["images"] >= len(project.task_ids) and summary["regions"] >= 2 * len(project.task_ids)
    assert not summary["skipped_tasks"]
    checkpoints = list((backend.model_dir / "checkpoints" / "fmbseg").glob("*.safetensors"))
    assert [c.name for c in checkpoints] == [summary["checkpoint"].rsplit("/", 1)[-1]]

    task = client.tasks.get(id=project.task_ids[0])
    body = {
        "tasks": [{"id": task.id, "data": task.data}],
        "project": str(project.project_id),
        "label_config": client.projects.get(id=project.project_id).label_config,
    }
    answer = requests.post(f"{backend.url}/predict", json=body, timeout=120).json()
    result = answer["results"][0]
    assert summary["version"] in result["model_version"], "the new module is served without a restart"
    labels = {item["value"]["brushlabels"][0] for item in result["result"] if item["from_name"] == "class_mask"}
    assert labels and labels <= {"person", "dog", "cat", "tree", "sky", "road"}
