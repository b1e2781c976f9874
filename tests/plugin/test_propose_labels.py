"""python -m plugin propose-labels: synonyms grouped with the real Sentence-BERT, coverage by hand."""

import json

import numpy as np
import pytest

from plugin.cli import main
from plugin.labels import LabelProposal, NamedArea, add_labels_to_config, propose_labels
from tests.plugin.test_rate import H, W, FakeLabelStudio, brush, caption, fake  # noqa: F401 - fixtures


def rows(start, stop):
    mask = np.zeros((H, W), bool)
    mask[start:stop] = True
    return mask


def test_kitten_joins_cat_and_coverage_is_the_share_of_pixels(tiny_models):
    segments = [NamedArea("cat", 48), NamedArea("Grass", 60), NamedArea("kitten", 24), NamedArea("lawn", 48)]
    segments.append(NamedArea("sky", 36))
    proposals = propose_labels(segments, 216, tiny_models.sentence.encode)
    assert [(p.name, p.synonyms) for p in proposals] == [
        ("grass", ["grass", "lawn"]),  # 108 of 216 pixels
        ("cat", ["cat", "kitten"]),  # 72
        ("sky", ["sky"]),  # 36
    ]
    assert [p.coverage for p in proposals] == pytest.approx([0.5, 1 / 3, 1 / 6])
    assert proposals[1].label_xml() == '<Label value="cat" model_prompt="cat" predicted_values="cat,kitten"/>'


def test_dog_and_cat_stay_apart(tiny_models):
    proposals = propose_labels([NamedArea("cat", 1), NamedArea("dog", 1)], 2, tiny_models.sentence.encode)
    assert sorted(p.name for p in proposals) == ["cat", "dog"]  # MiniLM: 0.66 < 0.7


def test_the_proposals_go_into_the_class_tag_once():
    config = '<View><Image name="image" value="$image"/><!-- keep me -->'
    config += '<BrushLabels name="class_mask" toName="image"><Label value="cat"/></BrushLabels></View>'
    proposals = [
        LabelProposal("cat", ["cat"], 0.3, 1),
        LabelProposal("a lawn, mown", ["a lawn, mown", "grass"], 0.5, 2),
    ]
    updated, added = add_labels_to_config(config, "class_mask", proposals)
    assert added == ["a lawn, mown"] and "keep me" in updated
    assert updated.count("<Label ") == 2 and 'predicted_values="a lawn  mown,grass"' in updated


def test_propose_labels_command(fake, tmp_path, capsys):  # noqa: F811
    from pathlib import Path

    config = (Path(__file__).resolve().parents[2] / "label_config.xml").read_text()
    project = fake.add_project("photos", config)
    texts = {
        1: [("cat", rows(0, 4)), ("grass", rows(4, 9))],
        2: [("kitten", rows(0, 2)), ("lawn", rows(2, 6)), ("sky", rows(6, 9))],
    }
    for index, named in texts.items():
        task = fake.upload_image(project, f"{index}.png", b"")
        result = []
        for number, (text, mask) in enumerate(named):
            result += [brush(f"r{number}", "segment", "segment", mask), caption(f"r{number}", text)]
        fake.predictions.append(
            {"id": 100 + index, "task": task, "project": project, "model_version": "v", "result": result}
        )
    assert main(["propose-labels", "--project", str(project), "--sample", "5", "--apply", "--json"]) == 0
    printed = capsys.readouterr().out
    proposals = json.loads(printed.strip().splitlines()[-1])
    assert [(p["name"], p["synonyms"]) for p in proposals] == [
        ("grass", ["grass", "lawn"]),
        ("cat", ["cat", "kitten"]),
        ("sky", ["sky"]),
    ]
    assert "added to <class_mask>: grass" in printed  # cat and sky are labels already
    patched = fake.projects[project]["label_config"]
    assert '<Label value="grass" model_prompt="grass" predicted_values="grass,lawn"' in patched
