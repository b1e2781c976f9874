"""Request limits: size (413), tasks per /predict, JSON nesting depth and container count (400),
checked before the body is parsed; a real loopback server for what the test client cannot show
(a refused body is never read, a chunked body is cut off)."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from backend.service.config import ServiceConfig
from backend.service.request_limits import json_shape, parse_json_body
from backend.service.webhooks import PayloadError
from tests.service.conftest import load_recorded

from .conftest import REPO, write_figures

ENDPOINTS = [("POST", "/predict"), ("POST", "/setup"), ("POST", "/webhook"), ("GET", "/versions")]
CONFIG_XML = load_recorded("setup.json")["body"]["schema"]
MiB = 1024 * 1024


def send(client, method, path, data):
    return client.open(path, method=method, data=data, content_type="application/json")


def assert_error(response, status, fragment):
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.is_json and fragment in response.json["error"], response.json
    assert "Traceback" not in response.get_data(as_text=True)


def test_defaults_and_environment():
    config = ServiceConfig.from_env({})
    assert config.max_request_bytes == 20 * MiB and config.max_tasks_per_request == 100
    assert config.max_json_depth == 64 and config.max_json_containers == 1_000_000
    config = ServiceConfig.from_env(
        {"MAX_REQUEST_BYTES": "1000", "MAX_TASKS_PER_REQUEST": "5", "MAX_JSON_DEPTH": "10", "MAX_JSON_CONTAINERS": "9"}
    )
    assert (config.max_request_bytes, config.max_tasks_per_request) == (1000, 5)
    assert (config.max_json_depth, config.max_json_containers) == (10, 9)
    for name, bad in [("MAX_REQUEST_BYTES", "0"), ("MAX_TASKS_PER_REQUEST", "many"), ("MAX_JSON_DEPTH", "1")]:
        with pytest.raises(ValueError, match=name):
            ServiceConfig.from_env({name: bad})


@pytest.mark.parametrize("method, path", ENDPOINTS)
def test_too_large_is_413_json(make_app, method, path):
    client = make_app(max_request_bytes=1000).test_client()
    body = json.dumps({"project": "1.2", "pad": "x" * 1000}).encode()
    assert_error(send(client, method, path, body), 413, "MAX_REQUEST_BYTES=1000")


@pytest.mark.parametrize("method, path", ENDPOINTS)
@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"[" * 100_000, "MAX_JSON_DEPTH=64"),
        (b'{"a":' * 100_000, "MAX_JSON_DEPTH=64"),
        (b'{"tasks": ' + b"[" * 65 + b"]" * 65 + b"}", "MAX_JSON_DEPTH=64"),
        (b"\xff\xfe{}", "not UTF-8"),
        ('{"project": "1"}'.encode("utf-16"), "not UTF-8"),
        (b'{"project": ', "not valid JSON"),
        (b'{"n": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"null", "JSON object"),
    ],
    ids=["brackets", "objects", "depth-65", "bad-utf8", "utf16", "truncated", "huge-int", "list", "null"],
)
def test_malformed_bodies_are_400_on_every_endpoint(make_app, method, path, body, fragment):
    response = send(make_app().test_client(), method, path, body)
    assert_error(response, 400, fragment)


def test_empty_body(make_app):
    client = make_app().test_client()
    assert_error(send(client, "POST", "/predict", b""), 400, "empty")
    assert_error(send(client, "POST", "/webhook", b"  \n"), 400, "empty")
    assert client.get("/versions").json == {"versions": []}  # Label Studio may send no body here


def test_depth_64_is_accepted_and_65_refused(make_app):
    client = make_app().test_client()
    nested = "x"
    for _ in range(63):  # + the outer object: depth 64
        nested = [nested]
    ok = send(client, "POST", "/webhook", json.dumps({"action": "PING", "deep": nested}).encode())  # depth 64
    assert ok.status_code == 200 and ok.json["status"] == "ignored"
    deeper = send(client, "POST", "/webhook", json.dumps({"action": "PING", "deep": [nested]}).encode())
    assert_error(deeper, 400, "MAX_JSON_DEPTH=64")
    # brackets inside strings do not count
    strings = send(client, "POST", "/webhook", json.dumps({"action": "PING", "s": "[" * 10_000 + '\\"{'}).encode())
    assert strings.status_code == 200


def test_container_limit(make_app):
    client = make_app(max_json_containers=1000).test_client()
    body = json.dumps({"action": "PING", "items": [[] for _ in range(1000)]}).encode()
    assert_error(send(client, "POST", "/webhook", body), 400, "MAX_JSON_CONTAINERS=1000")
    body = json.dumps({"action": "PING", "items": [[] for _ in range(998)]}).encode()
    assert send(client, "POST", "/webhook", body).status_code == 200


def test_tasks_per_request(make_app):
    client = make_app(max_tasks_per_request=3).test_client()

    def body(n):
        tasks = [{"id": i, "data": {"image": "data:image/png;base64,AAAA"}} for i in range(n)]
        return {"tasks": tasks, "project": "1.2", "label_config": CONFIG_XML}

    assert_error(client.post("/predict", json=body(4)), 400, "MAX_TASKS_PER_REQUEST=3")
    reply = client.post("/predict", json=body(3))
    assert reply.status_code == 200 and len(reply.json["results"]) == 3


def test_default_task_limit_is_100(make_app):
    client = make_app().test_client()
    tasks = [{"id": i, "data": {}} for i in range(101)]
    response = client.post("/predict", json={"tasks": tasks, "label_config": CONFIG_XML})
    assert_error(response, 400, "101 tasks in one request, more than MAX_TASKS_PER_REQUEST=100")


def test_lone_surrogate_label_config_is_400(make_app):
    client = make_app().test_client()
    raw = b'{"schema": "<View>\\ud800</View>", "project": "1.2"}'
    assert_error(send(client, "POST", "/setup", raw), 400, "not valid Unicode")
    raw = b'{"tasks": [], "label_config": "\\udfff"}'
    assert_error(send(client, "POST", "/predict", raw), 400, "not valid Unicode")


def reference_shape(data: bytes) -> tuple[int, int]:
    """Byte-by-byte: a backslash escapes the next byte; brackets count outside strings."""
    depth = deepest = containers = 0
    in_string = escaped = False
    for byte in data:
        char = chr(byte)
        was_escaped, escaped = escaped, char == "\\" and not escaped
        if char == '"' and not was_escaped:
            in_string = not in_string
        elif not in_string and char in "[{":
            depth += 1
            containers += 1
            deepest = max(deepest, depth)
        elif not in_string and char in "]}":
            depth -= 1
    return deepest, containers


def test_json_shape_matches_a_byte_by_byte_scan():
    rng = random.Random(7)
    alphabet = b'[]{}"\\a,:'
    for _ in range(500):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 50)))
        for chunk in (1, 2, 3, 7, 1 << 18):  # runs of backslashes and strings across chunk borders
            shape = json_shape(data, chunk_bytes=chunk)
            assert (shape.depth, shape.containers) == reference_shape(data), (data, chunk)
    document = json.dumps({"a\\": ['[\\"{', {"b": [[1], "]]]"]}], "c": "\\\\"}).encode()
    assert json_shape(document) == json_shape(document, chunk_bytes=3)
    assert (json_shape(document).depth, json_shape(document).containers) == (5, 5)


def test_parse_json_body_is_a_payload_error_never_recursion():
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
        with pytest.raises(PayloadError, match="MAX_JSON_DEPTH"):
            parse_json_body(body, max_depth=64, max_containers=10**6)
    # a depth limit above the interpreter's recursion limit still answers a PayloadError
    with pytest.raises(PayloadError):
        parse_json_body(b"[" * 100_000 + b"]" * 100_000, max_depth=10**6, max_containers=10**6)


# ---- refused by size first -----------------------------------------------------------------


class CountingStream(io.RawIOBase):
    """``size`` bytes of ``[],`` made on demand; counts what the app reads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.size - self.read_bytes)
        offset = self.read_bytes % 3
        buffer[:n] = (b"[]," * (n // 3 + 2))[offset : offset + n]
        self.read_bytes += n
        return n


@pytest.mark.parametrize("method, path", ENDPOINTS)
def test_a_body_over_the_cap_is_refused_unread(make_app, method, path):
    client = make_app().test_client()
    stream = CountingStream(30 * MiB)
    tracemalloc.start()
    response = client.open(
        path,
        method=method,
        content_type="application/json",
        environ_overrides={"wsgi.input": stream, "CONTENT_LENGTH": str(stream.size)},
    )
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert_error(response, 413, f"MAX_REQUEST_BYTES={20 * MiB}")
    assert stream.read_bytes == 0 and peak < 2 * MiB


@pytest.mark.parametrize("size, status", [(30 * MiB, 413), (20 * MiB + 1, 413), (20 * MiB, 400)])
def test_a_chunked_body_is_cut_off_at_the_cap(make_app, size, status):
    """No Content-Length (chunked, as gunicorn passes it): read up to the cap, then 413."""
    client = make_app().test_client()
    stream = CountingStream(size)
    response = client.open(
        "/webhook",
        method="POST",
        content_type="application/json",
        environ_overrides={"wsgi.input": stream, "wsgi.input_terminated": True},
    )
    assert "CONTENT_LENGTH" not in response.request.environ
    assert_error(response, status, "MAX_REQUEST_BYTES" if status == 413 else "MAX_JSON_CONTAINERS")
    assert stream.read_bytes <= 20 * MiB + 1


# ---- the real server (python -m backend: gunicorn) on 127.0.0.1 ----------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def raw_request(port, path, headers, body_chunks, timeout=60):
    """Send a request by hand (a declared length, or chunked): (status, json, seconds)."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.putrequest("POST", path)
        for name, value in {"Authorization": AUTH, "Content-Type": "application/json", **headers}.items():
            connection.putheader(name, value)
        connection.endheaders()
        try:
            for chunk in body_chunks:
                connection.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading everything: expected for 413
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null"), time.perf_counter() - started
    finally:
        connection.close()


AUTH = "Basic " + base64.b64encode(b"ls:s3cret").decode()


@pytest.fixture
def gunicorn_backend(tmp_path):
    """``python -m backend`` (gunicorn, one worker) on 127.0.0.1 with basic auth; no models loaded."""
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "MODEL_PRESET": "tiny",
        "MODEL_DIR": str(tmp_path / "state"),
        "MODEL_LOAD_ON_START": "false",
        "BASIC_AUTH_USER": "ls",
        "BASIC_AUTH_PASS": "s3cret",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "backend"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and server.poll() is None:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/health")  # no credentials: the health check needs none
                status = connection.getresponse().status
                connection.close()
                assert status == 200
                break
            except OSError:
                time.sleep(0.3)
        else:
            raise AssertionError(f"python -m backend did not answer: {server.stdout.read().decode()[-2000:]}")
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        yield port, int(children[0])
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
        assert b"Traceback" not in output, output.decode()[-3000:]


def test_limits_through_the_real_server(gunicorn_backend):
    """30 MB of ``[]`` is refused from its Content-Length, unread: the worker's peak memory does not
    move. At the cap, empty arrays are refused by MAX_JSON_CONTAINERS before json.loads (which would
    take ~450 MB); a valid body at the cap is parsed; a chunked body is cut off at the cap."""
    port, worker = gunicorn_backend
    cap = 20 * MiB
    figures = {"server": "python -m backend (gunicorn gthread, 1 worker)", "max_request_bytes": cap}

    def measured(name, path, headers, chunks, status_expected, fragment):
        before = peak_rss_mib(worker)
        status, reply, seconds = raw_request(port, path, headers, chunks)
        assert status == status_expected and fragment in json.dumps(reply), (name, status, reply)
        figures[name] = {
            "status": status,
            "seconds": round(seconds, 3),
            "worker_peak_rss_mib_before": round(before, 1),
            "worker_peak_rss_growth_mib": round(peak_rss_mib(worker) - before, 1),
        }
        return figures[name]

    thirty = b"[" + b"[]," * (10 * MiB - 1) + b"[]]"  # ~30 MiB of empty arrays
    result = measured(
        "30MB_empty_arrays", "/webhook", {"Content-Length": str(len(thirty))}, [thirty], 413, "MAX_REQUEST_BYTES"
    )
    assert result["worker_peak_rss_growth_mib"] < 10

    deep = b"[" * 100_000
    measured("depth_100000", "/predict", {"Content-Length": str(len(deep))}, [deep], 400, "MAX_JSON_DEPTH")

    arrays = b"[" + b"[]," * ((cap - 2) // 3 - 1) + b"[]]"
    result = measured(
        "at_cap_empty_arrays", "/webhook", {"Content-Length": str(len(arrays))}, [arrays], 400, "MAX_JSON_CONTAINERS"
    )
    assert result["worker_peak_rss_growth_mib"] < 200

    event = json.dumps({"action": "PING", "padding": "x" * 1000}).encode()
    at_cap = event[:-1] + b" " * (cap - len(event)) + b"}"
    assert len(at_cap) == cap
    measured("at_cap_valid_event", "/webhook", {"Content-Length": str(cap)}, [at_cap], 200, "ignored")
    measured(
        "cap_plus_one_byte", "/webhook", {"Content-Length": str(cap + 1)}, [at_cap + b" "], 413, "MAX_REQUEST_BYTES"
    )

    def chunked(total, piece=MiB):
        sent = 0
        while sent < total:
            block = b" " * min(piece, total - sent)
            sent += len(block)
            yield b"%x\r\n" % len(block) + block + b"\r\n"
        yield b"0\r\n\r\n"

    measured(
        "chunked_past_cap", "/webhook", {"Transfer-Encoding": "chunked"}, chunked(cap + MiB), 413, "MAX_REQUEST_BYTES"
    )
    measured(
        "no_credentials_predict",
        "/predict",
        {"Authorization": "", "Content-Length": "2"},
        [b"{}"],
        401,
        "authentication",
    )
    # why MAX_JSON_CONTAINERS: what json.loads itself would take for empty arrays
    sample = b"[" + b"[]," * (MiB // 3 - 1) + b"[]]"  # 1 MiB
    tracemalloc.start()
    parsed = json.loads(sample)
    loads_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del parsed
    figures["json_loads_traced_mib_per_mib_of_empty_arrays"] = round(loads_peak / len(sample), 1)
    write_figures("limits", figures)
