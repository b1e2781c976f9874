"""python -m plugin report: acceptance of a project's pre-labels, from Label Studio's API shapes."""

import json

import numpy as np
from PIL import Image

from plugin.cli import main
from plugin.report import BAR_AREA, BAR_COLOUR, LABEL_WIDTH, ROW_HEIGHT
from tests.plugin.test_rate import FakeLabelStudio, fake  # noqa: F401 - the fixture
from tests.service.test_acceptance import ANNOTATED, PREDICTED

CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="segment" toName="image" model_mode="zero-guidance"><Label value="segment"/></BrushLabels>
<TextArea name="caption" toName="image" perRegion="true"/>
<BrushLabels name="class_mask" toName="image" model_mode="classes"><Label value="cat"/><Label value="dog"/></BrushLabels>
</View>"""


def test_report_of_a_corrected_project(fake, tmp_path, capsys):  # noqa: F811
    project = fake.add_project("pre-labelled", CONFIG)
    corrected = fake.add_task(project, {"image": "/data/upload/1/a.png"})
    fake.predictions.append(
        {"id": 5, "task": corrected, "project": project, "model_version": "v1", "result": PREDICTED}
    )
    fake.tasks[corrected]["annotations"] = [
        {"id": 9, "result": ANNOTATED, "parent_prediction": 5, "was_cancelled": False, "completed_by": 1},
        {"id": 10, "result": [], "parent_prediction": 5, "was_cancelled": True, "completed_by": 2},  # skipped
    ]
    scratch = fake.add_task(project, {"image": "/data/upload/1/b.png"})
    fake.tasks[scratch]["annotations"] = [{"id": 11, "result": ANNOTATED, "was_cancelled": False, "completed_by": 1}]

    out = tmp_path / "report"
    assert main(["report", "--project", str(project), "--out", str(out)]) == 0
    assert "1 of 2 annotation(s) compared" in capsys.readouterr().out
    markdown = (out / "report.md").read_text()
    # tests/service/test_acceptance.py works these out: cat repainted (IoU 4/6), dog deleted and
    # another drawn (IoU 0), segment: one unchanged, one text edited (IoU 1)
    assert "| classes: cat | 1 | 66.7 | 0.0 | 100.0 | 0.0 | 0 | 0/0 |" in markdown
    assert "| classes: dog | 1 | 0.0 | 0.0 | 0.0 | 100.0 | 1 | 0/0 |" in markdown
    assert "| zero-guidance: segment | 2 | 100.0 | 50.0 | 50.0 | 0.0 | 0 | 1/2 |" in markdown
    assert "| v1 | 4 | " in markdown and "- grass -> a lawn" in markdown
    assert "1 without one" in markdown
    assert json.loads((out / "acceptance.json").read_text())["tasks"] == 1
    # the IoU chart: row 0 is "classes: cat", its bar 2/3 of BAR_AREA long
    chart = np.asarray(Image.open(out / "iou-per-label.png").convert("RGB"))
    middle = 40 + ROW_HEIGHT // 2
    length = round(BAR_AREA * 4 / 6)
    assert tuple(chart[middle, LABEL_WIDTH + length - 1]) == BAR_COLOUR
    assert tuple(chart[middle, LABEL_WIDTH + length + 1]) == (255, 255, 255)
    assert (out / "acceptance-per-version.png").is_file()


def test_report_needs_shapes_to_measure(fake, tmp_path, capsys):  # noqa: F811
    project = fake.add_project("texts only", '<View><Image name="image" value="$image"/></View>')
    assert main(["report", "--project", str(project), "--out", str(tmp_path)]) == 2
    assert "no BrushLabels or PolygonLabels" in capsys.readouterr().err
