"""``python -m plugin export --format coco|yolo`` against a real Label Studio 1.23.2.

The project is the one ``python -m plugin setup`` made and our backend pre-labelled (the
``prelabelled`` fixture, as in test_prelabelling.py). A human annotation is created through the
API from the stored prediction, its first free-text segment given a caption and a rating; then
the export in COCO (RLE and polygons) and YOLO-seg is read back: pycocotools decodes each
instance to that annotation's brush (exactly for RLE, holes filled for polygons), and the YOLO
lines rasterise to the same masks per class. The brushes are decoded here with the SDK's
``decode_rle``, not by the plugin.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter.brush import decode_rle
from label_studio_sdk.label_interface import LabelInterface
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from scipy import ndimage

from plugin.cli import main as plugin_main
from tests.e2e.conftest import LABEL_CONFIG

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn.t accept a copy keyword:DeprecationWarning"),
]

IMAGE_WIDTH, IMAGE_HEIGHT = 96, 64  # conftest.e2e_images


def brush_mask(item: dict) -> np.ndarray:
    """A brush result's pixels with alpha >= 128, ``(H, W)`` bool."""
    height, width = item["original_height"], item["original_width"]
    alpha = np.asarray(decode_rle(item["value"]["rle"]), dtype=np.uint8).reshape(height, width, 4)[:, :, 3]
    return alpha >= 128


def config_labels() -> list[str]:
    """The categories of label_config.xml, in config order, each once: every BrushLabels label,
    except that a zero-guidance tag's labels (a colour palette) are one category, its first label."""
    interface = LabelInterface(LABEL_CONFIG.read_text())
    names: list[str] = []
    for control in interface.controls:
        if control.tag == "BrushLabels":
            labels = control.labels[:1] if control.attr.get("model_mode") == "zero-guidance" else control.labels
            names += [label for label in labels if label not in names]
    return names


def category(item: dict) -> str:
    """The category a brush region is exported under (see config_labels)."""
    control = LabelInterface(LABEL_CONFIG.read_text()).get_control(item["from_name"])
    if control.attr.get("model_mode") == "zero-guidance":
        return control.labels[0]
    return item["value"]["brushlabels"][0]


@pytest.fixture(scope="module")
def annotated(prelabelled, label_studio):
    """``(project, annotation id, result)``: a human annotation made from the last task's prediction."""
    project = prelabelled("legacy")
    client = LabelStudio(base_url=label_studio.url, api_key=project.api_key)
    task_id = project.task_ids[-1]
    prediction = client.predictions.list(task=task_id)[0]
    result = [dict(item) for item in prediction.result]
    segment = next(item["id"] for item in result if item["type"] == "brushlabels" and item["from_name"] == "segment")
    caption = f"e2e export {uuid.uuid4().hex[:8]}"
    result = [item for item in result if not (item["id"] == segment and item["type"] in ("textarea", "choices"))]
    common = {"id": segment, "to_name": "image", "original_width": IMAGE_WIDTH, "original_height": IMAGE_HEIGHT}
    result.append({**common, "from_name": "caption", "type": "textarea", "value": {"text": [caption]}})
    result.append({**common, "from_name": "rating", "type": "choices", "value": {"choices": ["3"]}})
    annotation = client.annotations.create(id=task_id, result=result, lead_time=1.0)
    return project, annotation.id, result, segment, caption


def export(label_studio, project, out_dir: Path, monkeypatch, capsys, *args: str) -> str:
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", project.api_key)
    status = plugin_main(["export", "--project", str(project.project_id), "--out", str(out_dir), *args])
    output = capsys.readouterr()
    assert status == 0, output
    return output.out


@pytest.mark.parametrize("masks", ["rle", "polygon"])
def test_coco_export_decodes_to_the_annotation(annotated, label_studio, tmp_path, monkeypatch, capsys, masks):
    project, annotation_id, result, segment, caption = annotated
    export(label_studio, project, tmp_path, monkeypatch, capsys, "--format", "coco", "--coco-masks", masks)

    coco = COCO(str(tmp_path / "result.json"))
    categories = coco.loadCats(coco.getCatIds())
    assert [category["name"] for category in categories] == config_labels()
    assert [category["id"] for category in categories] == list(range(1, len(categories) + 1))
    names = {category["id"]: category["name"] for category in categories}
    assert {i["label_studio"]["task_id"] for i in coco.dataset["images"]} <= set(project.task_ids)
    (image,) = [i for i in coco.dataset["images"] if i["label_studio"]["annotation_id"] == annotation_id]
    assert (image["width"], image["height"]) == (IMAGE_WIDTH, IMAGE_HEIGHT)
    assert (tmp_path / image["file_name"]).is_file()

    anns = {ann["label_studio"]["region_id"]: ann for ann in coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))}
    brushes = [item for item in result if item["type"] == "brushlabels" and brush_mask(item).any()]
    assert sorted(anns) == sorted(item["id"] for item in brushes)
    for item in brushes:
        ann, expected = anns[item["id"]], brush_mask(item)
        assert names[ann["category_id"]] == category(item)
        decoded = coco.annToMask(ann).astype(bool)
        np.testing.assert_array_equal(decoded, expected if masks == "rle" else ndimage.binary_fill_holes(expected))
        assert ann["area"] == int(expected.sum()) and ann["iscrowd"] == 0
        rows, cols = np.nonzero(expected)
        assert ann["bbox"] == [cols.min(), rows.min(), np.ptp(cols) + 1, np.ptp(rows) + 1]
    assert anns[segment]["attributes"] == {"text": caption, "rating": 3}


def test_yolo_export_rasterises_to_the_annotation(annotated, label_studio, tmp_path, monkeypatch, capsys):
    project, annotation_id, result, _, _ = annotated
    output = export(label_studio, project, tmp_path, monkeypatch, capsys, "--format", "yolo")
    assert "YOLO line(s)" in output and "data.yaml" in output

    data = yaml.safe_load((tmp_path / "data.yaml").read_text())
    names = config_labels()
    assert data["names"] == dict(enumerate(names)) and data["train"] == data["val"] == "images"
    images = sorted((tmp_path / "images").iterdir())
    assert sorted(path.stem for path in (tmp_path / "labels").iterdir()) == [path.stem for path in images]

    task_id = project.task_ids[-1]
    (label_file,) = [path for path in (tmp_path / "labels").iterdir() if path.name.startswith(f"{task_id}-")]
    drawn: dict[int, np.ndarray] = {}
    for line in label_file.read_text().splitlines():
        class_index, *values = line.split()
        points = np.array(values, dtype=float).reshape(-1, 2) * [IMAGE_WIDTH, IMAGE_HEIGHT]
        rle = coco_mask.merge(coco_mask.frPyObjects([points.reshape(-1).tolist()], IMAGE_HEIGHT, IMAGE_WIDTH))
        piece = coco_mask.decode(rle).astype(bool)
        drawn[int(class_index)] = drawn.get(int(class_index), np.zeros_like(piece)) | piece
    expected: dict[int, np.ndarray] = {}
    for item in result:
        if item["type"] == "brushlabels" and brush_mask(item).any():
            index = names.index(category(item))
            mask = ndimage.binary_fill_holes(brush_mask(item))
            expected[index] = expected.get(index, np.zeros_like(mask)) | mask
    assert sorted(drawn) == sorted(expected)
    for index, mask in expected.items():
        np.testing.assert_array_equal(drawn[index], mask)
