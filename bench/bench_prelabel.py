"""Images/s of ``python -m backend.prelabel`` (local Ray, 1 and 2 workers) against Label Studio's
"Retrieve predictions" through the backend, on the same machine and the same images.

Starts a real Label Studio 1.23.2 (``$LS_VENV``, default ``.ls-venv``; scripts/install-label-studio.sh)
and the backend (``python -m backend``) on 127.0.0.1, with the ``tiny`` preset: the ``cpu`` preset's
architectures at tiny widths with seeded random weights (the real weights cannot be fetched here, so
the absolute figures are small; the ratios are the point). For each way, a fresh project of the same
``--images`` synthetic PNGs (``--size``, default 640x480) is pre-labelled from scratch:

* ``retrieve``: the backend connected to the project (``POST /api/ml``), then Label Studio's
  ``retrieve_tasks_predictions`` action over every task, ``--retrieve-batch`` tasks an action (Label
  Studio gives each ``/predict`` call ``ML_TIMEOUT_PREDICT``, 100 s by default);
* ``ray-1``, ``ray-2``: ``python -m backend.prelabel --workers N`` on a private local Ray.

Reported per way: wall time from start to every task holding a prediction (``end_to_end``), and for
the job its own rate once the workers' models are loaded (``steady``, the job's images/s).
Bounded: at most 64 images, each run killed after ``--timeout`` s; only 127.0.0.1.

Usage::

    python bench/bench_prelabel.py [--images 16] [--size 640x480] [--out bench/results/prelabel.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import synthetic_image  # noqa: E402
from tests.e2e.servers import start_backend, start_label_studio  # noqa: E402

MAX_IMAGES = 64


def png(seed: int, width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(synthetic_image(width, height, seed=seed)).save(buffer, format="PNG")
    return buffer.getvalue()


class Studio:
    def __init__(self, server) -> None:
        self.server = server

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 600)
        headers = {"Authorization": f"Token {self.server.legacy_token}"}
        return requests.request(method, self.server.url + path, headers=headers, **kwargs)

    def project(self, title: str, images: list[bytes]) -> tuple[int, list[int]]:
        config = (REPO / "label_config.xml").read_text()
        project_id = self.api("POST", "/api/projects", json={"title": title, "label_config": config}).json()["id"]
        files = [(f"f{i}", (f"img-{i}.png", data, "image/png")) for i, data in enumerate(images)]
        reply = self.api(
            "POST",
            f"/api/projects/{project_id}/import",
            params={"return_task_ids": "true", "commit_to_project": "true"},
            files=files,
        )
        reply.raise_for_status()
        return project_id, reply.json()["task_ids"]

    def predicted(self, project_id: int) -> int:
        predictions = self.api("GET", "/api/predictions/", params={"project": project_id}).json()
        return len({p["task"] for p in predictions if p.get("result")})


def run_retrieve(studio: Studio, backend_url: str, images: list[bytes], batch: int) -> dict:
    project_id, task_ids = studio.project("bench retrieve", images)
    reply = studio.api("POST", "/api/ml", json={"url": backend_url, "project": project_id, "title": "bench"})
    reply.raise_for_status()
    started = time.monotonic()
    for start in range(0, len(task_ids), batch):
        selected = {"all": False, "included": task_ids[start : start + batch]}
        reply = studio.api(
            "POST",
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": project_id},
            json={"selectedItems": selected},
        )
        reply.raise_for_status()
    seconds = time.monotonic() - started
    done = studio.predicted(project_id)
    return {
        "way": "retrieve",
        "images": len(images),
        "predicted": done,
        "end_to_end_s": round(seconds, 1),
        "end_to_end_images_per_s": round(done / seconds, 3),
        "steady_images_per_s": None,
    }


def run_job(studio: Studio, workers: int, images: list[bytes], model_dir: Path, timeout_s: float) -> dict:
    project_id, _ = studio.project(f"bench ray {workers}", images)
    env = dict(os.environ)
    env.update(
        LABEL_STUDIO_URL=studio.server.url,
        LABEL_STUDIO_API_KEY=studio.server.legacy_token,
        MODEL_PRESET="tiny",
        MODEL_DIR=str(model_dir),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        LOG_LEVEL="WARNING",
    )
    command = [
        sys.executable,
        "-m",
        "backend.prelabel",
        "--project",
        str(project_id),
        "--workers",
        str(workers),
        "--no-progress",
        "--json",
    ]
    started = time.monotonic()
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    finally:
        try:
            os.killpg(process.pid, 9)
        except ProcessLookupError:
            pass
    seconds = time.monotonic() - started
    summary = json.loads(stdout.decode().strip().splitlines()[-1])
    if summary["status"] != "done":
        raise RuntimeError(f"job with {workers} workers: {summary}\n{stderr.decode()[-2000:]}")
    done = studio.predicted(project_id)
    return {
        "way": f"ray-{workers}",
        "images": len(images),
        "predicted": done,
        "end_to_end_s": round(seconds, 1),
        "end_to_end_images_per_s": round(done / seconds, 3),
        "steady_images_per_s": round(summary["images_per_s"], 3),
        "job_seconds": summary["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--retrieve-batch", type=int, default=8, help="tasks per Retrieve predictions action")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run at most")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "prelabel.json")
    args = parser.parse_args()
    count = max(1, min(MAX_IMAGES, args.images))
    width, height = (int(v) for v in args.size.lower().split("x"))
    images = [png(seed, width, height) for seed in range(count)]
    ls_venv = Path(os.environ.get("LS_VENV", REPO / ".ls-venv"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-prelabel-") as scratch:
        scratch = Path(scratch)
        server = start_label_studio(ls_venv, scratch / "ls", scratch / "ls.log", template_dir=ls_venv / "e2e-template")
        backend = None
        try:
            studio = Studio(server)
            backend = start_backend(
                Path(sys.executable),
                scratch / "backend",
                server.url,
                server.legacy_token,
                log_path=scratch / "backend.log",
                extra_env={"LOG_LEVEL": "WARNING"},
            )
            rows.append(run_retrieve(studio, backend.url, images, args.retrieve_batch))
            print(rows[-1], flush=True)
            backend.process.stop()  # the job's workers get the machine to themselves, as the backend did
            backend = None
            for workers in (1, 2):
                rows.append(run_job(studio, workers, images, scratch / f"model_dir-{workers}", args.timeout))
                print(rows[-1], flush=True)
        finally:
            if backend is not None:
                backend.process.stop()
            server.process.stop()
    load = os.getloadavg()[0]
    result = {
        "what": "bench/bench_prelabel.py: Retrieve predictions through the backend vs python -m backend.prelabel",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} at the end",
        "python": platform.python_version(),
        "preset": "tiny (the cpu preset's architectures, tiny widths, random weights)",
        "image_size": f"{width}x{height}",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| way | images | end to end (s) | images/s end to end | images/s steady |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['way']} | {row['predicted']}/{row['images']} | {row['end_to_end_s']} | "
            f"{row['end_to_end_images_per_s']} | {row['steady_images_per_s'] or '-'} |"
        )


if __name__ == "__main__":
    main()
