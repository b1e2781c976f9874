"""``python -m backend.evaluation reproduce``: end to end on tiny synthetic datasets in each
official layout (made here), with the tiny preset (random weights: the numbers test the pipeline)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.evaluation.__main__ import main
from backend.evaluation.datasets import DATASETS, get_dataset
from backend.evaluation.reproduce import TABLES

# Table 1 of the paper, PC-59 (its text): TT const 11.2 / 10.3, ST const 19.3 / 18.0, ST h>=1 22.7 / 19.4
PAPER_TABLE1 = {"TT IoU const": 11.2, "TT Recall const": 10.3, "ST IoU const": 19.3, "ST Recall h>=1": 19.4}


def scene(seed: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """An image with two rectangles on a background, and its label map (values 1..classes-1, 0 around)."""
    rng = np.random.default_rng(seed)
    height, width = 48, 64
    image = np.full((height, width, 3), 40 + 30 * seed, np.uint8)
    labels = np.zeros((height, width), np.uint8)
    for value, (y, x) in zip(rng.choice(np.arange(1, classes), 2, replace=False), ((4, 6), (20, 34))):
        image[y : y + 20, x : x + 24] = rng.integers(60, 255, 3)
        labels[y : y + 20, x : x + 24] = value
    labels[0, :] = 255  # void
    return image, labels


def write_layout(root: Path, dataset: str, count: int = 3) -> Path:
    """The dataset's official layout under ``root`` (with the usual VOCdevkit folder above it)."""
    layout = get_dataset(dataset)
    base = root / ("VOCdevkit/VOC2010" if dataset == "pc-59" else "VOCdevkit/VOC2012")
    classes = 60 if dataset == "pc-59" else 21
    ids = [f"2008_{index:06d}" for index in range(count)]
    for index, item_id in enumerate(ids):
        image, labels = scene(index, classes)
        (base / layout.images).mkdir(parents=True, exist_ok=True)
        (base / layout.labels).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(base / layout.images / f"{item_id}.jpg", quality=95)
        label_image = Image.fromarray(labels, mode="L").convert("P")  # palette PNG, as VOC ships them
        label_image.save(base / layout.labels / f"{item_id}.png")
    (base / layout.split).parent.mkdir(parents=True, exist_ok=True)
    (base / layout.split).write_text("\n".join(ids) + "\n")
    return base


def run(*argv) -> int:
    return main(["reproduce", *map(str, argv)])


@pytest.mark.parametrize("dataset", ["pas-20", "pc-59"])
def test_table1_end_to_end_in_each_layout_matches_the_separate_commands(tmp_path, dataset):
    write_layout(tmp_path / "data", dataset)
    out = tmp_path / "out"
    args = ["zeroguide-table1", "--data", tmp_path / "data", "--dataset", dataset, "--limit", 2, "--out", out]
    assert run(*args, "--preset", "tiny", "--captioner", "retrieval") == 0
    report = json.loads((out / f"zeroguide-table1-{dataset}.json").read_text())
    assert report["images"] == 2 and report["random_weights"] is True and report["captioner"] == "retrieval"
    assert "RANDOM WEIGHTS" in report["note"] and "NOT zero-guidance scores" in report["note"]
    (row,) = report["rows"]
    if dataset == "pc-59":
        assert {column: row["paper"][column] for column in PAPER_TABLE1} == PAPER_TABLE1
    predictions = out / "predictions" / "ours"
    assert sorted(p.name for p in predictions.iterdir()) == ["2008_000000.json", "2008_000001.json"]

    # The same predictions through the separate commands (reassign, segmentation): the same numbers.
    layout = get_dataset(dataset)
    root = next(p for p in (tmp_path / "data").rglob("JPEGImages")).parent
    space = ["--classes", layout.classes, *[a for name in layout.excluded for a in ("--exclude-class", name)]]
    for method in ("tt", "st"):
        reassigned = tmp_path / f"{method}.json"
        extra = ["--preset", "tiny"] if method == "st" else []
        assert main(["reassign", str(predictions), *space, "--method", method, *extra, "--out", str(reassigned)]) == 0
        scored = tmp_path / f"{method}.report.json"
        gt = root / layout.labels
        assert main(["segmentation", str(predictions), "--reassigned", str(reassigned), "--gt-dir", str(gt),
                     "--out", str(scored)]) == 0  # fmt: skip
        constant = json.loads(scored.read_text())["constant"]
        for name, key in (("IoU", "miou"), ("Recall", "recall")):
            expected = None if constant[key] is None else 100 * constant[key]
            assert row["ours"][f"{method.upper()} {name} const"] == pytest.approx(expected), (method, name)

    markdown = (out / f"zeroguide-table1-{dataset}.md").read_text()
    assert "| Ours (here) |" in markdown and "| Ours (paper) |" in markdown


