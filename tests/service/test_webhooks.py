"""POST /webhook: storage before the answer, dedup, deletions, training hook and its status."""

import copy

import numpy as np
import pytest

from backend.service.app import create_app
from backend.service.hooks import TrainingRequest, import_hook
from backend.service.masks import mask_to_polygons, mask_to_rle
from backend.service.training import annotation_regions

from .conftest import FakeMethods, load_recorded, png_bytes, sample_image

CREATED = load_recorded("webhook-annotation-created.json")["body"]
UPDATED = load_recorded("webhook-annotation-updated.json")["body"]
START_TRAINING = load_recorded("webhook-start-training.json")["body"]

received: list[TrainingRequest] = []


def recording_hook(request: TrainingRequest) -> dict:
    """Importable as TRAINING_HOOK=tests.service.test_webhooks:recording_hook."""
    received.append(request)
    return {"checkpoint": request.checkpoint_dir / "alignment-1.safetensors", "steps": 3}


def make_app(config, **kwargs):
    app = create_app(config, methods=FakeMethods(), **kwargs)
    return app, app.test_client(), app.extensions["segmentation_service"]


def test_created_then_updated_then_resent(config):
    app, client, service = make_app(config)
    assert client.post("/webhook", json=CREATED).json == {
        "status": "stored",
        "annotations": [{"annotation": 1, "status": "stored"}],
    }
    # stored before the answer: visible right away, with the task and the project's label config
    (record,) = service.store.current(1)
    assert record["task"]["data"]["image"] == "/data/upload/1/5d0c446e-test1.png"
    assert service.store.label_config(1, record["label_config_sha"]) == CREATED["project"]["label_config"]
    assert client.post("/webhook", json=UPDATED).json["status"] == "stored"
    assert client.post("/webhook", json=UPDATED).json["status"] == "duplicate"
    (record,) = service.store.current(1)
    texts = [r["value"]["text"] for r in record["annotation"]["result"] if r["type"] == "textarea"]
    assert texts == [["updated caption"]]
    assert service.jobs.wait_idle(10)
    metrics = client.get("/metrics").json
    assert metrics["webhooks"]["stored"] == 2 and metrics["webhooks"]["duplicates"] == 1
    assert metrics["webhooks"]["events"] == {"ANNOTATION_CREATED": 1, "ANNOTATION_UPDATED": 2}
    assert metrics["annotations_stored"] == 1 and metrics["background_jobs"]["failed"] == 0


def test_bulk_annotations_created_and_deleted(config):
    app, client, service = make_app(config)
    bulk = {
        "action": "ANNOTATIONS_CREATED",
        "annotation": [dict(CREATED["annotation"], id=5, task=1), dict(CREATED["annotation"], id=6, task=2)],
        "task": [dict(CREATED["task"], id=1), dict(CREATED["task"], id=2)],
        "project": CREATED["project"],
    }
    reply = client.post("/webhook", json=bulk).json
    assert [a["status"] for a in reply["annotations"]] == ["stored", "stored"]
    assert [r["task"]["id"] for r in service.store.current(1)] == [1, 2]
    reply = client.post("/webhook", json={"action": "ANNOTATION_DELETED", "annotation": {"id": 5}}).json
    assert reply["annotations"] == [{"annotation": 5, "status": "deleted"}]
    assert [r["annotation_id"] for r in service.store.current()] == [6]


def test_unknown_events_are_ignored_with_200(config):
    _, client, _ = make_app(config)
    for body in (load_recorded("webhook-tasks-created.json")["body"], {"action": "SOMETHING_NEW", "x": 1}):
        response = client.post("/webhook", json=body)
        assert response.status_code == 200 and response.json["status"] == "ignored"


