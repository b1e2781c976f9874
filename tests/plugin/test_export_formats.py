"""``export --format coco|yolo``: hand-made masks -> export -> read back with pycocotools / parsed YOLO lines."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from label_studio_sdk.converter.brush import mask2rle
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from scipy import ndimage

from plugin.cli import main as plugin_main
from plugin.dataset import ExportOptions, export_project
from plugin.errors import PluginError
from plugin.formats import Categories, coco_segmentation, mask_polygons, yolo_lines
from tests.plugin.conftest import FakeConnection, png_bytes

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn.t accept a copy keyword:DeprecationWarning"  # pycocotools 2.0.11 + numpy 2
)

W, H = 64, 48
ROWS, COLS = np.mgrid[0:H, 0:W]


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def filled(mask):
    """``mask`` with its holes filled: what a polygon can hold (pieces 8-connected, so holes 4-connected)."""
    return ndimage.binary_fill_holes(mask)


def polygons_to_mask(polygons, height, width):
    """Rasterise COCO-style polygons (pixel corners) the way pycocotools reads them."""
    return coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))).astype(bool)


def rect(top, left, bottom, right):
    return (ROWS >= top) & (ROWS < bottom) & (COLS >= left) & (COLS < right)


def disc(row, col, radius):
    return (ROWS - row) ** 2 + (COLS - col) ** 2 <= radius**2


DONUT = disc(24, 40, 12) & ~disc(24, 40, 5)  # a class mask with a hole
SEGMENT = rect(4, 3, 20, 25) | rect(30, 5, 40, 12)  # a free-text segment in two pieces
SKY = rect(0, 0, 3, W)


# ------------------------------------------------------------------------------ polygons
def test_polygons_follow_the_pixel_edges():
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2:5] = True  # columns 2..4, rows 1..2
    (polygon,) = mask_polygons(mask)
    assert sorted(map(tuple, polygon.tolist())) == [(2, 1), (2, 3), (5, 1), (5, 3)]
    single = np.zeros((3, 3), bool)
    single[1, 1] = True
    assert sorted(map(tuple, mask_polygons(single)[0].tolist())) == [(1, 1), (1, 2), (2, 1), (2, 2)]


def test_polygons_decode_to_the_mask_with_holes_filled():
    rng = np.random.default_rng(0)
    for _ in range(40):
        mask = ndimage.gaussian_filter(rng.random((H, W)), rng.uniform(0.7, 4)) > 0.52
        if not mask.any():
            continue
        polygons = [polygon.reshape(-1).astype(float).tolist() for polygon in mask_polygons(mask)]
        np.testing.assert_array_equal(polygons_to_mask(polygons, H, W), filled(mask))
    assert mask_polygons(np.zeros((4, 4), bool)) == []


def test_coco_segmentation_rle_is_exact_and_polygons_lose_only_holes():
    rle = coco_segmentation(DONUT, "rle")
    assert rle["size"] == [H, W] and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(coco_mask.decode({**rle, "counts": rle["counts"].encode()}).astype(bool), DONUT)
    polygons = coco_segmentation(DONUT, "polygon")
    np.testing.assert_array_equal(polygons_to_mask(polygons, H, W), filled(DONUT))
    with pytest.raises(ValueError):
        coco_segmentation(DONUT, "bitmap")


def test_yolo_lines_one_per_piece_normalised():
    lines = yolo_lines(3, SEGMENT)
    assert len(lines) == 2 and all(line.startswith("3 ") for line in lines)
    for line in lines:
        values = [float(value) for value in line.split()[1:]]
        assert len(values) % 2 == 0 and len(values) >= 8 and all(0 <= value <= 1 for value in values)
    full = yolo_lines(0, np.ones((4, 6), bool))
    assert [sorted(zip(*[iter(map(float, line.split()[1:]))] * 2)) for line in full] == [
        [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]
    ]


def test_categories_come_from_the_config_then_new_labels():
    categories = Categories.from_controls({"segment": ["segment"], "class_mask": ["cat", "sky", "segment"]})
    assert categories.names == ["segment", "cat", "sky"]
    assert categories.index("sky", "class_mask") == 2
    assert categories.index("dog", "class_mask") == 3
    assert categories.coco()[-1] == {"id": 4, "name": "dog", "supercategory": "class_mask"}
    assert categories.coco()[0] == {"id": 1, "name": "segment", "supercategory": "segment"}


def test_a_zero_guidance_palette_is_one_category():
    from pathlib import Path

    from plugin.dataset import brush_categories
    from plugin.schema import LabelingSchema

    config = (Path(__file__).resolve().parents[2] / "label_config.xml").read_text()
    categories = brush_categories(config, LabelingSchema.from_config(config))
    # the palette's eight colours are one category, "segment"; then the classes
    assert categories.names == ["segment", "person", "dog", "cat", "tree", "sky", "road"]
    assert categories.index("segment 5", "segment") == 0 and categories.index("segment", "segment") == 0
    assert categories.index("cat", "class_mask") == 3
    # model_label names the category; a label of that name under another tag stays the same category name
    categories = Categories.from_controls({"z": ["a", "b"], "c": ["dog"]}, {"z": "b"})
    assert categories.names == ["b", "dog"] and categories.index("a", "z") == 0


# -------------------------------------------------------------------------------- export
def brush(region_id, control, label, mask):
    return {
        "id": region_id,
        "from_name": control,
        "to_name": "image",
        "type": "brushlabels",
        "original_width": mask.shape[1],
        "original_height": mask.shape[0],
        "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [label]},
    }


def per_region(region_id, control, kind, values):
    key = "text" if kind == "textarea" else "choices"
    return {"id": region_id, "from_name": control, "to_name": "image", "type": kind, "value": {key: values}}


# task 7: a free-text segment (text + rating) and a cat with a hole; task 8: sky, and an empty brush
TASK_MASKS = {7: {"s1": SEGMENT, "c1": DONUT}, 8: {"k1": SKY}}


def make_tasks():
    first = [
        brush("s1", "segment", "segment", SEGMENT),
        per_region("s1", "caption", "textarea", ["a red roof"]),
        per_region("s1", "rating", "choices", ["2"]),
        brush("c1", "class_mask", "cat", DONUT),
    ]
    second = [brush("k1", "class_mask", "sky", SKY), brush("e1", "class_mask", "cat", np.zeros((H, W), bool))]
    return [
        SimpleNamespace(
            id=7,
            data={"image": "/data/upload/2/0a1b2c3d-roof.png"},
            annotations=[
                {"id": 3, "result": [], "was_cancelled": False},
                {"id": 4, "result": first, "completed_by": 1},
            ],
        ),
        SimpleNamespace(id=8, data={"image": "http://h/photo?id=8"}, annotations=[{"id": 5, "result": second}]),
        SimpleNamespace(id=9, data={"image": "http://h/x.png"}, annotations=[]),
    ]


def connection_for(label_config):
    project = SimpleNamespace(id=2, title="P", label_config=label_config)
    client = SimpleNamespace(
        projects=SimpleNamespace(get=lambda project_id: project),
        tasks=SimpleNamespace(list=lambda **kwargs: iter(make_tasks())),
    )
    files = {"/data/upload/2/0a1b2c3d-roof.png": png_bytes(W, H), "http://h/photo?id=8": png_bytes(W, H, 30)}
    return FakeConnection(client, files=files)


@pytest.mark.parametrize("masks", ["rle", "polygon"])
def test_coco_export_reads_back_with_pycocotools(tmp_path, label_config, masks):
    summary = export_project(connection_for(label_config), 2, tmp_path, ExportOptions(format="coco", coco_masks=masks))
    assert (summary.tasks, summary.annotations, summary.regions, summary.instances) == (2, 2, 3, 3)
    assert summary.skipped == {"empty mask": 1}
    assert summary.index == tmp_path / "result.json"

    coco = COCO(str(tmp_path / "result.json"))
    # categories: the config's BrushLabels labels in config order, whatever the tasks hold
    assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == [(1, "segment"), (2, "cat"), (3, "sky")]
    images = {image["label_studio"]["task_id"]: image for image in coco.loadImgs(coco.getImgIds())}
    assert sorted(images) == [7, 8]
    assert images[7]["label_studio"]["annotation_id"] == 4
    for task_id, image in images.items():
        assert (tmp_path / image["file_name"]).is_file() and (image["width"], image["height"]) == (W, H)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])):
            expected = TASK_MASKS[task_id][ann["label_studio"]["region_id"]]
            decoded = coco.annToMask(ann).astype(bool)
            if masks == "rle":
                np.testing.assert_array_equal(decoded, expected)
            else:
                np.testing.assert_array_equal(decoded, filled(expected))
                assert iou(decoded, expected) >= 0.95 or expected is DONUT
            assert ann["iscrowd"] == 0
            assert ann["area"] == int(expected.sum())
            rows, cols = np.nonzero(expected)
            assert ann["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]

    by_region = {ann["label_studio"]["region_id"]: ann for ann in coco.dataset["annotations"]}
    assert by_region["s1"]["attributes"] == {"text": "a red roof", "rating": 2}
    assert by_region["s1"]["category_id"] == 1 and by_region["c1"]["category_id"] == 2
    assert by_region["c1"]["attributes"] == {} and by_region["k1"]["category_id"] == 3
    if masks == "polygon":
        assert len(by_region["s1"]["segmentation"]) == 2  # one polygon per piece, one instance


def test_yolo_export_round_trip(tmp_path, label_config):
    summary = export_project(connection_for(label_config), 2, tmp_path, ExportOptions(format="yolo"))
    assert (summary.regions, summary.instances, summary.index) == (3, 4, tmp_path / "data.yaml")

    data = yaml.safe_load((tmp_path / "data.yaml").read_text())
    assert data == {"train": "images", "val": "images", "names": {0: "segment", 1: "cat", 2: "sky"}}
    # the URL without a suffix got one from the image's format, so Ultralytics finds its label file
    assert sorted(path.name for path in (tmp_path / "images").iterdir()) == ["7-roof.png", "8-photo.png"]
    assert sorted(path.name for path in (tmp_path / "labels").iterdir()) == ["7-roof.txt", "8-photo.txt"]

    expected = {"7-roof": {0: SEGMENT, 1: DONUT}, "8-photo": {2: SKY}}
    for stem, by_class in expected.items():
        drawn = {}
        for line in (tmp_path / "labels" / f"{stem}.txt").read_text().splitlines():
            class_index, *values = line.split()
            points = (np.array(values, dtype=float).reshape(-1, 2) * [W, H]).reshape(-1).tolist()
            piece = polygons_to_mask([points], H, W)
            drawn[int(class_index)] = drawn.get(int(class_index), np.zeros((H, W), bool)) | piece
        assert sorted(drawn) == sorted(by_class)
        for class_index, mask in by_class.items():
            np.testing.assert_array_equal(drawn[class_index], filled(mask))
            if mask is not DONUT:
                assert iou(drawn[class_index], mask) >= 0.95


def test_categories_are_stable_across_tasks_and_exports(tmp_path, label_config):
    # the first task holds only a sky: ids still come from the config, not from the order labels are met
    tasks = make_tasks()[1:2]
    project = SimpleNamespace(id=2, title="P", label_config=label_config)
    client = SimpleNamespace(
        projects=SimpleNamespace(get=lambda project_id: project),
        tasks=SimpleNamespace(list=lambda **kwargs: iter(tasks)),
    )
    connection = FakeConnection(client, files={"http://h/photo?id=8": png_bytes(W, H)})
    export_project(connection, 2, tmp_path / "coco", ExportOptions(format="coco"))
    export_project(connection, 2, tmp_path / "yolo", ExportOptions(format="yolo"))
    document = json.loads((tmp_path / "coco" / "result.json").read_text())
    assert [c["name"] for c in document["categories"]] == ["segment", "cat", "sky"]
    assert [a["category_id"] for a in document["annotations"]] == [3]
    assert (tmp_path / "yolo" / "labels" / "8-photo.txt").read_text().startswith("2 ")


def test_png_stays_the_default(tmp_path, label_config):
    summary = export_project(connection_for(label_config), 2, tmp_path)
    assert summary.index == tmp_path / "dataset.json"
    assert summary.regions == 4 and summary.skipped == {}  # png keeps the empty brush
    assert not (tmp_path / "result.json").exists() and not (tmp_path / "labels").exists()
    assert sorted(path.name for path in (tmp_path / "images").iterdir()) == ["7-roof.png", "8-photo"]


def test_refused_options(tmp_path, label_config):
    connection = connection_for(label_config)
    with pytest.raises(PluginError, match="one label file per image"):
        export_project(connection, 2, tmp_path, ExportOptions(format="yolo", all_annotations=True))
    with pytest.raises(PluginError, match="unknown export format"):
        export_project(connection, 2, tmp_path, ExportOptions(format="voc"))
    with pytest.raises(PluginError, match="unknown COCO mask encoding"):
        export_project(connection, 2, tmp_path, ExportOptions(format="coco", coco_masks="bitmap"))
    assert connection.downloads == []


def test_all_annotations_in_coco_are_separate_images(tmp_path, label_config):
    export_project(connection_for(label_config), 2, tmp_path, ExportOptions(format="coco", all_annotations=True))
    document = json.loads((tmp_path / "result.json").read_text())
    assert [(i["label_studio"]["task_id"], i["label_studio"]["annotation_id"]) for i in document["images"]] == [
        (7, 3),
        (7, 4),
        (8, 5),
    ]
    assert len({i["id"] for i in document["images"]}) == 3
    assert len({a["id"] for a in document["annotations"]}) == len(document["annotations"]) == 3


def test_cli_export_coco_polygon(tmp_path, label_config, monkeypatch, capsys):
    connection = connection_for(label_config)
    monkeypatch.setattr("plugin.commands.export.LabelStudioConnection.from_environment", lambda: connection)
    status = plugin_main(
        ["export", "--project", "2", "--out", str(tmp_path), "--format", "coco", "--coco-masks", "polygon"]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "3 region(s) as 3 COCO instance(s)" in out and "result.json" in out
    assert "skipped region(s): 1 with empty mask" in out
    assert isinstance(json.loads((tmp_path / "result.json").read_text())["annotations"][0]["segmentation"], list)
