"""``python -m backend.prelabel`` end to end: a real Label Studio 1.23.2, a private local Ray with 2
workers, the ``tiny`` preset.

- a project of 8 uploaded images is pre-labelled: every task holds exactly one prediction, of the
  version the backend's ``/setup`` names, and it is what the backend's ``/predict`` answers;
- a second run imports nothing (and starts no worker);
- a run killed (SIGKILL, Ray included) after its first imports is rerun: it imports the rest, and
  still every task holds exactly one prediction;
- a task whose image is ``s3://...`` is fetched through the presign route of a local test server
  standing in front of Label Studio (``/tasks/<id>/presign/?fileuri=``: 303 to a "bucket" on another
  origin, which must not see the key), everything else being forwarded to the real Label Studio.

Each command is bounded (``RUN_TIMEOUT_S``); every process group started here is killed at the end.
"""

from __future__ import annotations

import base64
import collections
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.e2e.conftest import LABEL_CONFIG, synthetic_image
from tests.e2e.servers import REPO_ROOT, log_tail

pytestmark = pytest.mark.e2e
pytest.importorskip("ray")

RUN_TIMEOUT_S = 300
IMAGES = 8
# the killed run's project: enough images that the job is still busy when the test kills it (at
# about 2 images/s, 8 could all be imported between the poll that saw 2 and the kill on a busy machine)
KILLED_RUN_IMAGES = 24


