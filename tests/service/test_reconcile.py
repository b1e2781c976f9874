"""Corrections made while the backend missed their webhook are fetched from Label Studio's API
before training (the fake Label Studio of conftest.py plays the API)."""

from __future__ import annotations

import json

import pytest

from backend.service.annotation_store import AnnotationStore
from backend.service.ls_auth import LabelStudioAuth
from backend.service.reconcile import LabelStudioAnnotations, ReconcileError, reconcile_project

from .conftest import LEGACY_TOKEN

CONFIG = '<View><Image name="image" value="$image"/><BrushLabels name="c" toName="image"><Label value="cat"/></BrushLabels></View>'


def annotation(annotation_id, updated_at, task=1):
    return {"id": annotation_id, "task": task, "updated_at": updated_at, "result": [], "was_cancelled": False}


def serve_project(fake_ls, tasks):
    fake_ls.state.protected["/api/projects/7"] = json.dumps({"id": 7, "label_config": CONFIG}).encode()
    fake_ls.state.protected["/api/projects/7/export?exportType=JSON&download_all_tasks=false"] = json.dumps(
        tasks
    ).encode()


@pytest.fixture
def source(fake_ls):
    import requests

    return LabelStudioAnnotations(LabelStudioAuth(fake_ls.url, LEGACY_TOKEN), requests.Session())


def test_missed_versions_are_stored_and_deleted_ones_tombstoned(tmp_path, fake_ls, source):
    store = AnnotationStore(tmp_path)
    store.save(annotation(1, "2026-01-01T00:00:00Z"), event="ANNOTATION_CREATED", project_id=7)
    store.save(annotation(2, "2026-01-01T00:00:00Z"), event="ANNOTATION_CREATED", project_id=7)  # deleted in LS
    serve_project(
        fake_ls,
        [
            {
                "id": 1,
                "data": {"image": "/data/upload/7/a.png"},
                "annotations": [annotation(1, "2026-02-01T00:00:00Z")],
            },
            {
                "id": 3,
                "data": {"image": "/data/upload/7/b.png"},
                "annotations": [annotation(3, "2026-02-02T00:00:00Z", 3)],
            },
        ],
    )
    summary = reconcile_project(store, source, 7)
    assert (summary.annotations, summary.stored, summary.deleted) == (2, 2, 1)
    current = {r["annotation_id"]: r for r in store.current(7)}
    assert sorted(current) == [1, 3]
    assert current[1]["updated_at"] == "2026-02-01T00:00:00Z"  # the newer version, missed while down
    assert current[3]["task"]["data"]["image"] == "/data/upload/7/b.png" and current[3]["event"] == "RECONCILED"
    again = reconcile_project(store, source, 7)
    assert (again.stored, again.deleted) == (0, 0)  # idempotent: nothing twice
    assert all(auth == f"Token {LEGACY_TOKEN}" for _, path, auth in fake_ls.state.requests if path.startswith("/api"))


def test_an_unreachable_label_studio_changes_nothing(tmp_path, fake_ls, source):
    store = AnnotationStore(tmp_path)
    store.save(annotation(1, "2026-01-01T00:00:00Z"), event="ANNOTATION_CREATED", project_id=7)
    with pytest.raises(ReconcileError, match="answered 404"):  # no such project served
        reconcile_project(store, source, 7)
    assert [r["annotation_id"] for r in store.current(7)] == [1]


def test_training_reconciles_first(tmp_path, fake_ls, config):
    """START_TRAINING: the hook sees a correction whose webhook never arrived."""
    from backend.service.app import create_app

    from .conftest import FakeMethods, load_recorded

    serve_project(
        fake_ls, [{"id": 1, "data": {"image": "x.png"}, "annotations": [annotation(41, "2026-03-01T00:00:00Z")]}]
    )
    config = config.replace(label_studio_url=fake_ls.url, label_studio_api_key=LEGACY_TOKEN)
    seen = []
    app = create_app(config, methods=FakeMethods(), training_hook=lambda request: seen.append(request.annotations))
    client = app.test_client()
    event = load_recorded("webhook-start-training.json")["body"]
    event["project"]["id"] = 7
    client.post("/webhook", json=event)
    assert app.extensions["segmentation_service"].jobs.wait_idle(30)
    assert [record["annotation_id"] for record in seen[0]] == [41]
    assert client.get("/metrics").json["training"]["last_reconcile"]["stored"] == 1
