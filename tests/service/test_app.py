"""HTTP behaviour: errors as JSON, failure isolation, basic auth, loading, metrics, model_version."""

import base64
import json
import socket

import pytest

from backend.service.app import create_app
from backend.service.masks import rle_to_mask

from .conftest import FakeMethods, load_recorded, png_bytes, sample_image

CONFIG_XML = load_recorded("setup.json")["body"]["schema"]


def predict_body(*images, label_config=CONFIG_XML):
    return {
        "tasks": [{"id": i + 1, "data": {"image": image}} for i, image in enumerate(images)],
        "project": "1.1795304640",
        "label_config": label_config,
        "params": {"login": None, "password": None, "context": None},
    }


@pytest.fixture
def client(config, fake_methods):
    return create_app(config, methods=fake_methods).test_client()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def assert_json_error(response, status, fragment):
    assert response.status_code == status
    assert response.is_json and fragment in response.json["error"]
    assert "Traceback" not in response.get_data(as_text=True)


def test_health_shape(client):
    reply = client.get("/health").json
    assert reply["status"] == "UP" and reply["model_class"] == "SegmentationMLBackend"
    assert reply["models"] in ("loading", "ready")
    assert client.get("/").json["status"] == "UP"


@pytest.mark.parametrize(
    "path, body, fragment",
    [
        ("/predict", "not json", "JSON object"),
        ("/predict", [1, 2], "JSON object"),
        ("/predict", {"tasks": "nope", "label_config": CONFIG_XML}, "'tasks' must be a list"),
        ("/predict", {"tasks": [{"id": 1, "data": {}}]}, "'label_config' is missing"),
        ("/predict", predict_body("x", label_config="<View><Image"), "cannot be parsed"),
        ("/setup", {"project": "1.2"}, "label config is missing"),
        (
            "/setup",
            {
                "schema": "<View><Image name='i' value='$i'/><Choices name='c' toName='i'>"
                "<Choice value='a'/></Choices></View>"
            },
            "no control this backend can predict",
        ),
        ("/webhook", {"no_action": 1}, "no 'action'"),
        ("/webhook", {"action": "ANNOTATION_CREATED", "annotation": {"result": []}}, "needs an 'id'"),
        ("/webhook", {"action": "ANNOTATION_CREATED", "annotation": {"id": "x1"}}, "must be an integer"),
    ],
)
def test_malformed_payloads_are_400_json(client, path, body, fragment):
    if isinstance(body, str):
        response = client.post(path, data=body, content_type="application/json")
    else:
        response = client.post(path, json=body)
    assert_json_error(response, 400, fragment)


def test_unknown_route_and_method_are_json(client):
    assert_json_error(client.get("/nothing"), 404, "not found")
    assert_json_error(client.get("/predict"), 405, "method")


def test_unexpected_errors_are_500_without_traceback(config, fake_methods):
    app = create_app(config, methods=fake_methods)

    def explode(*args, **kwargs):
        raise KeyError("secret internals")

    app.extensions["segmentation_service"].model_for = explode
    response = app.test_client().post("/predict", json=predict_body("x"))
    assert_json_error(response, 500, "internal error (KeyError)")
    assert "secret internals" not in response.get_data(as_text=True)


def test_a_failing_task_never_fails_the_batch(fake_ls, config, fake_methods):
    fake_ls.state.public["/ok.png"] = png_bytes(sample_image(32, 24))
    fake_ls.state.public["/corrupt.png"] = b"\x89PNG\r\n\x1a\nbroken"
    client = create_app(config, methods=fake_methods).test_client()
    body = predict_body(
        fake_ls.url + "/ok.png",
        fake_ls.url + "/missing.png",
        fake_ls.url + "/corrupt.png",
        f"http://127.0.0.1:{closed_port()}/gone.png",
    )
    body["tasks"].append({"id": 9, "data": {"other": "x"}})
    reply = client.post("/predict", json=body).json
    ok, *failed = reply["results"]
    assert len(ok["result"]) == 6
    assert failed == [{"result": [], "score": 0.0, "model_version": reply["model_version"]}] * 4
    assert len([w for w in reply["warnings"] if w.startswith("task ")]) == 4
    assert any("HTTP 404" in w for w in reply["warnings"])
    assert any("task data has no 'image'" in w for w in reply["warnings"])
    metrics = client.get("/metrics").json
    assert metrics["predict"]["tasks"] == 5 and metrics["predict"]["tasks_failed"] == 4


def test_failed_task_reply_none_lets_label_studio_retry(fake_ls, config, fake_methods):
    client = create_app(config.replace(failed_task_reply="none"), methods=fake_methods).test_client()
    reply = client.post("/predict", json=predict_body(fake_ls.url + "/missing.png")).json
    assert reply["results"] == [[]]


