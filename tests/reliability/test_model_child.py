"""The model child under failure, over real HTTP on 127.0.0.1 (fake methods in a real child process):
a hung call meets its deadline, kill -9 under load, the in-flight limit, the restart budget, and
training next to a stuck call. Small settings keep it short (about a minute on 2 cores).

The figures are printed and written to bench/results/reliability-child.json (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import threading
import time
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

from backend.service.app import create_app
from backend.service.config import ServiceConfig
from backend.service.model_process import ProcessModelRuntime
from tests.service.conftest import FakeLabelStudio, load_recorded, png_bytes, sample_image
from tests.service.process_fakes import HANG_CLUSTERS, SLEEP_CLUSTERS, quick_library, sleepy_training_hook

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "reliability-child.json"
FIGURES: dict[str, dict] = {}


def zero_guidance_config(settings: dict | None = None) -> str:
    """A label config with one zero-guidance tag only: when its call fails, the whole task fails."""
    attribute = f" model_settings='{json.dumps(settings)}'" if settings else ""
    return (
        '<View><Image name="image" value="$image"/>'
        f'<BrushLabels name="segment" toName="image" model_mode="zero-guidance"{attribute}>'
        '<Label value="segment"/></BrushLabels></View>'
    )


PLAIN = zero_guidance_config()
HANG = zero_guidance_config({"n_clusters": HANG_CLUSTERS})


def sleeping(tenths: int) -> str:
    return zero_guidance_config({"n_clusters": SLEEP_CLUSTERS, "crf_iterations": tenths})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50_s": round(percentile(values, 50), 4),
        "p99_s": round(percentile(values, 99), 4),
        "max_s": round(max(values), 4) if values else None,
    }


@pytest.fixture(scope="module", autouse=True)
def figures_file(pytestconfig):
    yield
    if not FIGURES:
        return
    try:  # a partial run (-k) updates its own tests' figures only
        earlier = json.loads(RESULTS.read_text()).get("tests", {})
    except (OSError, ValueError):
        earlier = {}
    report = {
        "what": "tests/reliability/test_model_child.py: fake methods in a real model process, real HTTP on 127.0.0.1",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
        "python": platform.python_version(),
        "tests": {**earlier, **FIGURES},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(f"\nmodel child reliability figures ({RESULTS.relative_to(RESULTS.parents[2])}):")
        for name, values in FIGURES.items():
            print(f"  {name}: {json.dumps(values)}")


class Served:
    """The app with a model process on a real threaded HTTP server."""

    def __init__(self, tmp_path: Path, **settings) -> None:
        self.images = FakeLabelStudio()
        threading.Thread(target=self.images.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.images.state.public["/ok.png"] = png_bytes(sample_image(32, 24))
        self.image_url = self.images.url + "/ok.png"
        self.state = tmp_path / "model_dir"
        self.state.mkdir()
        defaults = dict(
            model_dir=self.state,
            model_load_wait_s=30,
            image_timeout_s=5,
            restart_backoff_s=0.2,
            image_allowed_hosts=("127.0.0.1",),  # the local image host (SSRF protection is on)
        )
        self.config = ServiceConfig(**{**defaults, **settings})
        self.runtime = ProcessModelRuntime(self.config, quick_library)
        self.app = create_app(self.config, runtime=self.runtime)
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.runtime.wait_until_ready(60)

    def predict(self, label_config: str = PLAIN, timeout: float = 60) -> requests.Response:
        body = {"tasks": [{"id": 1, "data": {"image": self.image_url}}], "label_config": label_config, "project": "1.1"}
        return requests.post(f"{self.url}/predict", json=body, timeout=timeout)

    def health(self) -> requests.Response:
        return requests.get(f"{self.url}/health", timeout=5)

    def child_pid(self) -> int:
        return self.runtime._process.pid

    def wait_for(self, condition, timeout_s: float, what: str) -> float:
        """Seconds until ``condition()`` held (fails the test after ``timeout_s``)."""
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"not within {timeout_s} s: {what} (status {self.runtime.status!r})")
            time.sleep(0.01)
        return time.monotonic() - started

    def ready_with_new_child(self, old_pid: int) -> bool:
        return self.runtime.status == "ready" and self.runtime._conn is not None and self.child_pid() != old_pid

    def close(self) -> None:
        self.server.shutdown()
        self.runtime.stop()
        self.images.shutdown()
        self.images.server_close()


@pytest.fixture
def serve(tmp_path):
    created: list[Served] = []

    def start(**settings) -> Served:
        created.append(Served(tmp_path, **settings))
        return created[-1]

    yield start
    for served in created:
        served.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_hung_call_meets_its_deadline_and_the_child_is_restarted(serve):
    deadline_s = 2.0
    served = serve(predict_timeout_s=deadline_s)
    hung_pid = served.child_pid()
    started = time.monotonic()
    reply = served.predict(HANG)
    elapsed = time.monotonic() - started

    assert reply.status_code == 200
    assert elapsed < deadline_s + 1.0, elapsed
    (prediction,) = reply.json()["results"]
    assert prediction["result"] == [] and prediction["score"] == 0.0
    (warning,) = reply.json()["warnings"]
    assert "CallTimeout: no answer within 2 s (PREDICT_TIMEOUT)" in warning and "killed and is restarted" in warning
    assert int((served.state / "hanging").read_text()) == hung_pid

    recovery = served.wait_for(lambda: served.ready_with_new_child(hung_pid), 30, "a new child")
    assert not alive(hung_pid)
    assert served.runtime.restarts == 1 and served.runtime.timeouts == 1
    after = served.predict()
    assert after.status_code == 200 and after.json()["warnings"] == [] and after.json()["results"][0]["result"]
    FIGURES["hung_call"] = {
        "predict_timeout_s": deadline_s,
        "predict_answered_after_s": round(elapsed, 3),
        "ready_again_after_s": round(recovery, 3),
        "restart_backoff_s": served.config.restart_backoff_s,
    }


def test_kill_9_five_times_under_light_load(serve):
    served = serve(predict_timeout_s=20, restart_backoff_s=0.5, restart_backoff_max_s=4, restart_budget=5)
    stop = threading.Event()
    predicts: list[tuple[float, int, bool]] = []  # latency, status, task failed
    healths: list[tuple[float, int]] = []

    def predict_loop() -> None:
        while not stop.is_set():
            started = time.monotonic()
            reply = served.predict(sleeping(2))  # 0.2 s of "work" per call
            failed = reply.status_code == 200 and bool(reply.json()["warnings"])
            predicts.append((time.monotonic() - started, reply.status_code, failed))

    def health_loop() -> None:
        while not stop.is_set():
            started = time.monotonic()
            status = served.health().status_code
            healths.append((time.monotonic() - started, status))
            time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))

    workers = [threading.Thread(target=predict_loop) for _ in range(2)] + [threading.Thread(target=health_loop)]
    for worker in workers:
        worker.start()
    recoveries = []
    try:
        for _ in range(5):
            time.sleep(1.0)  # let the load run on a ready child
            pid = served.child_pid()
            os.kill(pid, signal.SIGKILL)
            recoveries.append(served.wait_for(lambda: served.ready_with_new_child(pid), 30, "a new child"))
        time.sleep(1.0)
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)

    predict_latencies = [latency for latency, _, _ in predicts]
    health_latencies = [latency for latency, _ in healths]
    statuses = sorted({status for _, status, _ in predicts})
    FIGURES["kill_9_x5_light_load"] = {
        "load": "2 clients looping /predict (0.2 s calls), /health at 10 Hz",
        "restart_backoff_s": [0.5, 1, 2, 4, 4],
        "kill_to_ready_s": [round(r, 2) for r in recoveries],
        "predict": summary(predict_latencies),
        "predict_status_counts": {str(s): sum(1 for _, x, _ in predicts if x == s) for s in statuses},
        "predict_tasks_failed": sum(1 for _, _, failed in predicts if failed),
        "health": summary(health_latencies),
        "health_non_200": sum(1 for _, status in healths if status != 200),
    }
    assert served.runtime.restarts == 5 and served.runtime.exits == 5
    assert percentile(health_latencies, 99) < 1.0
    assert all(status == 200 for _, status in healths)  # restarting within budget is not an error
    # each restart: its backoff (0.5, 1, 2, 4, 4 s) plus starting a child
    assert all(recovery < 4 + 10 for recovery in recoveries), recoveries
    # a request waits at most for one restart (backoff + start), never longer
    assert max(predict_latencies) < 4 + 10 + 2, max(predict_latencies)
    # a killed call fails its task (200 + warning); a queued one goes to the next child: no 5xx at all
    assert statuses == [200]
    assert sum(1 for _, _, failed in predicts if failed) <= 5


def test_the_in_flight_limit_answers_503_with_retry_after(serve):
    served = serve(model_max_in_flight=1, model_queue_wait_s=0.5)
    slow: list[requests.Response] = []
    worker = threading.Thread(target=lambda: slow.append(served.predict(sleeping(30))))  # 3 s
    worker.start()
    served.wait_for(lambda: served.runtime.gate.in_use == 1, 10, "one call in flight")
    started = time.monotonic()
    refused = served.predict()
    waited = time.monotonic() - started
    worker.join(30)

    assert refused.status_code == 503
    assert "MODEL_MAX_IN_FLIGHT" in refused.json()["error"] and "MODEL_QUEUE_WAIT" in refused.json()["error"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert 0.5 <= waited < 2.0
    assert slow[0].status_code == 200 and slow[0].json()["warnings"] == []
    assert served.predict().status_code == 200  # a free slot again
    FIGURES["in_flight_limit"] = {
        "model_max_in_flight": 1,
        "model_queue_wait_s": 0.5,
        "refused_after_s": round(waited, 3),
        "retry_after": refused.headers["Retry-After"],
    }


def test_a_spent_restart_budget_is_an_error_until_it_refills(serve):
    served = serve(restart_budget=2, restart_refill_s=4.0, restart_backoff_s=0.1, restart_backoff_max_s=0.2)
    for _ in range(2):  # two restarts spend the budget
        pid = served.child_pid()
        os.kill(pid, signal.SIGKILL)
        served.wait_for(lambda: served.runtime._conn is not None and served.child_pid() != pid, 10, "a new child")
    pid = served.child_pid()
    os.kill(pid, signal.SIGKILL)
    exhausted_at = time.monotonic()
    served.wait_for(lambda: served.runtime.status.startswith("error"), 10, "the error state")

    health = served.health()
    assert health.status_code == 503 and health.json()["status"] == "ERROR"
    assert "the restart budget is spent" in health.json()["models"]
    assert health.json()["model_process"]["restarts"] == 2 and int(health.headers["Retry-After"]) >= 1
    refused = served.predict()
    assert refused.status_code == 503 and "restart budget" in refused.json()["error"]
    assert "Retry-After" in refused.headers

    served.wait_for(lambda: served.health().status_code == 200 and served.runtime.status == "ready", 30, "recovery")
    recovered = time.monotonic() - exhausted_at
    assert served.runtime.restarts == 3
    assert served.predict().json()["warnings"] == []
    FIGURES["restart_budget"] = {
        "restart_budget": 2,
        "restart_refill_s": 4.0,
        "restart_backoff_s": [0.1, 0.2],
        "third_kill_to_ready_and_health_200_s": round(recovered, 2),
        "note": "tokens refill continuously: after two quick restarts the third waits until one token is back",
    }


def start_training(served: Served, seconds: float) -> None:
    (served.state / "train-seconds").write_text(str(seconds))
    service = served.app.extensions["segmentation_service"]
    service.training.register(sleepy_training_hook)
    body = load_recorded("webhook-start-training.json")["body"]
    assert requests.post(f"{served.url}/webhook", json=body, timeout=5).status_code == 200


def test_a_deadline_never_kills_a_training_run(serve):
    served = serve(predict_timeout_s=1.0)
    pid = served.child_pid()
    start_training(served, 4.0)
    served.wait_for(lambda: (served.state / "training-started").exists(), 20, "the training run to start")

    started = time.monotonic()
    reply = served.predict(HANG)
    assert time.monotonic() - started < 1.0 + 1.0
    assert (
        "CallTimeout" in reply.json()["warnings"][0]
        and "when the training run in it ends" in reply.json()["warnings"][0]
    )
    health = served.health()
    assert health.status_code == 503 and "training run" in health.json()["models"]
    assert served.predict().status_code == 503  # no new calls into a stuck child
    assert served.child_pid() == pid and alive(pid)

    service = served.app.extensions["segmentation_service"]
    assert service.jobs.wait_idle(20)
    training = service.training.status()
    assert training["state"] == "succeeded" and training["last_result"]["pid"] == pid
    served.wait_for(lambda: served.ready_with_new_child(pid), 30, "a new child after the training run")
    assert served.predict().json()["warnings"] == []


def test_a_training_run_has_its_own_deadline(serve):
    served = serve(training_timeout_s=1.5)
    pid = served.child_pid()
    start_training(served, 600.0)
    service = served.app.extensions["segmentation_service"]
    assert service.jobs.wait_idle(20)
    training = service.training.status()
    assert training["state"] == "failed" and "CallTimeout" in training["last_error"]
    assert "TRAINING_TIMEOUT" in training["last_error"]
    served.wait_for(lambda: served.ready_with_new_child(pid), 30, "a new child")
    assert served.predict().json()["warnings"] == []
