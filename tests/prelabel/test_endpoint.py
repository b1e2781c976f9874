"""``POST /prelabel``: the backend runs the job in the background with its own models; progress in
``GET /prelabel`` and ``/metrics``; the predictions are those of ``/predict``."""

from __future__ import annotations

import time

from backend.service.app import create_app
from tests.service.conftest import FakeMethods

from .test_job import SlowMethods


def wait_for_end(client, project="1", timeout_s=30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get("/prelabel").json["jobs"].get(project)
        if job and job["status"] in ("done", "stopped", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"the job did not end: {client.get('/prelabel').json}")


def test_prelabel_request_runs_the_job_in_the_background(fake_ls, config):
    client = create_app(config, methods=FakeMethods()).test_client()
    reply = client.post("/prelabel", json={"project": 1})
    assert reply.status_code == 202 and reply.json["project"] == 1
    job = wait_for_end(client)
    assert job["status"] == "done", job
    assert job["imported"] == 10 and job["failed"] == 0 and job["failed_tasks"] == []
    assert sorted(p["task"] for p in fake_ls.state.predictions) == list(range(1, 11))
    # the version is the one /setup answers for this project's label config
    setup = client.post("/setup", json={"project": "1.1795304640", "schema": fake_ls.state.label_config})
    assert {p["model_version"] for p in fake_ls.state.predictions} == {setup.json["model_version"]}
    metrics = client.get("/metrics").json
    assert metrics["prelabel"]["1"]["imported"] == 10 and metrics["prelabel"]["1"]["status"] == "done"
    # again: nothing to do
    assert client.post("/prelabel", json={"project": "1.1795304640"}).status_code == 202
    assert wait_for_end(client)["skipped"] == 10
    assert len(fake_ls.state.predictions) == 10


def test_prelabel_request_conflicts_stop_and_errors(fake_ls, config):
    client = create_app(config, methods=SlowMethods()).test_client()
    assert client.post("/prelabel", json={"project": 1, "methods": "zero-guidance"}).status_code == 202
    second = client.post("/prelabel", json={"project": 1})
    assert second.status_code == 409 and "is running" in second.json["error"]
    assert client.delete("/prelabel?project=1").status_code == 200
    job = wait_for_end(client)
    assert job["status"] == "stopped" and job["imported"] < 10
    assert client.post("/prelabel", json={"project": "x"}).status_code == 400
    assert "unknown method" in client.post("/prelabel", json={"project": 1, "methods": "sam"}).json["error"]
    assert client.delete("/prelabel?project=9").status_code == 400
    bare = create_app(config.replace(label_studio_url=None, label_studio_api_key=None), methods=FakeMethods())
    reply = bare.test_client().post("/prelabel", json={"project": 1})
    assert reply.status_code == 400 and "LABEL_STUDIO_API_KEY" in reply.json["error"]
