"""The result types: torch-free, picklable, with the merge and text scores kept apart."""

import dataclasses
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.zeroguide import Segment, ZeroGuidanceResult, ZeroGuideSettings
from backend.zeroguide.results import Segment as ResultsSegment

REPO = Path(__file__).resolve().parents[2]


def make_result() -> ZeroGuidanceResult:
    left = np.zeros((4, 6), bool)
    left[:, :3] = True
    embedding = np.zeros(8, np.float32)
    embedding[0] = 1.0
    segments = [
        Segment(mask=left, text="sky", embedding=embedding, text_score=0.31, merge_score=0.85, node_id=12),
        Segment(
            mask=~left, text="grass", embedding=embedding[::-1].copy(), text_score=0.27, merge_score=None, node_id=3
        ),
    ]
    return ZeroGuidanceResult(
        segments=segments,
        image_size=(4, 6),
        settings=ZeroGuideSettings(),
        model_version="zeroguide-test",
        preset="tiny",
        random_weights=True,
        timings={"features": 0.1},
        candidates=5,
    )


def test_segment_fields():
    assert Segment is ResultsSegment
    assert [f.name for f in dataclasses.fields(Segment)] == [
        "mask",
        "text",
        "embedding",
        "text_score",
        "merge_score",
        "node_id",
    ]
    merged, unmerged = make_result().segments
    assert merged.merge_score == 0.85 and merged.text_score == 0.31
    assert unmerged.merge_score is None and unmerged.text_score == 0.27
    assert not hasattr(merged, "score"), "no property mixing the section 3.4 score with the text score"
    assert merged.area == 12 and unmerged.area == 12


def test_result_label_map_and_pickle_round_trip():
    result = make_result()
    assert result.label_map().tolist() == [[0, 0, 0, 1, 1, 1]] * 4
    back = pickle.loads(pickle.dumps(result))
    assert [s.text for s in back.segments] == ["sky", "grass"]
    assert back.segments[0].embedding.dtype == np.float32
    np.testing.assert_array_equal(back.segments[1].embedding, result.segments[1].embedding)
    assert back.settings == result.settings and back.segments[1].merge_score is None


def run_python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter at the repository root; it prints one JSON object."""
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def torch_modules_after(imports: str) -> list[str]:
    code = (
        f"import json, sys\n{imports}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:5]))"
    )
    return run_python(code)


def test_result_and_captioner_settings_modules_import_without_torch():
    """What the service's HTTP process imports must not bring in torch."""
    loaded = torch_modules_after(
        "import backend.zeroguide.results, backend.zeroguide.captioning.settings, "
        "backend.zeroguide.captioning.registry"
    )
    assert loaded == [], f"torch imported: {loaded}"


def test_result_unpickles_without_torch(tmp_path):
    """The model process pickles results to the HTTP process, which never imports torch."""
    path = tmp_path / "result.pickle"
    path.write_bytes(pickle.dumps(make_result()))
    if torch_modules_after("import backend.zeroguide.settings"):
        pytest.xfail(
            "backend/zeroguide/settings.py still imports torch (through backend.models.clip); "
            "the result carries a ZeroGuideSettings"
        )
    code = (
        "import json, pickle, sys\n"
        f"result = pickle.loads(open({str(path)!r}, 'rb').read())\n"
        "print(json.dumps({'torch': [m for m in sys.modules if m.split('.')[0] == 'torch'][:5],\n"
        "                  'texts': [s.text for s in result.segments]}))"
    )
    outcome = run_python(code)
    assert outcome == {"torch": [], "texts": ["sky", "grass"]}