def png(seed: int, width: int = 96, height: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(synthetic_image(width, height, seed=seed)).save(buffer, format="PNG")
    return buffer.getvalue()


def new_project(label_studio, title: str) -> int:
    reply = label_studio.api("POST", "/api/projects", json={"title": title, "label_config": LABEL_CONFIG.read_text()})
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def upload_images(label_studio, project_id: int, count: int, seed0: int = 0) -> list[int]:
    files = [(f"file{i}", (f"shapes-{i}.png", png(seed0 + i), "image/png")) for i in range(count)]
    reply = label_studio.api(
        "POST",
        f"/api/projects/{project_id}/import",
        params={"return_task_ids": "true", "commit_to_project": "true"},
        files=files,
    )
    assert reply.status_code == 201, reply.text
    return reply.json()["task_ids"]


def predictions_of(label_studio, project_id: int) -> list[dict]:
    reply = label_studio.api("GET", "/api/predictions/", params={"project": project_id})
    assert reply.status_code == 200, reply.text
    return reply.json()


def job_env(label_studio_url: str, api_key: str, model_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LABEL_STUDIO_URL=label_studio_url,
        LABEL_STUDIO_API_KEY=api_key,
        MODEL_PRESET="tiny",
        MODEL_DIR=str(model_dir),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        LOG_LEVEL="INFO",
        RAY_USAGE_STATS_ENABLED="0",
    )
    env.update(extra)
    return env


def start_job(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "backend.prelabel", "--workers", "2", "--no-progress", "--json", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        start_new_session=True,  # its own process group: Ray's processes are killed with it
    )


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def run_job(args: list[str], env: dict[str, str], log_path: Path) -> dict:
    process = start_job(args, env, log_path)
    try:
        stdout, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_group(process)
        pytest.fail(f"the job ran past {RUN_TIMEOUT_S} s\n{log_tail(log_path)}", pytrace=False)
    finally:
        kill_group(process)  # whatever of its group is left
    lines = stdout.decode().strip().splitlines()
    assert lines, f"no summary (exit {process.returncode})\n{log_tail(log_path)}"
    summary = json.loads(lines[-1])
    summary["exit_code"] = process.returncode
    return summary


@pytest.fixture(scope="module")
def job_dir(e2e_workdir: Path) -> Path:
    folder = e2e_workdir / "prelabel-ray"
    folder.mkdir(exist_ok=True)
    return folder


def test_a_project_is_prelabelled_once_and_a_second_run_imports_nothing(
    label_studio, api_keys, backend_for, job_dir, logs_dir
):
    project_id = new_project(label_studio, "prelabel ray")
    task_ids = upload_images(label_studio, project_id, IMAGES)
    env = job_env(label_studio.url, api_keys["pat"], job_dir / "model_dir")
    log_path = logs_dir / "prelabel-ray.log"
    log_path.unlink(missing_ok=True)

    first = run_job(["--project", str(project_id)], env, log_path)
    assert first["status"] == "done" and first["exit_code"] == 0, log_tail(log_path)
    assert first["imported"] == IMAGES and first["failed"] == [] and first["skipped"] == 0
    version = first["model_version"]

    # the version the backend itself gives this label config
    backend = backend_for("legacy")
    setup = requests.post(
        f"{backend.url}/setup",
        json={"project": f"{project_id}.{int(time.time())}", "schema": LABEL_CONFIG.read_text()},
        timeout=30,
    )
    assert setup.status_code == 200 and setup.json()["model_version"] == version

    stored = predictions_of(label_studio, project_id)
    per_task = collections.Counter((p["task"], p["model_version"]) for p in stored)
    assert sorted(task for task, _ in per_task) == sorted(task_ids)
    assert set(per_task.values()) == {1} and {v for _, v in per_task} == {version}
    assert all(any(r["type"] == "brushlabels" for r in p["result"]) for p in stored), "an empty prediction"

    # what the backend's /predict answers for a task is what the job imported
    from tests.e2e.test_prelabelling import region_signatures

    task = label_studio.api("GET", f"/api/tasks/{task_ids[0]}").json()
    body = {"tasks": [task], "project": f"{project_id}.{int(time.time())}", "label_config": LABEL_CONFIG.read_text()}
    fresh = requests.post(f"{backend.url}/predict", json=body, timeout=120).json()["results"][0]
    imported = next(p for p in stored if p["task"] == task_ids[0])
    assert fresh["model_version"] == imported["model_version"]
    assert region_signatures(fresh["result"]) == region_signatures(imported["result"])

    second = run_job(["--project", str(project_id)], env, log_path)
    assert second["status"] == "done" and second["imported"] == 0 and second["skipped"] == IMAGES
    assert len(predictions_of(label_studio, project_id)) == IMAGES
    assert "Ray workers" not in log_tail(log_path, 600), "a run with nothing to do started workers"


def test_a_killed_run_resumes_and_imports_nothing_twice(label_studio, api_keys, job_dir, logs_dir):
    project_id = new_project(label_studio, "prelabel ray killed")
    task_ids = upload_images(label_studio, project_id, KILLED_RUN_IMAGES, seed0=100)
    env = job_env(label_studio.url, api_keys["legacy"], job_dir / "model_dir-killed")
    log_path = logs_dir / "prelabel-ray-killed.log"
    log_path.unlink(missing_ok=True)

    process = start_job(["--project", str(project_id), "--batch-size", "1", "--import-every", "1"], env, log_path)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            if len(predictions_of(label_studio, project_id)) >= 2:
                break
            time.sleep(0.3)
        assert process.poll() is None, f"the job ended before it could be killed\n{log_tail(log_path)}"
    finally:
        kill_group(process)  # SIGKILL: the driver and its local Ray, mid-run
    done_before = len(predictions_of(label_studio, project_id))
    assert 2 <= done_before < KILLED_RUN_IMAGES, done_before

    rerun = run_job(["--project", str(project_id)], env, log_path)
    assert rerun["status"] == "done" and rerun["failed"] == [], log_tail(log_path)
    assert rerun["skipped"] == done_before and rerun["imported"] == KILLED_RUN_IMAGES - done_before
    stored = predictions_of(label_studio, project_id)
    assert sorted(p["task"] for p in stored) == sorted(task_ids), "a task lacks a prediction or holds two"


class PresignFront(ThreadingHTTPServer):
    """Label Studio's presign route for ``s3://e2e-bucket/...`` (303 to a local "bucket" on another
    origin, like a real presigned URL); every other request is forwarded to the real Label Studio."""

    daemon_threads = True

    def __init__(self, label_studio_url: str, objects: dict[str, bytes]) -> None:
        self.label_studio_url = label_studio_url
        self.objects = objects
        self.presigned: list[tuple[str, bool]] = []  # (uri, the key came with it)
        self.bucket_requests: list[tuple[str, bool]] = []  # (path, a key came with it)
        super().__init__(("127.0.0.1", 0), _FrontHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FrontHandler(BaseHTTPRequestHandler):
    server: PresignFront

    def log_message(self, *args) -> None:
        pass

    def _reply(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        if parts.path.startswith("/bucket/"):
            self.server.bucket_requests.append((parts.path, bool(self.headers.get("Authorization"))))
            uri = "s3://e2e-bucket/" + urllib.parse.unquote(parts.path[len("/bucket/") :])
            if uri in self.server.objects and "X-Amz-Signature=test" in parts.query:
                return self._reply(200, self.server.objects[uri], {"Content-Type": "image/png"})
            return self._reply(403, b"signature does not match")
        if parts.path.startswith("/tasks/") and parts.path.endswith("/presign/"):
            fileuri = urllib.parse.parse_qs(parts.query).get("fileuri", [""])[0]
            uri = base64.urlsafe_b64decode(fileuri.encode()).decode()
            # the key must come with it: ask the real Label Studio whether it is good
            check = requests.get(
                self.server.label_studio_url + "/api/current-user/whoami",
                headers={"Authorization": self.headers.get("Authorization", "")},
                timeout=30,
            )
            self.server.presigned.append((uri, check.status_code == 200))
            if check.status_code != 200:
                return self._reply(401, b'{"detail": "Authentication credentials were not provided."}')
            if uri not in self.server.objects:
                return self._reply(404, b"{}")
            key = urllib.parse.quote(uri[len("s3://e2e-bucket/") :])
            location = f"http://localhost:{self.server.server_address[1]}/bucket/{key}?X-Amz-Signature=test"
            return self._reply(303, b"", {"Location": location})
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
        answer = requests.request(
            self.command,
            self.server.label_studio_url + self.path,
            headers=headers,
            data=body,
            allow_redirects=False,
            timeout=120,
        )
        passed = {k: v for k, v in answer.headers.items() if k.lower() in ("content-type", "location")}
        self._reply(answer.status_code, answer.content, passed)


def test_a_cloud_storage_task_is_fetched_through_the_presign_route(label_studio, api_keys, job_dir, logs_dir):
    objects = {"s3://e2e-bucket/photos/cat one.png": png(7), "s3://e2e-bucket/photos/dog.png": png(8)}
    front = PresignFront(label_studio.url, objects)
    thread = threading.Thread(target=front.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        project_id = new_project(label_studio, "prelabel cloud")
        reply = label_studio.api(
            "POST", f"/api/projects/{project_id}/import", json=[{"image": uri} for uri in sorted(objects)]
        )
        assert reply.status_code == 201, reply.text
        env = job_env(front.url, api_keys["pat"], job_dir / "model_dir-cloud", IMAGE_ALLOWED_HOSTS="localhost")
        log_path = logs_dir / "prelabel-ray-cloud.log"
        log_path.unlink(missing_ok=True)
        summary = run_job(["--project", str(project_id)], env, log_path)
    finally:
        front.shutdown()
        front.server_close()
    assert summary["status"] == "done" and summary["failed"] == [], log_tail(log_path)
    assert summary["imported"] == 2
    assert sorted(uri for uri, _ in front.presigned) == sorted(objects)
    assert all(with_key for _, with_key in front.presigned), "the presign route was asked without the key"
    assert front.bucket_requests and not any(
        with_key for _, with_key in front.bucket_requests
    ), "the key went to the bucket"
    stored = predictions_of(label_studio, project_id)
    assert len(stored) == 2 and {p["model_version"] for p in stored} == {summary["model_version"]}
    for prediction in stored:
        brush = next(r for r in prediction["result"] if r["type"] == "brushlabels")
        assert (brush["original_width"], brush["original_height"]) == (96, 64)
