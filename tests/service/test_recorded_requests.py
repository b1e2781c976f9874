"""Replay every request a real Label Studio 1.23.2 sent, and check the replies' shapes.

Images: the recorded tasks point at Label Studio uploads (``/data/upload/...``) and at
``http://127.0.0.1:8081/...``; the local fake Label Studio serves both (the upload behind a
personal access token, the URL task rewritten to its address).
"""

import json
import os
from pathlib import Path

import pytest
from label_studio_sdk.label_interface import LabelInterface

from backend.service.app import create_app
from backend.service.masks import rle_to_mask

from .conftest import RECORDED, FakeMethods, png_bytes, sample_image

SYNTHETIC = Path(__file__).parent / "fixtures" / "synthetic"
RECORDED_FILES = sorted(p.name for p in RECORDED.glob("*.json"))
REGION_KEYS = {"id", "from_name", "to_name", "type", "original_width", "original_height", "image_rotation", "value"}


def test_every_shared_recording_has_a_copy_here():
    shared = Path(__file__).resolve().parents[3] / "shared" / "label-studio-requests"
    if not shared.is_dir():
        pytest.skip("../shared is not beside this checkout")
    missing = sorted(p.name for p in shared.glob("*.json") if not (RECORDED / p.name).exists())
    assert not missing, f"copy these recordings into {RECORDED}: {missing}"


@pytest.fixture
def served(fake_ls, config):
    """The app wired to the fake Label Studio (PAT auth), serving the recorded images."""
    fake_ls.state.protected["/data/upload/1/fa1c29ae-upload2.png"] = png_bytes(sample_image(320, 240))
    fake_ls.state.public["/test1.png"] = png_bytes(sample_image(64, 48))
    app = create_app(
        config.replace(label_studio_url=fake_ls.url, label_studio_api_key=fake_ls.state.pat),
        methods=FakeMethods(),
    )
    return app.test_client(), fake_ls, app


def replay(client, fake_ls, recording: dict):
    body = json.loads(json.dumps(recording["body"]).replace("http://127.0.0.1:8081", fake_ls.url))
    if recording["method"] == "GET":
        return client.get(recording["path"])
    return client.post(recording["path"], json=body)


def check_prediction(prediction: dict, label_config: str) -> None:
    """Label Studio's checks: structure by LabelInterface, brush RLEs by decoding them.

    (The pinned label-studio-sdk 2.0.13 rejects every real RLE, so brush values are swapped for a
    placeholder before its check; test_predictions_pass_label_studio_1_23s_own_validator uses the
    SDK that Label Studio 1.23.2 ships.)
    """
    assert set(prediction) == {"result", "score", "model_version"}
    assert 0.0 <= prediction["score"] <= 1.0
    interface = LabelInterface(label_config)
    structural = [
        {**r, "value": {**r["value"], "rle": [0, 1]}} if r["type"] == "brushlabels" else r for r in prediction["result"]
    ]
    assert interface.validate_prediction({**prediction, "result": structural}, return_errors=True) == []
    by_id: dict[str, list[dict]] = {}
    for region in prediction["result"]:
        assert REGION_KEYS <= set(region)
        by_id.setdefault(region["id"], []).append(region)
        if region["type"] == "brushlabels":
            assert all(isinstance(v, int) and 0 <= v <= 255 for v in region["value"]["rle"])
            mask = rle_to_mask(region["value"]["rle"], region["original_height"], region["original_width"])
            assert mask.any()
    for group in by_id.values():  # a TextArea result always shares its brush's id
        assert [r["type"] for r in group][0] == "brushlabels"


