"""The backend behind HTTP basic auth, connected to a real Label Studio with the same credentials:
predictions and webhooks both get through, and nobody without the password gets in."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import requests
from label_studio_sdk import LabelStudio

from tests.e2e.conftest import LABEL_CONFIG, backend_extra_env, run_plugin
from tests.e2e.servers import log_tail, start_backend

pytestmark = pytest.mark.e2e

USER, PASSWORD = "labelstudio", "e2e-basic-auth-password"


@pytest.fixture(scope="module")
def guarded_backend(label_studio, api_keys, e2e_workdir, logs_dir):
    env = {**backend_extra_env(), "BASIC_AUTH_USER": USER, "BASIC_AUTH_PASS": PASSWORD}
    backend = start_backend(
        Path(sys.executable),
        e2e_workdir / "backend-basic-auth",
        label_studio.url,
        api_keys["legacy"],
        log_path=logs_dir / "backend-basic-auth.log",
        extra_env=env,
    )
    yield backend
    backend.process.stop()


def test_predictions_and_webhooks_pass_basic_auth(guarded_backend, label_studio, api_keys, e2e_images):
    url = guarded_backend.url
    assert requests.get(f"{url}/health", timeout=5).status_code == 200  # healthchecks need no password
    assert requests.post(f"{url}/setup", json={}, timeout=5).status_code == 401
    assert requests.post(f"{url}/setup", json={}, auth=(USER, "wrong"), timeout=5).status_code == 401

    result = run_plugin(
        [
            "setup",
            "--title",
            "e2e basic auth",
            "--config",
            str(LABEL_CONFIG),
            "--backend-url",
            url,
            "--basic-auth-user",
            USER,
            "--basic-auth-password",
            PASSWORD,
            "--images",
            str(e2e_images),
            "--batch-size",
            "2",
            "--json",
        ],
        label_studio.url,
        api_keys["legacy"],
    )
    assert result.returncode == 0, result.stdout + result.stderr + log_tail(guarded_backend.process.log_path)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    client = LabelStudio(base_url=label_studio.url, api_key=api_keys["legacy"])
    task_id = summary["task_ids"][0]
    predictions = client.predictions.list(task=task_id)
    assert predictions and any(item["type"] == "brushlabels" for item in predictions[0].result)

    annotation = client.annotations.create(id=task_id, result=list(predictions[0].result), lead_time=1.0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if list(guarded_backend.model_dir.rglob(f"annotation-{annotation.id}/v-*.json")):
            break
        time.sleep(0.3)
    else:
        pytest.fail(
            f"Label Studio's webhook for annotation {annotation.id} did not get through basic auth\n"
            f"{log_tail(guarded_backend.process.log_path)}"
        )
