"""Load test of the running service: concurrent ``/predict``, ``/health`` at 1 Hz, memory over time.

Starts ``python -m backend``'s gunicorn server (one worker, ``GUNICORN_THREADS`` threads, the
models in a child process) on 127.0.0.1 in a subprocess, serves one PNG from a local HTTP server,
and for ``--duration`` seconds keeps ``--concurrency`` clients posting one-task ``/predict``
requests back to back while another client asks ``/health`` once a second. Reports latency
percentiles (p50/p99/max) of both, the status codes, failed tasks, and the resident memory (RSS)
of the gunicorn master, its worker and the model process, sampled every 5 s: the growth is the
last sample minus the first sample taken after a warm-up (10 % of the run, at least 5 s).

Methods:

* ``fake`` (default): the test fakes (``tests/service/process_fakes.py``) in a real model process;
  each call sleeps ``--work-tenths`` tenths of a second (default 2), so the figures are the
  service's own: HTTP, queueing, the pipe, the in-flight limit.
* ``tiny``: the ``tiny`` preset (random weights) with the repository's ``label_config.xml``:
  real model code, a few seconds per image on a small CPU.

Bounded on purpose: 1-32 clients, at most 120 s unless ``--long`` (600 s, the issue's ten
minutes), only 127.0.0.1.

Usage::

    python bench/bench_service_load.py [--methods fake|tiny] [--concurrency 8] [--duration 60]
        [--long] [--threads 8] [--work-tenths 2] [--out bench/results/service_load.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MAX_CONCURRENCY = 32
MAX_SHORT_DURATION_S = 120.0
LONG_DURATION_S = 600.0
RSS_EVERY_S = 5.0


# ---- the server (a subprocess) -------------------------------------------------------------


def serve(methods: str) -> None:
    """Run gunicorn like ``python -m backend``; ``fake`` swaps in the test fakes."""
    import logging

    from backend.service.config import ServiceConfig
    from backend.service.server import LOG_FORMAT, GunicornServer, import_libraries

    config = ServiceConfig.from_env()
    logging.basicConfig(level=config.log_level, format=LOG_FORMAT)
    import_libraries(config)

    class BenchServer(GunicornServer):
        def load(self):
            from backend.service.app import create_app

            if methods == "tiny":
                return create_app(self.service_config)
            from backend.service.model_process import ProcessModelRuntime
            from tests.service.process_fakes import quick_library

            runtime = ProcessModelRuntime(self.service_config, quick_library)
            return create_app(self.service_config, runtime=runtime)

    BenchServer(config).run()


# ---- the driver ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sample_png(width: int = 320, height: int = 240) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2, 0] = 200
    image[:, width // 2 :, 2] = 200
    image = np.clip(image.astype(int) + rng.integers(0, 40, image.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class ImageHost(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, body: bytes) -> None:
        body_bytes = body

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body_bytes)))
                self.end_headers()
                self.wfile.write(body_bytes)

        super().__init__(("127.0.0.1", 0), Handler)


def process_tree(root: int) -> dict[str, int]:
    """``{"master": pid, "worker": pid, "model": pid}`` as far as they exist (Linux /proc)."""

    def children(pid: int) -> list[int]:
        found = []
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as handle:
                    found.extend(int(child) for child in handle.read().split())
        except OSError:
            pass
        return found

    tree = {"master": root}
    workers = children(root)
    if workers:
        tree["worker"] = workers[0]
        models = [child for child in children(workers[0]) if "spawn_main" in _cmdline(child)]
        if models:
            tree["model"] = models[-1]
    return tree


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def percentile(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def latency_summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50_s": None if not values else round(percentile(values, 50), 4),
        "p99_s": None if not values else round(percentile(values, 99), 4),
        "max_s": None if not values else round(max(values), 4),
    }


def label_config(methods: str, work_tenths: int) -> str:
    if methods == "tiny":
        return (REPO / "label_config.xml").read_text()
    from tests.service.process_fakes import SLEEP_CLUSTERS

    settings = json.dumps({"n_clusters": SLEEP_CLUSTERS, "crf_iterations": work_tenths})
    return (
        '<View><Image name="image" value="$image"/>'
        f'<BrushLabels name="segment" toName="image" model_mode="zero-guidance" model_settings=\'{settings}\'>'
        '<Label value="segment"/></BrushLabels></View>'
    )


def run(args: argparse.Namespace) -> dict:
    import requests

    port = free_port()
    host = ImageHost(sample_png())
    threading.Thread(target=host.serve_forever, daemon=True).start()
    image_url = f"http://127.0.0.1:{host.server_address[1]}/image.png"
    state = tempfile.mkdtemp(prefix="bench-service-load-")
    env = dict(
        os.environ,
        HOST="127.0.0.1",
        IMAGE_ALLOWED_HOSTS="127.0.0.1",  # the local image host (SSRF protection is on)
        PORT=str(port),
        MODEL_PRESET="tiny",
        MODEL_DIR=state,
        DEVICE="cpu",
        GUNICORN_THREADS=str(args.threads),
        LOG_LEVEL="WARNING",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TRAINING_HOOK="none",
    )
    log_path = Path(state) / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--methods", args.methods],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited ({server.returncode}); see {log_path}")
            try:
                health = requests.get(f"{url}/health", timeout=2).json()
                if health.get("models") == "ready":
                    break
            except (requests.RequestException, ValueError):
                pass
            if time.monotonic() - started > 300:
                raise SystemExit(f"models not ready after 300 s; see {log_path}")
            time.sleep(0.5)
        ready_after = time.monotonic() - started
        body_config = label_config(args.methods, args.work_tenths)
        body = {"tasks": [{"id": 1, "data": {"image": image_url}}], "label_config": body_config, "project": "1.1"}
        requests.post(f"{url}/predict", json=body, timeout=600).raise_for_status()  # warm-up

        stop = threading.Event()
        lock = threading.Lock()
        predicts: list[tuple[float, float, int, int]] = []  # at, latency, status, failed tasks
        healths: list[tuple[float, float, int]] = []
        samples: list[dict] = []
        t0 = time.monotonic()

        def client() -> None:
            session = requests.Session()
            while not stop.is_set():
                begun = time.monotonic()
                try:
                    reply = session.post(f"{url}/predict", json=body, timeout=600)
                    status = reply.status_code
                    failed = len(reply.json().get("warnings") or []) if status == 200 else 0
                except requests.RequestException:
                    status, failed = 0, 0
                with lock:
                    predicts.append((begun - t0, time.monotonic() - begun, status, failed))
                if status == 503:
                    time.sleep(min(5.0, float(reply.headers.get("Retry-After", 1))))

        def health_client() -> None:
            session = requests.Session()
            while not stop.is_set():
                begun = time.monotonic()
                try:
                    status = session.get(f"{url}/health", timeout=10).status_code
                except requests.RequestException:
                    status = 0
                healths.append((begun - t0, time.monotonic() - begun, status))
                stop.wait(max(0.0, 1.0 - (time.monotonic() - begun)))

        def sampler() -> None:
            while True:
                tree = process_tree(server.pid)
                samples.append({"t_s": round(time.monotonic() - t0, 1), **{k: rss_mb(v) for k, v in tree.items()}})
                if stop.wait(RSS_EVERY_S):
                    return

        threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
        threads += [threading.Thread(target=health_client), threading.Thread(target=sampler)]
        for thread in threads:
            thread.start()
        time.sleep(args.duration)
        stop.set()
        for thread in threads:
            thread.join(660)
        elapsed = time.monotonic() - t0
        final_tree = process_tree(server.pid)
        samples.append({"t_s": round(elapsed, 1), **{k: rss_mb(v) for k, v in final_tree.items()}})
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
        host.shutdown()

    warm_up_s = max(5.0, 0.1 * args.duration)
    after_warm_up = [s for s in samples if s["t_s"] >= warm_up_s] or samples
    growth = {}
    for role in ("master", "worker", "model"):
        values = [s[role] for s in after_warm_up if s.get(role) is not None]
        if values:
            growth[role] = {
                "first_mb": round(values[0], 1),
                "last_mb": round(values[-1], 1),
                "max_mb": round(max(values), 1),
                "growth_mb": round(values[-1] - values[0], 1),
            }
    statuses: dict[str, int] = {}
    for _, _, status, _ in predicts:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    ok = [latency for _, latency, status, _ in predicts if status == 200]
    return {
        "what": "bench/bench_service_load.py: gunicorn (1 worker) + model process on 127.0.0.1",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
        "python": platform.python_version(),
        "methods": args.methods,
        "work_per_call_s": args.work_tenths / 10 if args.methods == "fake" else None,
        "concurrency": args.concurrency,
        "gunicorn_threads": args.threads,
        "duration_s": round(elapsed, 1),
        "models_ready_after_s": round(ready_after, 1),
        "predict": {
            "requests": len(predicts),
            "per_s": round(len(predicts) / elapsed, 2),
            "status_counts": statuses,
            "tasks_failed": sum(failed for *_, failed in predicts),
            "latency_200": latency_summary(ok),
            "latency_all": latency_summary([latency for _, latency, _, _ in predicts]),
        },
        "health": {
            "latency": latency_summary([latency for _, latency, _ in healths]),
            "non_200": sum(1 for *_, status in healths if status != 200),
            "over_1s": sum(1 for _, latency, _ in healths if latency >= 1.0),
        },
        "rss_mb": growth,
        "rss_samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", choices=("fake", "tiny"), default="fake")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent /predict clients (1-32)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (at most 120 without --long)")
    parser.add_argument("--long", action="store_true", help="run the issue's 10 minutes (600 s)")
    parser.add_argument("--threads", type=int, default=8, help="GUNICORN_THREADS of the server")
    parser.add_argument("--work-tenths", type=int, default=2, help="fake methods: tenths of a second per call (1-50)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "service_load.json")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.methods)
        return 0
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        parser.error(f"--concurrency must be in 1..{MAX_CONCURRENCY}")
    if not 1 <= args.work_tenths <= 50:
        parser.error("--work-tenths must be in 1..50")
    if args.long:
        args.duration = LONG_DURATION_S
    elif not 0 < args.duration <= MAX_SHORT_DURATION_S:
        parser.error(f"--duration must be in (0, {MAX_SHORT_DURATION_S:g}] (use --long for 600 s)")
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    summary = {key: report[key] for key in ("methods", "concurrency", "gunicorn_threads", "duration_s")}
    print(json.dumps(summary))
    print("predict:", json.dumps(report["predict"]))
    print("health:", json.dumps(report["health"]))
    print("rss_mb:", json.dumps(report["rss_mb"]))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