def test_predict_uses_the_label_config_from_setup(fake_ls, config, fake_methods):
    fake_ls.state.public["/ok.png"] = png_bytes(sample_image())
    client = create_app(config, methods=fake_methods).test_client()
    setup = client.post("/setup", json={"project": "7.123", "schema": CONFIG_XML}).json
    body = predict_body(fake_ls.url + "/ok.png")
    del body["label_config"]
    body["project"] = "7.123"
    reply = client.post("/predict", json=body).json
    assert reply["model_version"] == setup["model_version"]
    assert len(reply["results"][0]["result"]) == 6
    assert client.get("/versions", json={"project": "7.123"}).json == {"versions": [setup["model_version"]]}


def test_basic_auth(fake_ls, config, fake_methods):
    fake_ls.state.public["/ok.png"] = png_bytes(sample_image())
    app = create_app(config.replace(basic_auth_user="ls", basic_auth_pass="s3cret"), methods=fake_methods)
    client = app.test_client()
    # /health answers without credentials: Label Studio's and compose's health checks send none
    assert client.get("/health").status_code == 200
    response = client.post("/predict", json=predict_body(fake_ls.url + "/ok.png"))
    assert_json_error(response, 401, "authentication required")
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert_json_error(client.get("/"), 401, "authentication required")
    assert_json_error(client.get("/metrics"), 401, "authentication required")

    def header(user, password):
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    assert client.get("/metrics", headers=header("ls", "wrong")).status_code == 401
    assert client.post("/setup", json={"schema": CONFIG_XML}, headers=header("other", "s3cret")).status_code == 401
    assert client.get("/health", headers=header("ls", "s3cret")).status_code == 200
    assert client.post("/setup", json={"schema": CONFIG_XML}, headers=header("ls", "s3cret")).status_code == 200
    ok = client.post("/predict", json=predict_body(fake_ls.url + "/ok.png"), headers=header("ls", "s3cret"))
    assert ok.status_code == 200 and len(ok.json["results"]) == 1


def test_health_and_setup_answer_while_models_load(config, fake_ls):
    fake_ls.state.public["/ok.png"] = png_bytes(sample_image())
    methods = FakeMethods(block_loading=True)
    client = create_app(config.replace(model_load_wait_s=0.2), methods=methods).test_client()
    assert client.get("/health").json["models"] == "loading"
    assert "model_version" in client.post("/setup", json={"schema": CONFIG_XML}).json
    assert_json_error(client.post("/predict", json=predict_body(fake_ls.url + "/ok.png")), 503, "still loading")
    methods.release.set()
    app_runtime = client.application.extensions["segmentation_service"].runtime
    app_runtime.wait_until_ready(10)
    assert client.get("/health").json["models"] == "ready"
    assert client.post("/predict", json=predict_body(fake_ls.url + "/ok.png")).status_code == 200
    assert methods.load_calls == 1


def test_failed_loading_is_reported_not_raised(config, fake_ls):
    fake_ls.state.public["/ok.png"] = png_bytes(sample_image())
    client = create_app(config, methods=FakeMethods(fail_loading=True)).test_client()
    client.application.extensions["segmentation_service"].runtime._ready.wait(10)
    assert client.get("/health").json["models"] == "error: FileNotFoundError: no weights for preset cpu"
    assert_json_error(client.post("/predict", json=predict_body(fake_ls.url + "/ok.png")), 503, "failed to load")


def test_models_load_on_first_predict_when_asked(config, fake_ls):
    fake_ls.state.public["/ok.png"] = png_bytes(sample_image())
    methods = FakeMethods()
    client = create_app(config.replace(load_models_on_start=False), methods=methods).test_client()
    assert client.get("/health").json["models"] == "idle" and methods.load_calls == 0
    assert client.post("/predict", json=predict_body(fake_ls.url + "/ok.png")).status_code == 200
    assert methods.load_calls == 1


def test_large_images_are_downscaled_for_the_model_and_results_scaled_back(config, fake_ls, fake_methods):
    fake_ls.state.public["/big.png"] = png_bytes(sample_image(200, 100))
    client = create_app(config.replace(model_max_pixels=2_000), methods=fake_methods).test_client()
    (prediction,) = client.post("/predict", json=predict_body(fake_ls.url + "/big.png")).json["results"]
    brush = prediction["result"][0]
    assert (brush["original_width"], brush["original_height"]) == (200, 100)
    mask = rle_to_mask(brush["value"]["rle"], 100, 200)
    assert mask[:, :95].all() and not mask[:, 105:].any()
    (segmenter,) = fake_methods.segmenters
    assert segmenter.calls == 1


