"""python -m plugin tune-thresholds: the threshold that best separates kept from deleted regions, by hand."""

import json

import numpy as np
import pytest

from plugin.cli import main
from plugin.thresholds import apply_thresholds, best_threshold
from tests.plugin.test_rate import H, W, FakeLabelStudio, brush, fake  # noqa: F401 - fixtures

# (score, kept): t = 0.5 shows 0.9, 0.8, 0.5 (kept) and hides 0.3, 0.2 (deleted): 5 of 6 right;
# t = 0.8 also gets 5 (hides 0.6, 0.5: one of each); the lowest of the best wins
OUTCOMES = [(0.9, True), (0.8, True), (0.6, False), (0.5, True), (0.3, False), (0.2, False)]


def test_best_threshold_by_hand():
    assert best_threshold(OUTCOMES) == (0.5, 5)
    assert best_threshold([(0.4, True), (0.2, True)]) == (0.0, 2)  # all kept: show all
    assert best_threshold([(0.4, False), (0.2, False)]) == (0.4, 1)  # all deleted: hide all but the top tie
    with pytest.raises(ValueError):
        best_threshold([])


def test_thresholds_go_on_labels_or_on_a_palette_tag():
    config = (
        '<View><Image name="image" value="$image"/><!-- c -->'
        '<BrushLabels name="segment" toName="image"><Label value="segment"/><Label value="segment 2"/></BrushLabels>'
        '<BrushLabels name="class_mask" toName="image"><Label value="cat"/><Label value="dog"/></BrushLabels></View>'
    )
    updated = apply_thresholds(config, {("segment", "segment"): 0.25, ("class_mask", "dog"): 0.5}, {"segment"})
    assert '<BrushLabels name="segment" toName="image" model_score_threshold="0.25">' in updated
    assert '<Label value="dog" model_score_threshold="0.5" />' in updated and '<Label value="cat" />' in updated


def test_tune_thresholds_command(fake, capsys):  # noqa: F811
    from pathlib import Path

    config = (Path(__file__).resolve().parents[2] / "label_config.xml").read_text()
    project = fake.add_project("photos", config)
    for index, (score, kept) in enumerate(OUTCOMES):
        task = fake.upload_image(project, f"{index}.png", b"")
        mask = np.zeros((H, W), bool)
        mask[index : index + 2] = True
        predicted = {**brush("r", "segment", "segment 2", mask), "score": score}
        fake.predictions.append(
            {"id": 50 + index, "task": task, "project": project, "model_version": "v", "result": [predicted]}
        )
        fake.tasks[task]["annotations"] = [
            {
                "id": 80 + index,
                "result": [predicted] if kept else [],
                "parent_prediction": 50 + index,
                "was_cancelled": False,
            }
        ]
    assert main(["tune-thresholds", "--project", str(project), "--apply", "--json"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed.strip().splitlines()[-1]) == [
        {"control": "segment", "label": "segment", "threshold": 0.5}
    ]
    assert "segment: segment: threshold 0.5 (5 of 6 regions right; 3 kept, 3 deleted)" in printed
    patched = fake.projects[project]["label_config"]
    assert 'name="segment"' in patched and 'model_score_threshold="0.5"' in patched
