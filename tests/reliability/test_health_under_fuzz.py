"""``/health`` while the real server is fuzzed: gunicorn (``python -m backend``'s server, one
worker, 8 threads) with the test fakes in a real model process, on 127.0.0.1, and no network
beyond it (``_fuzz_server.py``). Three client threads send a bounded stream of hostile bodies to
/predict, /setup, /webhook and /versions: the hypothesis cases of ``test_fuzz`` (shaped payloads,
recorded requests truncated/spliced/replaced, raw bytes), the recorded Label Studio requests as
they are, and the fixed extremes (100,000 nested brackets, bodies at ``MAX_REQUEST_BYTES``),
mixed in a fixed order, the whole stream three times (about 1,900 requests, 30 s on 2 busy
cores). Meanwhile another thread asks ``/health`` every 100 ms.

Figures (bench/results/reliability-health-under-fuzz.json): the status codes of the hostile
requests (no 500, every one answered), ``/health`` p50/p99/max (p99 under 1 s), the load average.

Bounded: a fixed list of cases (derandomized), new requests stop after ``SEND_FOR_S``, every
request has a timeout, the server is killed at the end.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings

from tests.service.conftest import RECORDED, load_recorded

from .conftest import REPO, write_figures
from .test_fuzz import ENDPOINTS, mutated, structured

STRUCTURED_CASES = 300
MUTATED_CASES = 300
EXTREME_ROUNDS = 2  # each fixed extreme is sent this many times per round
ROUNDS = 3  # the whole stream (fuzz cases and extremes) is sent this many times
CLIENTS = 3
SEND_FOR_S = 45.0  # no new hostile request after this
REQUEST_TIMEOUT_S = 30.0
HEALTH_EVERY_S = 0.1
HEALTH_TIMEOUT_S = 5.0
READY_WITHIN_S = 90.0
MAX_REQUEST_BYTES = 20 * 1024 * 1024  # the service's default cap


def collect(strategy, examples: int) -> list:
    """``examples`` derandomized draws of ``strategy`` (hypothesis generates, nothing is tested)."""
    cases: list = []

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def draw(case):
        cases.append(case)

    draw()
    return cases


def extremes(cap: int) -> list[tuple[str, str, bytes]]:
    event = json.dumps({"action": "PING", "project": "1.2", "tasks": []}).encode()
    bodies = {
        "depth_100000_arrays": b"[" * 100_000,
        "depth_100000_objects": b'{"a":' * 100_000,
        "at_cap_valid_object": event[:-1] + b" " * (cap - len(event)) + b"}",
        "at_cap_one_long_string": b'{"project": "' + b"x" * (cap - 15) + b'"}',
        "at_cap_empty_arrays": b"[" + b"[]," * ((cap - 2) // 3 - 1) + b"[]]",
    }
    cases = []
    for name, body in bodies.items():
        assert len(body) <= cap
        paths = ENDPOINTS if name.startswith(("depth", "at_cap_valid")) else {"/webhook": "POST"}
        cases += [(name, path, body) for path in paths]
    return cases


def hostile_cases(cap: int) -> list[tuple[str, str, bytes]]:
    """``(kind, path, body)``, the fuzz cases in a fixed shuffled order, the extremes spread over it."""
    fuzz = [("structured", path, body) for path, body in collect(structured, STRUCTURED_CASES)]
    fuzz += [("mutated", path, body) for path, body in collect(mutated(), MUTATED_CASES)]
    for name in sorted(os.listdir(RECORDED)):
        recorded = load_recorded(name)
        if isinstance(recorded, dict) and recorded.get("path") in ENDPOINTS:
            fuzz.append(("recorded", recorded["path"], json.dumps(recorded["body"]).encode()))
    rng = random.Random(0)
    rng.shuffle(fuzz)
    big = extremes(cap) * EXTREME_ROUNDS
    rng.shuffle(big)
    step = max(1, len(fuzz) // (len(big) + 1))
    cases: list[tuple[str, str, bytes]] = []
    for index, case in enumerate(fuzz):
        cases.append(case)
        if index % step == step - 1 and big:
            cases.append(big.pop())
    return (cases + big) * ROUNDS


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))], 4)

    return {"n": len(ordered), "p50_s": at(50), "p99_s": at(99), "max_s": round(ordered[-1], 4)}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """The real server on 127.0.0.1 with the fake methods; yields ``(url, model_dir)``."""
    port = free_port()
    model_dir = tmp_path / "model_dir"
    env = dict(
        os.environ,
        HOST="127.0.0.1",
        PORT=str(port),
        MODEL_DIR=str(model_dir),
        MODEL_PRESET="tiny",
        DEVICE="cpu",
        GUNICORN_THREADS="8",
        LOG_LEVEL="WARNING",
        MAX_REQUEST_BYTES=str(MAX_REQUEST_BYTES),
        IMAGE_ALLOWED_HOSTS="127.0.0.1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TRAINING_HOOK="none",
    )
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability._fuzz_server"],
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
            assert process.poll() is None, f"the server exited ({process.returncode}): {log_path.read_text()[-3000:]}"
            try:
                if requests.get(f"{url}/health", timeout=2).json().get("models") == "ready":
                    break
            except (requests.RequestException, ValueError):
                pass
            assert time.monotonic() - started < READY_WITHIN_S, f"not ready: {log_path.read_text()[-3000:]}"
            time.sleep(0.25)
        yield url, model_dir
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def test_health_answers_within_1s_while_the_real_server_is_fuzzed(server):
    url, model_dir = server
    cases = hostile_cases(MAX_REQUEST_BYTES)
    lock = threading.Lock()
    position = [0]
    stop_health = threading.Event()
    results: list[tuple[str, str, int, float, bool]] = []  # kind, path, status, seconds, json error
    healths: list[tuple[float, int]] = []
    load_before = os.getloadavg()
    t0 = time.monotonic()

    def client() -> None:
        session = requests.Session()
        while time.monotonic() - t0 < SEND_FOR_S:
            with lock:
                if position[0] >= len(cases):
                    return
                kind, path, body = cases[position[0]]
                position[0] += 1
            begun = time.monotonic()
            try:
                reply = session.request(
                    ENDPOINTS[path],
                    url + path,
                    data=body,
                    headers={"Content-Type": "application/json"},
                    timeout=REQUEST_TIMEOUT_S,
                )
                status = reply.status_code
                try:
                    answer = reply.json()
                    json_error = status < 400 or (isinstance(answer, dict) and bool(answer.get("error")))
                except ValueError:
                    json_error = False
            except requests.RequestException:
                status, json_error = 0, False
                session = requests.Session()
            with lock:
                results.append((kind, path, status, time.monotonic() - begun, json_error))

    def health() -> None:
        session = requests.Session()
        while not stop_health.is_set():
            begun = time.monotonic()
            try:
                status = session.get(f"{url}/health", timeout=HEALTH_TIMEOUT_S).status_code
            except requests.RequestException:
                status = 0
            healths.append((time.monotonic() - begun, status))
            stop_health.wait(max(0.0, HEALTH_EVERY_S - (time.monotonic() - begun)))

    health_thread = threading.Thread(target=health, daemon=True)
    health_thread.start()
    clients = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(SEND_FOR_S + REQUEST_TIMEOUT_S + 5)
    fuzz_seconds = time.monotonic() - t0
    stop_health.set()
    health_thread.join(HEALTH_TIMEOUT_S + 1)
    load_after = os.getloadavg()
    final_health = requests.get(f"{url}/health", timeout=HEALTH_TIMEOUT_S)
    refused_log = model_dir / "refused.log"
    refused = refused_log.read_text().splitlines() if refused_log.exists() else []

    statuses = Counter(f"{path} {status}" for _, path, status, _, _ in results)
    by_kind = Counter(f"{kind} {status}" for kind, _, status, _, _ in results)
    server_errors = [(kind, path, status) for kind, path, status, _, _ in results if status >= 500]
    unanswered = [(kind, path) for kind, path, status, _, _ in results if status == 0]
    not_json_errors = [(kind, path, status) for kind, path, status, _, ok in results if status and not ok]
    extreme_seconds: dict[str, float] = {}
    for kind, path, status, seconds, _ in results:
        if kind not in ("structured", "mutated", "recorded"):
            key = f"{kind} {path} {status}"
            extreme_seconds[key] = round(max(extreme_seconds.get(key, 0.0), seconds), 3)
    health_latency = [seconds for seconds, _ in healths]
    health_summary = summary(health_latency)
    write_figures(
        "health-under-fuzz",
        {
            "server": "gunicorn (1 worker, gthread, 8 threads) + fake methods in a real model process, 127.0.0.1",
            "cpu_count": os.cpu_count(),
            "load_average_1_5_15_before": [round(v, 2) for v in load_before],
            "load_average_1_5_15_after": [round(v, 2) for v in load_after],
            "clients": CLIENTS,
            "cases_prepared": len(cases),
            "requests_sent": len(results),
            "fuzz_seconds": round(fuzz_seconds, 1),
            "max_request_bytes": MAX_REQUEST_BYTES,
            "status_500": len(server_errors),
            "no_answer": len(unanswered),
            "errors_not_json": len(not_json_errors),
            "statuses_by_endpoint": dict(sorted(statuses.items())),
            "statuses_by_kind": dict(sorted(by_kind.items())),
            "extremes_max_seconds": dict(sorted(extreme_seconds.items())),
            "hostile_latency": summary([seconds for *_, seconds, _ in results]),
            "health_every_s": HEALTH_EVERY_S,
            "health": {
                **health_summary,
                "non_200": sum(1 for _, status in healths if status != 200),
                "over_1s": sum(1 for seconds in health_latency if seconds >= 1.0),
            },
            "health_after": final_health.status_code,
            "refused_outside_127_0_0_1": len(refused),
        },
    )
    assert server_errors == [], server_errors[:10]
    assert unanswered == [], unanswered[:10]
    assert not_json_errors == [], not_json_errors[:10]
    assert final_health.status_code == 200
    assert all(status == 200 for _, status in healths), Counter(status for _, status in healths)
    assert health_summary["n"] >= 50
    assert health_summary["p99_s"] < 1.0, health_summary