def test_a_second_run_keeps_the_predictions_and_redoes_changed_ones(tmp_path, caplog):
    write_layout(tmp_path / "data", "pas-20")
    out = tmp_path / "out"
    args = ["zeroguide-table1", "--data", tmp_path / "data", "--dataset", "pas-20", "--out", out]
    assert run(*args, "--limit", 2, "--preset", "tiny", "--captioner", "retrieval") == 0
    first = {p.name: p.stat().st_mtime_ns for p in (out / "predictions" / "ours").iterdir()}
    stale = out / "predictions" / "ours" / "2008_000001.json"
    data = json.loads(stale.read_text())
    data["settings"]["n_clusters"] = 3  # made with other settings: not this table's
    stale.write_text(json.dumps(data))
    caplog.clear()
    caplog.set_level("INFO", logger="backend.evaluation")
    assert run(*args, "--limit", 3, "--preset", "tiny", "--captioner", "retrieval") == 0
    assert "ours: 2 predictions computed, 1 kept from an earlier run" in caplog.text
    now = {p.name: p.stat().st_mtime_ns for p in (out / "predictions" / "ours").iterdir()}
    assert now["2008_000000.json"] == first["2008_000000.json"]
    assert json.loads(stale.read_text())["settings"]["n_clusters"] != 3


def test_table3_rows_are_the_ablations_with_tgq_on_pc59(tmp_path):
    write_layout(tmp_path / "data", "pc-59", count=1)
    out = tmp_path / "out"
    assert run("zeroguide-table3", "--data", tmp_path / "data", "--dataset", "pc-59", "--out", out,
               "--preset", "tiny", "--captioner", "retrieval") == 0  # fmt: skip
    report = json.loads((out / "zeroguide-table3-pc-59.json").read_text())
    assert [row["variant"] for row in report["rows"]] == ["crop-and-mask", "no-global-subtraction", "no-merge", "ours"]
    settings = report["settings"]
    assert settings["crop-and-mask"]["segment_encoding"]["method"] == "crop"
    assert settings["no-global-subtraction"]["segment_encoding"]["subtract_global"] is False
    assert settings["no-merge"]["merge"] is False and settings["ours"]["merge"] is True
    by_variant = {row["variant"]: row for row in report["rows"]}
    assert by_variant["ours"]["paper"] == {"ST IoU const": 17.5, "ST Recall const": 15.0, "TGQ": 19.0}
    assert by_variant["no-merge"]["ours"]["TGQ"] is None  # the paper reports no TGQ without merging
    tgq = by_variant["ours"]["ours"]["TGQ"]
    assert tgq is not None and 0 <= tgq <= 100
    pairs = json.loads((out / "tgq" / "ours" / "2008_000000.json").read_text())["pairs"]
    assert len(pairs) == 2  # the two ground-truth objects (background excluded, void ignored)


def test_bad_input_is_a_clear_error(tmp_path, caplog):
    assert run("zeroguide-table1", "--data", tmp_path, "--dataset", "pas-20", "--preset", "tiny") == 2
    assert "no PASCAL VOC 2012 (PAS-20) there" in caplog.text and "ImageSets/Segmentation/val.txt" in caplog.text
    base = write_layout(tmp_path / "data", "pas-20", count=1)
    (base / "ImageSets/Segmentation/val.txt").write_text("2008_000000\nmissing_id\n")
    caplog.clear()
    assert run("zeroguide-table1", "--data", tmp_path / "data", "--dataset", "pas-20", "--preset", "tiny") == 2
    assert "lists 'missing_id'" in caplog.text
    assert all(set(table.columns) <= set(DATASETS) for table in TABLES.values())