def test_model_version_names_preset_settings_and_checkpoint(config, fake_methods):
    client = create_app(config.replace(model_preset="tiny"), methods=fake_methods).test_client()

    def version(xml=CONFIG_XML):
        return client.post("/setup", json={"schema": xml}).json["model_version"]

    base = version()
    assert base.startswith("tiny-zg.") and base.endswith(".base") and "-fmbseg." in base
    assert version() == base  # stable
    tuned = CONFIG_XML.replace(
        '<BrushLabels name="segment" toName="image">',
        '<BrushLabels name="segment" toName="image" model_settings=\'{"n_clusters": 8}\'>',
    )
    zg_changed = version(tuned)
    assert zg_changed != base and zg_changed.split("-fmbseg.")[1] == base.split("-fmbseg.")[1]
    checkpoints = config.model_dir / "checkpoints" / "fmbseg"
    checkpoints.mkdir(parents=True)
    (checkpoints / "alignment-step100.safetensors").write_bytes(b"weights v1")
    with_checkpoint = version()
    assert with_checkpoint.split(".")[-1].startswith("alignment-step100-") and with_checkpoint != base
    only_zero_guidance = CONFIG_XML.replace(
        '<BrushLabels name="class_mask" toName="image">',
        '<BrushLabels name="class_mask" toName="image" model_skip="true">',
    )
    assert "fmbseg" not in version(only_zero_guidance)


def test_metrics_report_unsupported_labels_and_training(config, fake_ls, fake_methods):
    fake_ls.state.public["/ok.png"] = png_bytes(sample_image())
    client = create_app(config, methods=fake_methods).test_client()
    xml = CONFIG_XML.replace('<Label value="sky"/>', '<Label value="sky"/><Label value="unknown thing"/>')
    reply = client.post("/predict", json=predict_body(fake_ls.url + "/ok.png", label_config=xml)).json
    assert any('"unknown thing" is not predicted' in w for w in reply["warnings"])
    metrics = client.get("/metrics").json
    assert metrics["unsupported_labels"] == {"class_mask": {"unknown thing": "the model returned no prediction for it"}}
    assert metrics["models"] == "ready" and metrics["training"]["state"] == "idle"
    assert metrics["predict"]["results"] == 6 and metrics["fmbseg_checkpoint"] == "base"
    json.dumps(metrics)  # JSON-able


class BrokenFMbSeg(FakeMethods):
    def fmbseg(self, models, overrides, checkpoint):
        raise ImportError("cannot import name 'FMbSegPredictor'")


def test_a_failing_tag_keeps_the_other_tags_results(config, fake_ls):
    fake_ls.state.public["/ok.png"] = png_bytes(sample_image())
    client = create_app(config, methods=BrokenFMbSeg()).test_client()
    reply = client.post("/predict", json=predict_body(fake_ls.url + "/ok.png")).json
    (prediction,) = reply["results"]
    assert {r["from_name"] for r in prediction["result"]} == {"segment", "caption"}
    assert reply["warnings"] == [
        "task 1: <BrushLabels name=\"class_mask\"> failed: ImportError: cannot import name 'FMbSegPredictor'"
    ]
    assert client.get("/metrics").json["predict"]["tasks_failed"] == 0
    only_classes = CONFIG_XML.replace(
        '<BrushLabels name="segment" toName="image">', '<BrushLabels name="segment" toName="image" model_skip="true">'
    )
    reply = client.post("/predict", json=predict_body(fake_ls.url + "/ok.png", label_config=only_classes)).json
    assert reply["results"][0]["result"] == [] and "ImportError" in reply["warnings"][0]


def test_each_project_is_served_its_own_checkpoint(config, fake_ls, fake_methods):
    """Retraining project 2 changes neither project 1's model version nor its predictions."""
    fake_ls.state.public["/ok.png"] = png_bytes(sample_image())
    client = create_app(config.replace(model_preset="tiny"), methods=fake_methods).test_client()

    def version(project):
        return client.post("/setup", json={"schema": CONFIG_XML, "project": f"{project}.1700000000"}).json[
            "model_version"
        ]

    def predict(project):
        body = {**predict_body(fake_ls.url + "/ok.png"), "project": f"{project}.1700000000"}
        assert client.post("/predict", json=body).status_code == 200
        return fake_methods.predictors[-1].checkpoint_path

    before = {1: version(1), 2: version(2)}
    assert before[1] == before[2] and before[1].endswith(".base")
    checkpoints = config.model_dir / "checkpoints" / "fmbseg"
    checkpoints.mkdir(parents=True)
    (checkpoints / "fmbseg-project-2-v1.safetensors").write_bytes(b"project 2 weights")
    assert version(1) == before[1] and predict(1) is None  # project 1: still Stage 1
    assert version(2) != before[2] and ".fmbseg-project-2-v1-" in version(2)
    assert predict(2) == checkpoints / "fmbseg-project-2-v1.safetensors"
    (checkpoints / "operator-shared.safetensors").write_bytes(b"an operator's module")
    assert ".operator-shared-" in version(1) and predict(1) == checkpoints / "operator-shared.safetensors"
    assert ".fmbseg-project-2-v1-" in version(2)  # a project's own checkpoint wins over a shared one