def test_start_training_calls_the_registered_hook_in_the_background(config, fake_ls):
    received.clear()
    fake_ls.state.protected["/data/upload/1/5d0c446e-test1.png"] = png_bytes(sample_image(320, 240))
    config = config.replace(label_studio_url=fake_ls.url, label_studio_api_key=fake_ls.state.pat)
    app, client, service = make_app(config, training_hook=recording_hook)
    client.post("/webhook", json=CREATED)
    assert client.post("/webhook", json=START_TRAINING).json == {"status": "training queued"}
    assert service.jobs.wait_idle(10)
    (request,) = received
    assert request.project_id == 1 and request.label_config == START_TRAINING["project"]["label_config"]
    assert [a["annotation_id"] for a in request.annotations] == [1]
    assert request.checkpoint_dir == config.model_dir / "checkpoints" / "fmbseg"
    assert request.preset == "cpu"
    # the hook can load the annotated images with the service's credentials
    image = request.images.fetcher().load(request.annotations[0]["task"]["data"]["image"])
    assert (image.original_width, image.original_height) == (320, 240)
    assert fake_ls.state.pat not in repr(request.images)
    training = client.get("/metrics").json["training"]
    assert training["state"] == "succeeded" and training["runs"] == 1 and training["requested"] == 1
    assert training["last_result"]["steps"] == 3 and training["last_result"]["checkpoint"].endswith(
        "alignment-1.safetensors"
    )
    assert training["hook_registered"] is True


def test_training_hook_from_the_environment_and_its_failures(config):
    received.clear()
    _, client, service = make_app(config.replace(training_hook="tests.service.test_webhooks:recording_hook"))
    client.post("/webhook", json=START_TRAINING)
    assert service.jobs.wait_idle(10) and len(received) == 1

    def failing(request):
        raise RuntimeError("out of memory")

    service.training.register(failing)
    client.post("/webhook", json=START_TRAINING)
    assert service.jobs.wait_idle(10)
    training = client.get("/metrics").json["training"]
    assert training["state"] == "failed" and training["last_error"] == "RuntimeError: out of memory"
    assert training["failures"] == 1 and training["runs"] == 2


def test_start_training_without_a_hook_is_reported(config):
    _, client, service = make_app(config)
    assert client.post("/webhook", json=START_TRAINING).json["status"] == "ignored: no training hook registered"
    assert service.jobs.wait_idle(10)
    assert client.get("/metrics").json["training"]["state"] == "skipped: no training hook registered"


def test_bad_hook_paths_are_clear():
    with pytest.raises(ValueError, match="cannot import"):
        import_hook("no_such_module_anywhere:train")
    with pytest.raises(ValueError, match="is not a callable"):
        import_hook("tests.service.test_webhooks:received")


def test_webhook_storage_problems_are_400(config):
    _, client, _ = make_app(config)
    body = copy.deepcopy(CREATED)
    body["annotation"]["id"] = None
    response = client.post("/webhook", json=body)
    assert response.status_code == 400 and "annotation.id" in response.json["error"]
    response = client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": []})
    assert response.status_code == 400


def test_annotation_regions_joins_masks_texts_and_ratings_by_region_id(tmp_path):
    record = {"annotation": copy.deepcopy(UPDATED["annotation"])}
    (region,) = annotation_regions(record)
    assert region.control == "segment" and region.labels == ["segment"]
    assert region.mask.shape == (240, 320) and region.mask.any()
    assert region.texts == {"caption": ["updated caption"]} and region.choices == {"rating": ["2"]}

    square = np.zeros((20, 30), bool)
    square[5:15, 10:20] = True
    base = {"original_width": 30, "original_height": 20, "image_rotation": 0, "to_name": "image"}
    results = [
        {
            **base,
            "id": "a",
            "from_name": "class_mask",
            "type": "brushlabels",
            "value": {"format": "rle", "rle": mask_to_rle(square), "brushlabels": ["cat"]},
        },
        {
            **base,
            "id": "b",
            "from_name": "poly",
            "type": "polygonlabels",
            "value": {"points": mask_to_polygons(square)[0], "polygonlabels": ["dog"]},
        },
        {**base, "id": "zzz", "from_name": "caption", "type": "textarea", "value": {"text": ["orphan"]}},
    ]
    brush, polygon = annotation_regions({"annotation": {"result": results}})
    np.testing.assert_array_equal(brush.mask, square)
    np.testing.assert_array_equal(polygon.mask, square)
    assert (brush.labels, polygon.labels, brush.texts) == (["cat"], ["dog"], {})


