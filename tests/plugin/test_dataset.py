import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from plugin.dataset import ExportOptions, export_project, image_file_name, safe_name, select_annotations
from plugin.errors import PluginError
from tests.plugin.conftest import FakeConnection, png_bytes
from tests.plugin.test_export_formats import brush  # a brush region as Label Studio sends it

W, H = 5, 4


def project_client(label_config, tasks):
    project = SimpleNamespace(id=2, title="P", label_config=label_config)
    return SimpleNamespace(
        projects=SimpleNamespace(get=lambda project_id: project),
        tasks=SimpleNamespace(list=lambda **kwargs: iter(tasks)),
    )


def test_export_writes_images_masks_and_json(tmp_path, label_config):
    mask = np.zeros((H, W), dtype=bool)
    mask[1:3, 2:5] = True
    result = [
        brush("r/1", "segment", "segment", mask),
        {"id": "r/1", "from_name": "caption", "type": "textarea", "value": {"text": ["a roof"]}},
        {"id": "r/1", "from_name": "rating", "type": "choices", "value": {"choices": ["3"]}},
    ]
    tasks = [
        SimpleNamespace(
            id=7,
            data={"image": "/data/upload/2/0a1b2c3d-roof.png"},
            annotations=[
                {"id": 1, "result": [], "was_cancelled": False},
                {"id": 4, "result": result, "was_cancelled": False, "completed_by": 1},
                {"id": 9, "result": [], "was_cancelled": True},
            ],
        ),
        SimpleNamespace(id=8, data={"image": "/data/upload/2/ffffffff-x.png"}, annotations=[]),
    ]
    connection = FakeConnection(
        project_client(label_config, tasks), files={"/data/upload/2/0a1b2c3d-roof.png": png_bytes(W, H)}
    )
    summary = export_project(connection, 2, tmp_path / "out")

    assert (summary.tasks, summary.annotations, summary.regions) == (1, 1, 1)
    assert connection.downloads == ["/data/upload/2/0a1b2c3d-roof.png"]  # unannotated task 8 is not fetched
    document = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert document["project"] == {"id": 2, "title": "P"}
    (item,) = document["items"]
    assert item == {
        "task_id": 7,
        "annotation_id": 4,
        "completed_by": 1,
        "image": "images/7-roof.png",
        "source": "/data/upload/2/0a1b2c3d-roof.png",
        "width": W,
        "height": H,
        "regions": [
            {
                "id": "r/1",
                "control": "segment",
                "labels": ["segment"],
                "mask": "masks/7/4-r_1.png",
                "area": 6,
                "texts": {"caption": ["a roof"]},
                "choices": {"rating": ["3"]},
                "rating": 3,
            }
        ],
    }
    saved = np.asarray(Image.open(tmp_path / "out" / "masks/7/4-r_1.png"))
    np.testing.assert_array_equal(saved, mask.astype(np.uint8) * 255)
    assert (tmp_path / "out" / "images/7-roof.png").read_bytes() == png_bytes(W, H)


def test_export_refuses_masks_of_another_size(tmp_path, label_config):
    tasks = [
        SimpleNamespace(
            id=1,
            data={"image": "http://h/i.png"},
            annotations=[{"id": 2, "result": [brush("a", "segment", "segment", np.ones((3, 3), bool))]}],
        )
    ]
    connection = FakeConnection(project_client(label_config, tasks), files={"http://h/i.png": png_bytes(W, H)})
    with pytest.raises(PluginError, match="mask 3x3 but image 5x4"):
        export_project(connection, 2, tmp_path)


def test_select_annotations():
    annotations = [{"id": 5}, {"id": 2}, {"id": 7, "was_cancelled": True}]
    assert select_annotations(annotations, ExportOptions()) == [{"id": 5}]
    assert select_annotations(annotations, ExportOptions(all_annotations=True)) == [{"id": 2}, {"id": 5}]
    assert select_annotations([{"id": 1, "was_cancelled": True}], ExportOptions()) == []


def test_file_names():
    assert image_file_name(3, "/data/upload/1/0a1b2c3d-cat.png") == "3-cat.png"
    assert image_file_name(3, "https://h/a%20b/c%20d.jpg?x=1") == "3-c_d.jpg"
    assert safe_name("../..") == "item"
