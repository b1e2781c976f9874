"""A small Label Studio API on 127.0.0.1 for the pre-labelling tests.

Implements what the job calls, with Label Studio 1.23's shapes (checked against the real one in
tests/e2e/test_prelabel_ray.py): ``GET /api/projects/<id>``, ``GET /api/tasks`` (pages, the
``predictions_model_versions`` column, 404 past the last page), ``GET /api/tasks/<id>``,
``GET /api/predictions/?task=``, ``POST /api/projects/<id>/import/predictions``, uploads under
``/data/upload/`` (legacy token), and the presign routes ``/tasks/<id>/presign/?fileuri=`` and
``/projects/<id>/presign/?fileuri=`` answering 303 to a "bucket" path (no key needed there; a request
that brings one is recorded as a leak).
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LEGACY_TOKEN = "a" * 40


@dataclass
class FakeState:
    label_config: str = ""
    project_id: int = 1
    tasks: dict[int, dict] = field(default_factory=dict)  # id -> data
    predictions: list[dict] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # /data/upload/... -> bytes (needs the key)
    bucket: dict[str, bytes] = field(default_factory=dict)  # "s3://b/k" -> bytes, behind the presign route
    fail_imports: int = 0  # the next N imports answer 500 without storing
    store_then_fail_imports: int = 0  # the next N imports store, then answer 500 (a lost reply)
    versions_column: str = "sqlite"  # sqlite | cut (the column at Label Studio's length limit)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    key_leaks: list[str] = field(default_factory=list)
    imports: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def versions_of(self, task_id: int) -> list[str]:
        return [p["model_version"] for p in self.predictions if p["task"] == task_id]


class _Handler(BaseHTTPRequestHandler):
    server: "FakeLabelStudioAPI"

    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _bytes(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Token {LEGACY_TOKEN}"

    def do_GET(self) -> None:
        state = self.server.state
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        path = parts.path
        state.requests.append(("GET", self.path, self.headers.get("Authorization")))
        if path.startswith("/bucket/"):
            if self.headers.get("Authorization"):
                state.key_leaks.append(self.path)
            uri = "s3://" + path[len("/bucket/") :]
            if uri in state.bucket and query.get("X-Amz-Signature") == "sig":
                return self._bytes(200, state.bucket[uri])
            return self._json(403, {"detail": "bad signature"})
        if not self._authorized():
            return self._json(401, {"detail": "Authentication credentials were not provided."})
        if path.startswith("/data/upload/"):
            return self._bytes(200, state.files[path]) if path in state.files else self._json(404, {})
        if path.endswith("/presign/") and path.startswith(("/tasks/", "/projects/")):
            uri = base64.urlsafe_b64decode(query.get("fileuri", "").encode()).decode()
            if not uri.startswith("s3://") or uri not in state.bucket:
                return self._json(404, {})
            self.send_response(303)
            # another origin (localhost, not 127.0.0.1), like a real bucket's
            bucket = f"http://localhost:{self.server.server_address[1]}"
            self.send_header("Location", f"{bucket}/bucket/{uri[len('s3://'):]}?X-Amz-Signature=sig")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if path == f"/api/projects/{state.project_id}":
            return self._json(200, {"id": state.project_id, "label_config": state.label_config})
        if path == "/api/tasks":
            return self._task_page(query)
        if path.startswith("/api/tasks/"):
            task_id = int(path.rstrip("/").rsplit("/", 1)[1])
            if task_id not in state.tasks:
                return self._json(404, {"detail": "Not found."})
            with state.lock:
                predictions = [p for p in state.predictions if p["task"] == task_id]
            return self._json(
                200,
                {"id": task_id, "data": state.tasks[task_id], "project": state.project_id, "predictions": predictions},
            )
        if path == "/api/predictions/":
            with state.lock:
                found = [p for p in state.predictions if p["task"] == int(query["task"])]
            return self._json(200, found)
        return self._json(404, {"detail": "Not found."})

    def _task_page(self, query: dict) -> None:
        state = self.server.state
        assert int(query["project"]) == state.project_id
        page, size = int(query["page"]), int(query["page_size"])
        ids = sorted(state.tasks)
        chunk = ids[(page - 1) * size : page * size]
        if page > 1 and not chunk:
            return self._json(404, {"detail": "Invalid page."})
        annotated = "predictions_model_versions" in (query.get("query") or "")
        tasks = []
        for task_id in chunk:
            with state.lock:
                versions = sorted(set(state.versions_of(task_id)))
            column = ",".join(versions) if annotated else ""
            if state.versions_column == "cut" and versions:
                column = (column + "," + "x" * 600)[:500]
            tasks.append({"id": task_id, "data": state.tasks[task_id], "predictions_model_versions": column})
        return self._json(200, {"total": len(ids), "tasks": tasks, "total_annotations": 0, "total_predictions": 0})

    def do_POST(self) -> None:
        state = self.server.state
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
        state.requests.append(("POST", self.path, self.headers.get("Authorization")))
        if not self._authorized():
            return self._json(401, {"detail": "Authentication credentials were not provided."})
        if self.path == f"/api/projects/{state.project_id}/import/predictions":
            with state.lock:
                state.imports += 1
                if state.fail_imports > 0:
                    state.fail_imports -= 1
                    return self._json(500, {"detail": "server error"})
                for item in body:
                    assert item["task"] in state.tasks, item["task"]
                    state.predictions.append(
                        {
                            "task": item["task"],
                            "model_version": item["model_version"],
                            "result": item["result"],
                            "score": item.get("score"),
                        }
                    )
                if state.store_then_fail_imports > 0:
                    state.store_then_fail_imports -= 1
                    return self._json(500, {"detail": "lost reply"})
            return self._json(201, {"created": len(body)})
        return self._json(404, {"detail": "Not found."})


class FakeLabelStudioAPI(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = FakeState()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> "FakeLabelStudioAPI":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
        self.server_close()
