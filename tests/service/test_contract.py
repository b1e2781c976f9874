"""The typed contract between Label Studio and the methods: who may set which setting, and where
it is checked (docs/architecture.md, "The contract")."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from backend.fmbseg.settings import FMbSegSettings
from backend.interactive.settings import ClickSettings
from backend.models.settings import SegmentEncoding
from backend.service.app import create_app
from backend.service.config import ServiceConfig
from backend.settings import NESTED, TUNABLE, SettingsError, check_project_overrides
from backend.zeroguide.captioning.registry import captioner_names, settings_class
from backend.zeroguide.settings import ZeroGuideSettings

from .conftest import load_recorded

REPOSITORY = Path(__file__).resolve().parents[2]
SETUP = load_recorded("setup.json")


def zero_guidance_config(model_settings: str) -> str:
    return f"""<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="segment" toName="image" model_mode="zero-guidance"
               model_settings='{model_settings}'><Label value="segment"/></BrushLabels>
  <TextArea name="caption" toName="image" perRegion="true"/>
</View>"""


def class_config(model_settings: str) -> str:
    return f"""<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="classes" toName="image" model_mode="classes" model_settings='{model_settings}'>
    <Label value="cat"/><Label value="sky"/>
  </BrushLabels>
</View>"""


# ---- the methods' settings and results import no torch --------------------------------------


def test_settings_results_and_the_http_process_import_no_torch():
    code = (
        "import sys, backend.zeroguide.settings, backend.fmbseg.settings, backend.zeroguide.results, "
        "backend.fmbseg.results, backend.interactive.settings, backend.interactive.results, "
        "backend.service.app, backend.service.model_process, backend.service.interactive; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, check=True, timeout=120)


# ---- the allow-list, walked field by field ---------------------------------------------------


def settings_classes() -> list[type]:
    return [
        ZeroGuideSettings,
        FMbSegSettings,
        ClickSettings,
        SegmentEncoding,
        *(settings_class(n) for n in captioner_names()),
    ]


def out_of_bounds(spec) -> list:
    if spec.choices:
        wrong_type = "yes" if isinstance(spec.choices[0], bool) else 1
        return ["not-a-choice", wrong_type, None] if not spec.optional else ["not-a-choice", wrong_type]
    values = [spec.minimum - 1, spec.maximum + 1, "5", True, float("nan")]
    if spec.integer:
        values.append(spec.minimum + 0.5)
    return values


def in_bounds(spec) -> list:
    values = list(spec.choices) if spec.choices else [spec.minimum, spec.maximum]
    return values + ([None] if spec.optional else [])


@pytest.mark.parametrize("settings_class_", settings_classes(), ids=lambda c: c.__name__)
def test_every_field_is_tunable_within_bounds_or_refused(settings_class_):
    for spec in dataclasses.fields(settings_class_):
        if TUNABLE in spec.metadata:
            bounds = spec.metadata[TUNABLE]
            for value in in_bounds(bounds):
                check_project_overrides(settings_class_, {spec.name: value})
            for value in out_of_bounds(bounds):
                with pytest.raises(SettingsError, match=spec.name):
                    check_project_overrides(settings_class_, {spec.name: value})
        elif NESTED in spec.metadata:
            with pytest.raises(SettingsError, match=spec.name):
                check_project_overrides(settings_class_, {spec.name: "not an object"})
        else:
            with pytest.raises(SettingsError, match=f"{spec.name} cannot be set by a project"):
                check_project_overrides(settings_class_, {spec.name: spec.default})


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"captioner_options": {"vocabulary_file": "/etc/passwd"}}, "captioner_options.vocabulary_file cannot be set"),
        ({"captioner_options": {"cache_dir": "/tmp/x"}}, "captioner_options.cache_dir cannot be set"),
        ({"tau_merg": 0.8}, "tau_merg is not a setting; a project may set: captioner, captioner_options"),
        ({"segment_encoding": {"sigma_squared": -1}}, "segment_encoding.sigma_squared must be in"),
        ({"merge_threshold": 2}, "merge_threshold must be in [-1, 1]"),
        ({"captioner": "gpt-5"}, "captioner must be one of"),
    ],
)
def test_zero_guidance_refusals_name_the_field(overrides, fragment):
    with pytest.raises(SettingsError) as error:
        ZeroGuideSettings.resolve({}, {}, overrides, where="<BrushLabels model_settings>")
    assert fragment in str(error.value) and str(error.value).startswith("<BrushLabels model_settings>")


def test_precedence_paper_preset_operator_project_and_nested_merge():
    settings = ZeroGuideSettings.resolve(
        {"dino_stride": 6, "crf_max_side": 256},  # preset
        {"dino_stride": 4, "segment_encoding": {"masked_layers": 2}, "captioner_options": {"cache_dir": "/srv/c"}},
        {"dino_stride": 3, "segment_encoding": {"sigma_squared": 3.0}, "captioner_options": {"alternatives": 2}},
    )
    assert (settings.dino_stride, settings.crf_max_side, settings.n_clusters) == (3, 256, 20)
    assert settings.segment_encoding == SegmentEncoding(masked_layers=2, sigma_squared=3.0)
    assert settings.captioner_options.cache_dir == "/srv/c" and settings.captioner_options.alternatives == 2


def test_the_operator_may_set_paths_and_bad_environment_settings_stop_the_start():
    config = ServiceConfig.from_env(
        {"ZEROGUIDE_SETTINGS": json.dumps({"captioner_options": {"vocabulary_file": "v.txt"}})}
    )
    assert config.zeroguide_settings["captioner_options"]["vocabulary_file"] == "v.txt"
    with pytest.raises(ValueError, match="ZEROGUIDE_SETTINGS: unknown field.*tau_merg"):
        ServiceConfig.from_env({"ZEROGUIDE_SETTINGS": '{"tau_merg": 0.8}'})
    with pytest.raises(ValueError, match="FMBSEG_SETTINGS: .*prompt_template"):
        ServiceConfig.from_env({"FMBSEG_SETTINGS": '{"prompt_template": "no placeholder"}'})
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        ServiceConfig.from_env({"MODEL_PRESET": "huge"})


# ---- checked at the door: /setup and /predict answer 400 --------------------------------------


@pytest.fixture
def client(config, fake_methods):
    return create_app(config, methods=fake_methods, load_models=False).test_client()


@pytest.mark.parametrize(
    "label_config, fragment",
    [
        (zero_guidance_config('{"captioner_options": {"vocabulary_file": "/etc/passwd"}}'), "vocabulary_file"),
        (zero_guidance_config('{"tau_merg": 0.8}'), "tau_merg is not a setting; a project may set: "),
        (zero_guidance_config('{"n_clusters": 100000}'), "n_clusters must be in [1, 100]"),
        (class_config('{"prompt_template": "{}"}'), "prompt_template cannot be set by a project"),
        (class_config('{"dinov2_image_size": 100}'), "dinov2_image_size"),
        (class_config("[1, 2]"), "must be a JSON object"),
    ],
)
def test_refused_settings_answer_400_at_setup_and_predict(client, fake_methods, label_config, fragment):
    setup = client.post("/setup", json={**SETUP["body"], "schema": label_config})
    assert setup.status_code == 400 and fragment in setup.json["error"], setup.json
    assert "model_settings" in setup.json["error"]
    predict = client.post(
        "/predict", json={"tasks": [{"id": 1, "data": {"image": "x.png"}}], "label_config": label_config}
    )
    assert predict.status_code == 400 and fragment in predict.json["error"]
    assert not fake_methods.segmenters and not fake_methods.predictors  # nothing ran


def test_valid_project_settings_reach_the_method_typed(client, fake_methods, config):
    label_config = zero_guidance_config('{"merge_threshold": 0.7, "segment_encoding": {"sigma_squared": 3}}')
    assert client.post("/setup", json={**SETUP["body"], "schema": label_config}).status_code == 200
    from backend.service.method_settings import zero_guidance_settings
    from backend.service.segmentation_model import SegmentationMLBackend

    model = SegmentationMLBackend(label_config, config=config, runtime=None, fetcher_for=lambda: None)
    (adapter,) = model.adapters
    assert adapter.settings == zero_guidance_settings(
        config, {"merge_threshold": 0.7, "segment_encoding": {"sigma_squared": 3}}
    )
    assert adapter.settings.merge_threshold == 0.7 and adapter.settings.segment_encoding.sigma_squared == 3