def test_score_variant_by_hand(tmp_path):
    """4x6 ground truth: cat in columns 0-2, dog in 3-5, void on the top row. Segments: "cat" on
    columns 0-2, "dog" on 3-4, "a cloud" on 5.

    TT (one-hot text embeddings: "cat" and "dog" match their labels at 1.0, "a cloud" nothing):
    cat IoU 9/9 = 1, dog 6/9 (rows 1-3: 6 predicted, 9 true, 6 shared) -> mIoU (1 + 2/3) / 2 = 83.3;
    both objects above τ_IoU = 0.5 -> Recall 100.
    ST (segment embeddings: the "dog" segment lies nearest to "cat", the third below τ_CLIP):
    cat is columns 0-4: IoU 9/15 = 0.6; dog predicted nowhere: 0 -> mIoU 30; Recall 1/2 = 50.
    """
    from backend.evaluation.datasets import DatasetItem
    from backend.evaluation.files import PredictionFile
    from backend.evaluation.metrics import LabelSpace
    from backend.evaluation.reproduce import score_variant
    from backend.outputs import encode_rle

    labels = np.zeros((4, 6), np.uint8)
    labels[:, :3], labels[:, 3:] = 1, 2
    labels[0] = 255
    Image.fromarray(labels, mode="L").save(tmp_path / "a.png")
    columns = [(0, 3), (3, 5), (5, 6)]
    masks = []
    for start, stop in columns:
        mask = np.zeros((4, 6), bool)
        mask[:, start:stop] = True
        masks.append(mask)
    embeddings = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.05, 0.0, 1.0]])
    prediction = PredictionFile(
        path=tmp_path / "a.json",
        image="a.jpg",
        size=(4, 6),
        segment_ids=(0, 1, 2),
        texts=("cat", "dog", "a cloud"),
        rles=tuple(encode_rle(mask) for mask in masks),
        embeddings=embeddings,
        settings={},
        random_weights=False,
    )
    one_hot = {"cat": [1.0, 0.0, 0.0], "dog": [0.0, 1.0, 0.0], "a cloud": [0.0, 0.0, 1.0]}
    embed = lambda texts: np.array([one_hot[t] for t in texts])  # noqa: E731
    space = LabelSpace(("background", "cat", "dog"), (255,), ("background",))
    item = DatasetItem("a", tmp_path / "a.jpg", tmp_path / "a.png")
    values = score_variant([prediction], [item], space, embed, embed)
    assert values["TT IoU const"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert values["TT Recall const"] == pytest.approx(100.0)
    assert values["ST IoU const"] == pytest.approx(30.0)
    assert values["ST Recall const"] == pytest.approx(50.0)


# ---------------------------------------------------------------------------------------- FMbSeg
def write_flat_layout(root: Path, dataset: str, count: int = 2) -> Path:
    """COCO-Stuff 164k or ADE20K as mmsegmentation lays them out (no split list: every image)."""
    layout = get_dataset(dataset)
    base = root / ("coco_stuff164k" if dataset == "cs-171" else "ADEChallengeData2016")
    for index in range(count):
        image, labels = scene(index, 150)
        if dataset == "ade-150":
            labels[labels == 255] = 0  # ADE has no void value: 0 is "other"
        (base / layout.images).mkdir(parents=True, exist_ok=True)
        (base / layout.labels).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(base / layout.images / f"{index:012d}.jpg", quality=95)
        Image.fromarray(labels, mode="L").save(base / layout.labels / f"{index:012d}{layout.label_suffix}")
    return base


def test_pv21_scores_background_as_coco_stuffs_stuff_classes():
    """PV-21's class list for FMbSeg: the 20 objects, then the 91 stuff classes, each counted as
    background (index 0 of VOC's classes); without a background class nothing is added."""
    from backend.evaluation.reproduce_fmbseg import coco_stuff_names, with_background_classes

    stuff = coco_stuff_names()
    assert len(stuff) == 91 and stuff[0] == "banner" and stuff[-1] == "wood"
    prompted = with_background_classes(get_dataset("pv-21").label_space(), stuff)
    assert prompted.prompts[:2] == ["aeroplane", "bicycle"] and len(prompted.prompts) == 20 + 91
    assert "background" not in prompted.prompts
    assert prompted.evaluated_index[:20].tolist() == list(range(1, 21))  # aeroplane is VOC value 1
    assert set(prompted.evaluated_index[20:].tolist()) == {0}
    plain = with_background_classes(get_dataset("pv-20").label_space(), stuff)
    assert len(plain.prompts) == 20 and plain.evaluated_index.tolist() == list(range(20))


@pytest.mark.parametrize("dataset", ["pv-21", "cs-171", "ade-150"])
def test_fmbseg_table1_stage1_end_to_end(tmp_path, dataset):
    if dataset.startswith("pv"):
        write_layout(tmp_path / "data", dataset.replace("pv-21", "pas-20"), count=2)
    else:
        write_flat_layout(tmp_path / "data", dataset)
    out = tmp_path / "out"
    assert (
        run("fmbseg-table1", "--data", tmp_path / "data", "--dataset", dataset, "--out", out, "--preset", "tiny") == 0
    )
    report = json.loads((out / f"fmbseg-table1-{dataset}.json").read_text())
    assert report["images"] == 2 and [row["variant"] for row in report["rows"]] == ["stage1"]
    assert "No --checkpoint" in report["note"] and "RANDOM WEIGHTS" in report["note"]
    miou = report["rows"][0]["ours"]["mIoU"]
    assert miou is not None and 0 <= miou <= 100
    maps = sorted((out / "predictions" / "stage1").glob("*.png"))
    assert len(maps) == 2
    # the score, recomputed here from the stored label maps and the ground truth
    from backend.evaluation.files import read_label_map
    from backend.evaluation.metrics import MeanIoU
    from backend.evaluation.reproduce_fmbseg import coco_stuff_names, with_background_classes

    layout = get_dataset(dataset)
    space = layout.label_space()
    prompted = with_background_classes(space, coco_stuff_names() if dataset == "pv-21" else ())
    assert report["class_list"] == prompted.prompts
    accumulator = MeanIoU(space)
    for item, stored in zip(layout.items(tmp_path / "data"), maps):
        indices = np.asarray(Image.open(stored)).astype(np.int64) - 1
        evaluated = np.where(indices >= 0, prompted.evaluated_index[np.clip(indices, 0, None)], -1)
        accumulator.update(evaluated, read_label_map(item.labels))
    assert miou == pytest.approx(100 * accumulator.result().miou)


def test_fmbseg_table1_with_a_checkpoint_has_the_stage2_rows(tmp_path, tiny_models):
    from backend.fmbseg import FMbSegPredictor, LabelledMask
    from backend.fmbseg.training import TrainingSettings

    base = write_layout(tmp_path / "data", "pas-20", count=1)
    image = np.asarray(Image.open(next((base / "JPEGImages").iterdir())).convert("RGB"))
    left = np.zeros(image.shape[:2], bool)
    left[:, : image.shape[1] // 2] = True
    predictor = FMbSegPredictor(tiny_models)
    classes = ["cat", "dog"]
    examples = [predictor.training_example(image, [LabelledMask(left, "cat"), LabelledMask(~left, "dog")], classes)]
    checkpoint = tmp_path / "align.safetensors"
    predictor.train(examples, classes, checkpoint, training_settings=TrainingSettings(epochs=1), progress_bar=False)
    out = tmp_path / "out"
    args = ["fmbseg-table1", "--data", tmp_path / "data", "--dataset", "pv-20", "--out", out, "--preset", "tiny"]
    assert run(*args, "--checkpoint", checkpoint) == 0
    report = json.loads((out / "fmbseg-table1-pv-20.json").read_text())
    rows = {row["variant"]: row for row in report["rows"]}
    assert list(rows) == ["stage1", "stage2-base", "stage2-refined"]
    assert rows["stage2-base"]["paper"] == {"mIoU": 85.65} and rows["stage2-refined"]["paper"] == {"mIoU": 87.03}
    assert run(*args, "--checkpoint", checkpoint, "--captioner", "zerocap") == 2  # a zero-guidance option


def test_ground_truth_of_an_image_exported_from_label_studio(tmp_path):
    from backend.evaluation.files import ground_truth_path

    (tmp_path / "2008_000001.png").write_bytes(b"")
    (tmp_path / "12-2008_000001.png").write_bytes(b"")
    assert ground_truth_path(tmp_path, "2008_000001.jpg") == tmp_path / "2008_000001.png"
    assert ground_truth_path(tmp_path, "12-2008_000001.jpg") == tmp_path / "12-2008_000001.png"  # its own first
    (tmp_path / "12-2008_000001.png").unlink()
    assert ground_truth_path(tmp_path, "12-2008_000001.jpg") == tmp_path / "2008_000001.png"  # "<task id>-<name>"
    with pytest.raises(ValueError, match="no ground truth for x-2008_000001.jpg"):
        ground_truth_path(tmp_path, "x-2008_000001.jpg")  # not a task id
