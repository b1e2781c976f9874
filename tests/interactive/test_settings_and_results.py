"""ClickSettings (allow-list, bounds) and ClickResult (checked, picklable, torch-free)."""

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.interactive.results import ClickResult
from backend.interactive.settings import ClickSettings
from backend.settings import SettingsError, check_project_overrides, tunable_fields

REPOSITORY = Path(__file__).resolve().parents[2]


def test_defaults_multimask_on_and_a_bounded_cache():
    settings = ClickSettings()
    assert settings.multimask_output is True
    assert settings.embedding_cache_entries >= 1 and settings.embedding_cache_bytes >= 16 * 1024 * 1024


def test_a_project_may_set_multimask_but_not_the_cache():
    assert set(tunable_fields(ClickSettings)) == {"multimask_output"}
    check_project_overrides(ClickSettings, {"multimask_output": False})
    for refused in ({"embedding_cache_bytes": 1}, {"embedding_cache_entries": 10**6}, {"cache": 1}):
        with pytest.raises(SettingsError, match="a project may set: multimask_output"):
            check_project_overrides(ClickSettings, refused)
    with pytest.raises(SettingsError, match="sam_precision is not a setting"):  # SAM's precision is DTYPE's
        check_project_overrides(ClickSettings, {"sam_precision": "float16"})


def test_the_operator_sets_the_cache_bounds_checked():
    settings = ClickSettings.resolve({}, {"embedding_cache_entries": 2, "embedding_cache_bytes": 1024})
    assert (settings.embedding_cache_entries, settings.embedding_cache_bytes) == (2, 1024)
    for bad in ({"embedding_cache_entries": -1}, {"embedding_cache_bytes": 1.5}, {"sam_precision": "fp8"}):
        with pytest.raises(SettingsError):
            ClickSettings.resolve({}, bad)


def result(**changes) -> ClickResult:
    values = dict(mask=np.ones((3, 4), bool), text="a dog", text_score=0.3, sam_score=0.9)
    return ClickResult(**{**values, **changes})


def test_click_result_is_checked_on_construction():
    assert result(mask=np.ones((3, 4), np.uint8)).mask.dtype == bool
    assert result(class_name="dog", class_score=0.6).class_name == "dog"
    with pytest.raises(ValueError, match="mask"):
        result(mask=np.ones((2, 3, 4), bool))
    with pytest.raises(ValueError, match="both or neither"):
        result(class_name="dog")
    with pytest.raises(ValueError, match="class_score"):
        result(class_name="dog", class_score=1.5)
    with pytest.raises(ValueError, match="text_score"):
        result(text_score=float("nan"))


def test_click_result_pickles_and_imports_without_torch():
    restored = pickle.loads(pickle.dumps(result(class_name="dog", class_score=0.5, timings={"sam_image": 1.0})))
    assert restored.text == "a dog" and restored.mask.shape == (3, 4) and restored.timings == {"sam_image": 1.0}
    code = (
        "import sys, backend.interactive, backend.interactive.settings, backend.interactive.results, "
        "backend.interactive.cache; from backend.interactive import ClickSettings, ClickResult, EmbeddingCache; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, check=True, timeout=120)