def test_an_annotation_is_compared_with_the_prediction_it_started_from(config, fake_ls):
    """CREATED (recorded from Label Studio) corrected prediction 1: it kept region pred1's mask and
    replaced its caption, and the prediction also had a class mask the annotator deleted. So for
    zero-guidance: 1 edited region with 1 text edit; for classes, "sky": 1 deleted."""
    import json

    annotation = CREATED["annotation"]
    segment = next(r for r in annotation["result"] if r["type"] == "brushlabels")
    height, width = segment["original_height"], segment["original_width"]
    sky = np.zeros((height, width), bool)
    sky[:10] = True
    prediction = {
        "id": 1,
        "task": annotation["task"],
        "model_version": "zeroguide-v1",
        "result": [
            segment,
            {**next(r for r in annotation["result"] if r["type"] == "textarea"), "value": {"text": ["a disc"]}},
            {
                "id": "c1",
                "from_name": "class_mask",
                "to_name": "image",
                "type": "brushlabels",
                "original_width": width,
                "original_height": height,
                "value": {"format": "rle", "rle": mask_to_rle(sky), "brushlabels": ["sky"]},
            },
        ],
    }
    fake_ls.state.protected["/api/predictions/1/"] = json.dumps(prediction).encode()
    config = config.replace(label_studio_url=fake_ls.url, label_studio_api_key=fake_ls.state.pat)
    app, client, service = make_app(config)
    assert client.post("/webhook", json=CREATED).json["status"] == "stored"
    assert service.jobs.wait_idle(10)
    acceptance = client.get("/metrics").json["acceptance"]["1"]
    assert acceptance["tasks"] == 1
    zero_guidance = acceptance["methods"]["zero-guidance"]["segment"]
    assert (zero_guidance["unchanged"], zero_guidance["edited"], zero_guidance["deleted"]) == (0, 1, 0)
    assert (zero_guidance["texts"], zero_guidance["texts_edited"], zero_guidance["iou"]) == (1, 1, 1.0)
    assert acceptance["text_edits"] == [["a disc", "human-corrected caption"]]
    sky_counts = acceptance["methods"]["classes"]["sky"]
    assert (sky_counts["deleted"], sky_counts["intersection"], sky_counts["iou"]) == (1, 0, 0.0)
    assert acceptance["model_versions"]["zeroguide-v1"]["edited_share"] == pytest.approx(1 / 2)


def test_acceptance_needs_label_studio_credentials(config):
    app, client, service = make_app(config)  # no LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY
    client.post("/webhook", json=CREATED)
    assert service.jobs.wait_idle(10)
    metrics = client.get("/metrics").json
    assert metrics["acceptance"] == {} and metrics["acceptance_jobs"]["unavailable"] == 1


def test_a_parent_prediction_of_another_task_is_not_read_into_metrics(config, fake_ls):
    """A hostile webhook naming the prediction of another task (here task 99) as its parent: that
    prediction's regions and texts never reach /metrics."""
    import json

    fake_ls.state.protected["/api/predictions/1/"] = json.dumps(
        {"id": 1, "task": 99, "model_version": "v", "result": [], "secret": "x"}
    ).encode()
    config = config.replace(label_studio_url=fake_ls.url, label_studio_api_key=fake_ls.state.pat)
    app, client, service = make_app(config)
    assert client.post("/webhook", json=CREATED).json["status"] == "stored"  # the annotation itself is kept
    assert service.jobs.wait_idle(10)
    metrics = client.get("/metrics").json
    assert metrics["acceptance"] == {} and metrics["acceptance_jobs"]["mismatched"] == 1