@pytest.mark.parametrize("name", RECORDED_FILES)
def test_replay_recorded(name, served):
    client, fake_ls, app = served
    recording = json.loads((RECORDED / name).read_text())
    if "path" not in recording:  # stored-prediction.json: what Label Studio stored, not a request
        stored = recording[0]["result"]
        ours = app.extensions["segmentation_service"].model_for(
            json.loads((RECORDED / "setup.json").read_text())["body"]["schema"], "1"
        )
        assert ours.adapters  # our regions carry the same keys as the stored ones
        assert all(REGION_KEYS <= set(region) for region in stored)
        return
    client.post("/setup", json=json.loads((RECORDED / "setup.json").read_text())["body"])
    response = replay(client, fake_ls, recording)
    assert response.status_code == 200, response.json
    reply = response.json
    if recording["path"] == "/setup":
        assert set(reply) == {"model_version"} and reply["model_version"].startswith("cpu-zg.")
    elif recording["path"] == "/predict":
        tasks = recording["body"]["tasks"]
        assert len(reply["results"]) == len(tasks)
        assert reply["warnings"] == []
        interactive = bool((recording["body"].get("params") or {}).get("context"))
        for prediction in reply["results"]:
            check_prediction(prediction, recording["body"]["label_config"])
            types = [r["type"] for r in prediction["result"]]
            if interactive:  # one region for the clicked object, with its text under the same id
                assert types == ["brushlabels", "textarea"]
                assert len({r["id"] for r in prediction["result"]}) == 1
            else:
                assert types.count("brushlabels") == 4 and types.count("textarea") == 2
            assert prediction["model_version"] == reply["model_version"]
    elif recording["path"] == "/webhook":
        action = recording["body"]["action"]
        expected = {
            "ANNOTATION_CREATED": "stored",
            "ANNOTATION_UPDATED": "stored",
            "START_TRAINING": "ignored: no training hook registered",
            "PROJECT_UPDATED": "ignored",
            "TASKS_CREATED": "ignored",
        }[action]
        assert reply["status"] == expected
    else:
        pytest.fail(f"no replay rule for {recording['path']}")


def test_uploaded_image_is_fetched_with_an_exchanged_pat(served):
    client, fake_ls, _ = served
    recording = json.loads((RECORDED / "predict-uploaded-task.json").read_text())
    reply = replay(client, fake_ls, recording).json
    (prediction,) = reply["results"]
    assert {(r["original_width"], r["original_height"]) for r in prediction["result"]} == {(320, 240)}
    assert fake_ls.state.refresh_calls == 1
    upload_auth = [a for m, p, a in fake_ls.state.requests if p.startswith("/data/upload/")]
    assert upload_auth and all(a.startswith("Bearer ") and fake_ls.state.pat not in a for a in upload_auth)


def test_synthetic_annotations_deleted(served):
    client, fake_ls, app = served
    created = json.loads((RECORDED / "webhook-annotation-created.json").read_text())
    assert client.post("/webhook", json=created["body"]).json["status"] == "stored"
    store = app.extensions["segmentation_service"].store
    assert [r["annotation_id"] for r in store.current()] == [1]
    deleted = json.loads((SYNTHETIC / "webhook-annotations-deleted.json").read_text())
    reply = client.post("/webhook", json=deleted["body"]).json
    assert reply == {"status": "deleted", "annotations": [{"annotation": 1, "status": "deleted"}]}
    assert store.current() == []


LS_PYTHON = Path(os.environ.get("LS_VENV") or Path(__file__).resolve().parents[2] / ".ls-venv") / "bin" / "python"


@pytest.mark.skipif(
    not LS_PYTHON.exists(), reason="Label Studio's venv (.ls-venv, scripts/install-label-studio.sh) absent"
)
def test_predictions_pass_label_studio_1_23s_own_validator(served, tmp_path):
    """Label Studio 1.23.2 validates predictions with its bundled label-studio-sdk (2.1.2) and
    rejects the whole batch if one is invalid: run that validator on a real reply."""
    client, fake_ls, _ = served
    recording = json.loads((RECORDED / "predict-uploaded-task.json").read_text())
    reply = replay(client, fake_ls, recording).json
    payload = tmp_path / "prediction.json"
    payload.write_text(json.dumps({"config": recording["body"]["label_config"], "prediction": reply["results"][0]}))
    script = (
        "import json, sys; from label_studio_sdk.label_interface import LabelInterface; "
        "d = json.load(open(sys.argv[1])); "
        "print(json.dumps(LabelInterface(d['config']).validate_prediction(d['prediction'], return_errors=True)))"
    )
    import subprocess

    out = subprocess.run([str(LS_PYTHON), "-c", script, str(payload)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
