"""A hypothesis fuzz of /predict, /setup, /webhook and /versions through Flask's test client:
shaped payloads (Label Studio's fields with wrong types, bad ids, broken label configs), arbitrary
JSON, and raw bytes (truncated, spliced, invalid UTF-8, lone surrogates). No 500, ever; every
error is JSON. Plus the fixed extremes: 100,000 nested brackets and a body at the size cap.

Bounded: a fixed number of examples, derandomized (the same cases every run), no example
database; images never leave the process (the app's session refuses every request).
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service.conftest import load_recorded, png_bytes, sample_image

from .conftest import write_figures

ENDPOINTS = {"/predict": "POST", "/setup": "POST", "/webhook": "POST", "/versions": "GET"}
CONFIG_XML = load_recorded("setup.json")["body"]["schema"]
CREATED = load_recorded("webhook-annotation-created.json")["body"]
PREDICT = load_recorded("predict-uploaded-task.json")["body"]
PNG = "data:image/png;base64," + base64.b64encode(png_bytes(sample_image(16, 12))).decode()
ACTIONS = [
    "ANNOTATION_CREATED",
    "ANNOTATION_UPDATED",
    "ANNOTATIONS_CREATED",
    "ANNOTATIONS_DELETED",
    "ANNOTATION_DELETED",
    "START_TRAINING",
    "TASKS_CREATED",
    "PROJECT_UPDATED",
]
STRUCTURED_EXAMPLES = 600
RAW_EXAMPLES = 300

# ---- strategies -----------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
ids = st.integers(min_value=-3, max_value=2**64) | st.sampled_from(["7", "x", "", "1e3", True, None, 1.5]) | values
label_configs = (
    st.sampled_from(
        [
            CONFIG_XML,
            CREATED["project"]["label_config"],
            "<View/>",
            "<View><Image name='i' value='$image'/></View>",
            "<View><Image",
            "",
            "   ",
            "<View><Image name='image' value='$image'/><BrushLabels name='b' toName='image'/></View>",
            "<View><Image name='image' value='$image'/><BrushLabels name='b' toName='nothing'>"
            "<Label value='cat'/></BrushLabels></View>",
        ]
    )
    | st.text(max_size=40)
    | values
)
images = (
    st.sampled_from(
        [
            PNG,
            "data:image/png;base64,AAAA",
            "data:image/png;base64,!!!",
            "data:text/plain,hello",
            "/data/upload/1/a.png",
            "http://127.0.0.1:1/a.png",
            "https://example.invalid/a.png",
            "s3://bucket/key.png",
            "file:///etc/passwd",
            "/data/local-files/?d=../../etc/passwd",
            "",
        ]
    )
    | st.text(max_size=30)
    | values
)
regions = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=6) | values,
        "type": st.sampled_from(["brushlabels", "textarea", "choices", "polygonlabels"]) | values,
        "from_name": st.sampled_from(["segment", "caption", "rating", "class_mask"]) | values,
        "to_name": st.just("image") | values,
        "original_width": st.integers(-5, 5000) | values,
        "original_height": st.integers(-5, 5000) | values,
        "value": st.fixed_dictionaries(
            {},
            optional={
                "format": st.just("rle") | values,
                "rle": st.lists(st.integers(-300, 300), max_size=30) | values,
                "brushlabels": st.lists(st.sampled_from(["segment", "cat", "sky", "dog"]), max_size=2) | values,
                "text": st.lists(st.text(max_size=10), max_size=2) | values,
                "choices": st.lists(st.sampled_from(["0", "1", "3", "9"]), max_size=2) | values,
                "points": st.lists(st.lists(st.floats(-10, 110), min_size=2, max_size=2), max_size=6) | values,
            },
        )
        | values,
    },
)
annotations = (
    st.fixed_dictionaries(
        {"id": ids},
        optional={
            "result": st.lists(regions, max_size=4) | values,
            "updated_at": st.sampled_from(["2026-11-21T23:51:43.008016Z", "", "t" * 150])
            | st.text(max_size=30)
            | values,
            "task": ids,
            "project": ids,
            "completed_by": values,
        },
    )
    | values
)
tasks = (
    st.fixed_dictionaries(
        {"id": ids, "data": st.fixed_dictionaries({"image": images}) | values},
        optional={"annotations": st.lists(annotations, max_size=2) | values, "predictions": values, "project": ids},
    )
    | values
)
projects = st.sampled_from(["1.1795304640", "2", ".", "", "x.y.z"]) | st.text(max_size=12) | values
predict_bodies = st.fixed_dictionaries(
    {"tasks": st.lists(tasks, max_size=4) | values},
    optional={
        "project": projects,
        "label_config": label_configs,
        "params": st.fixed_dictionaries({}, optional={"context": values, "login": values}) | values,
    },
)
setup_bodies = st.fixed_dictionaries(
    {},
    optional={
        "project": projects,
        "schema": label_configs,
        "hostname": st.sampled_from(["http://127.0.0.1:1", "https://ls.invalid", "ftp://x", ""]) | values,
        "access_token": st.sampled_from(["0123456789abcdef0123456789abcdef01234567", "a.b.c", ""]) | values,
        "extra_params": values,
    },
)
webhook_bodies = st.fixed_dictionaries(
    {"action": st.sampled_from(ACTIONS) | values},
    optional={
        "annotation": annotations | st.lists(annotations, max_size=4),
        "annotations": st.lists(st.fixed_dictionaries({"id": ids}) | ids, max_size=4) | values,
        "task": tasks | st.lists(tasks, max_size=3),
        "project": st.fixed_dictionaries({"id": ids}, optional={"label_config": label_configs}) | ids | values,
    },
)
versions_bodies = st.fixed_dictionaries({}, optional={"project": projects}) | values
# well-typed variants, so that the deeper paths (predictions, storing annotations) run often too
good_ids = st.integers(min_value=1, max_value=10**6)
good_configs = st.sampled_from([CONFIG_XML, CREATED["project"]["label_config"]])
good_annotations = st.fixed_dictionaries(
    {"id": good_ids, "result": st.lists(regions, max_size=4)},
    optional={"updated_at": st.text(max_size=30), "task": good_ids, "project": good_ids},
)
good_tasks = st.fixed_dictionaries(
    {"id": good_ids, "data": st.fixed_dictionaries({"image": images})},
    optional={"annotations": st.lists(good_annotations, max_size=2), "predictions": st.just([])},
)
good_predict = st.fixed_dictionaries(
    {"tasks": st.lists(good_tasks, max_size=3), "project": st.just("1.1795304640"), "label_config": good_configs},
    optional={"params": st.fixed_dictionaries({"context": st.none() | values})},
)
good_setup = st.fixed_dictionaries(
    {"project": projects, "schema": good_configs}, optional={"hostname": st.text(max_size=20)}
)
good_webhook = st.fixed_dictionaries(
    {
        "action": st.sampled_from(ACTIONS),
        "annotation": good_annotations | st.lists(good_annotations, min_size=1, max_size=3),
        "annotations": st.lists(st.fixed_dictionaries({"id": good_ids}), min_size=1, max_size=3),
        "project": st.fixed_dictionaries({"id": good_ids, "label_config": good_configs}),
    },
    optional={"task": good_tasks | st.lists(good_tasks, max_size=3)},
)
BODIES = {
    "/predict": good_predict | predict_bodies,
    "/setup": good_setup | setup_bodies,
    "/webhook": good_webhook | webhook_bodies,
    "/versions": versions_bodies,
}

structured = st.sampled_from(sorted(BODIES)).flatmap(
    lambda path: st.tuples(st.just(path), BODIES[path].map(lambda body: json.dumps(body).encode()))
)

SPLICES = [b'"\\ud800"', b'"\\udfff\\ud800"', b"\xff", b"\xc3", b"NaN", b"-Infinity", b"1e999", b"9" * 5000, b"[" * 70]


@st.composite
def mutated(draw):
    """A recorded request or a shaped body, then truncated, spliced or replaced by raw bytes."""
    path = draw(st.sampled_from(sorted(BODIES)))
    seed = draw(
        st.sampled_from([json.dumps(CREATED).encode(), json.dumps(PREDICT).encode(), b'{"project": "1.2"}'])
        | BODIES[path].map(lambda body: json.dumps(body).encode())
    )
    how = draw(st.sampled_from(["truncate", "splice", "replace", "bytes"]))
    if how == "bytes":
        return path, draw(st.binary(max_size=300))
    at = draw(st.integers(0, len(seed)))
    if how == "truncate":
        return path, seed[:at]
    piece = draw(st.sampled_from(SPLICES) | st.binary(min_size=1, max_size=8))
    if how == "splice":
        return path, seed[:at] + piece + seed[at:]
    end = draw(st.integers(at, min(len(seed), at + 16)))
    return path, seed[:at] + piece + seed[end:]


# ---- the fuzz -------------------------------------------------------------------------------


def run_fuzz(app, strategy, examples):
    client = app.test_client()
    statuses: Counter = Counter()
    server_errors: list = []

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(case=strategy)
    def one_request(case):
        path, body = case
        response = client.open(path, method=ENDPOINTS[path], data=body, content_type="application/json")
        statuses[f"{path} {response.status_code}"] += 1
        if response.status_code >= 500:
            server_errors.append((path, body[:300], response.get_data(as_text=True)[:300]))
        assert response.status_code < 500, (path, body[:300], response.get_data(as_text=True)[:300])
        assert response.is_json
        if response.status_code >= 400:
            assert isinstance(response.json.get("error"), str) and response.json["error"]

    one_request()
    return statuses, server_errors


def fixed_extremes(app, cap):
    """100,000 nested brackets and a valid body at the cap on every endpoint; two invalid bodies
    at the cap (one long string, empty arrays) on /webhook."""
    client = app.test_client()
    outcomes = {}
    event = json.dumps({"action": "PING", "project": "1.2", "tasks": []}).encode()
    cases = {
        "depth_100000_arrays": b"[" * 100_000,
        "depth_100000_objects": b'{"a":' * 100_000,
        "at_cap_valid_object": event[:-1] + b" " * (cap - len(event)) + b"}",
        "at_cap_one_long_string": b'{"project": "' + b"x" * (cap - 15) + b'"}',
        "at_cap_empty_arrays": b"[" + b"[]," * ((cap - 2) // 3 - 1) + b"[]]",
    }
    for name, body in cases.items():
        assert len(body) <= cap
        paths = ENDPOINTS if name.startswith(("depth", "at_cap_valid")) else {"/webhook": "POST"}
        for path, method in paths.items():
            started = time.perf_counter()
            response = client.open(path, method=method, data=body, content_type="application/json")
            seconds = time.perf_counter() - started
            assert response.status_code < 500 and response.is_json, (name, path, response.get_data(as_text=True)[:300])
            outcomes[f"{name} {path}"] = {"status": response.status_code, "seconds": round(seconds, 3)}
    return outcomes


def test_fuzz_endpoints_never_answer_500(make_app, no_network):
    app = make_app()
    started = time.perf_counter()
    structured_statuses, structured_errors = run_fuzz(app, structured, STRUCTURED_EXAMPLES)
    raw_statuses, raw_errors = run_fuzz(app, mutated(), RAW_EXAMPLES)
    fuzz_seconds = time.perf_counter() - started
    cap = app.config["MAX_CONTENT_LENGTH"]
    started = time.perf_counter()
    extremes = fixed_extremes(app, cap)
    extremes_seconds = time.perf_counter() - started
    service = app.extensions["segmentation_service"]
    service.jobs.wait_idle(30)
    requests_sent = sum(structured_statuses.values()) + sum(raw_statuses.values()) + len(extremes)
    server_errors = len(structured_errors) + len(raw_errors)
    write_figures(
        "fuzz",
        {
            "requests": requests_sent,
            "status_500": server_errors,
            "structured_examples": STRUCTURED_EXAMPLES,
            "raw_examples": RAW_EXAMPLES,
            "fuzz_seconds": round(fuzz_seconds, 1),
            "extremes_seconds": round(extremes_seconds, 1),
            "statuses_structured": dict(sorted(structured_statuses.items())),
            "statuses_raw": dict(sorted(raw_statuses.items())),
            "extremes": extremes,
            "max_request_bytes": cap,
            "background_jobs": service.jobs.stats(),
        },
    )
    assert server_errors == 0
