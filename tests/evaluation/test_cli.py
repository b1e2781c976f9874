"""``python -m backend.evaluation``: a round trip on tiny files, scores worked out by hand."""

import json

import numpy as np
import pytest
from PIL import Image

from backend.evaluation.__main__ import main
from backend.outputs import encode_rle

# Pixel values: 0 background (excluded), 1 cat, 2 car, 3 dog, 255 void.
CLASSES = "background\ncat\ncar\ndog\n"
GT_A = np.array(
    [
        [1, 1, 1, 2, 2, 2],
        [1, 1, 1, 2, 2, 2],
        [0, 0, 0, 0, 255, 255],
        [3, 3, 3, 3, 3, 3],
    ]
)
GT_B = np.full((2, 2), 2)


def region(shape, rows, cols):
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


# a.jpg: four segments that partition the image
SEGMENTS_A = [
    ("kitten", region((4, 6), slice(0, 2), slice(0, 3))),  # 6 cat pixels
    ("automobile", region((4, 6), slice(0, 2), slice(3, 6))),  # 6 car pixels
    ("puppy", region((4, 6), slice(2, 4), slice(0, 4))),  # 4 background + 4 dog
    ("mathematics", region((4, 6), slice(2, 4), slice(4, 6))),  # 2 void + 2 dog; SBERT < 0.5 to all
]
SEGMENTS_B = [("cat", np.ones((2, 2), dtype=bool))]  # a wrong label on a car


def write_png(path, values, palette=True):
    image = Image.fromarray(values.astype(np.uint8), "L")
    if palette:
        image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.save(path)


def write_prediction(path, image, segments, embeddings=None):
    data = {
        "image": image,
        "image_size": list(segments[0][1].shape),
        "random_weights": False,
        "segments": [
            {"id": k, "text": text, "mask_rle": encode_rle(mask), **({} if embeddings is None else {"embedding": e})}
            for k, ((text, mask), e) in enumerate(zip(segments, embeddings or [None] * len(segments)))
        ],
    }
    path.write_text(json.dumps(data))


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    write_prediction(tmp_path / "pred" / "a.json", "a.jpg", SEGMENTS_A)
    write_prediction(tmp_path / "pred" / "b.json", "b.jpg", SEGMENTS_B)
    write_png(tmp_path / "gt" / "a.png", GT_A)
    write_png(tmp_path / "gt" / "b.png", GT_B, palette=False)
    (tmp_path / "classes.txt").write_text(CLASSES)
    return tmp_path


def run(*argv):
    assert main([str(a) for a in argv]) == 0
    return json.loads(open(argv[argv.index("--out") + 1]).read())


def test_round_trip(files):
    t = files
    reassigned = run(
        "reassign",
        t / "pred",
        "--classes",
        t / "classes.txt",
        "--exclude-class",
        "background",
        "--method",
        "tt",
        "--out",
        t / "reassigned.json",
    )
    assert reassigned["classes"] == ["cat", "car", "dog"]
    labels = {(i["image"], s["id"]): s["label"] for i in reassigned["images"] for s in i["segments"]}
    assert labels == {
        ("a.jpg", 0): "cat",
        ("a.jpg", 1): "car",
        ("a.jpg", 2): "dog",
        ("a.jpg", 3): "car",
        ("b.jpg", 0): "cat",
    }
    sims = {(i["image"], s["id"]): s["similarity"] for i in reassigned["images"] for s in i["segments"]}
    assert sims[("a.jpg", 3)] < 0.5 <= min(sims[("a.jpg", 0)], sims[("a.jpg", 2)]) and sims[("b.jpg", 0)] == 1.0

    ratings = [  # one rater per segment (batch 1 only); a.jpg segment 3 is unrated
        {"image": "a.jpg", "segment": 0, "text": "kitten", "label": "cat", "rater": "w1", "score": 3},
        {"image": "a.jpg", "segment": 1, "text": "automobile", "label": "car", "rater": "w2", "score": 1},
        {"image": "a.jpg", "segment": 2, "text": "puppy", "label": "dog", "rater": "w1", "score": 2},
        {"image": "b.jpg", "segment": 0, "text": "cat", "label": "cat", "rater": "w3", "score": 0},
    ]
    (t / "ratings.json").write_text(json.dumps(ratings))
    report = run(
        "segmentation",
        t / "pred",
        "--reassigned",
        t / "reassigned.json",
        "--gt-dir",
        t / "gt",
        "--ratings",
        t / "ratings.json",
        "--out",
        t / "report.json",
    )
    constant = report["constant"]  # τ_SBERT = 0.5: every segment but "mathematics" is verified
    # a.jpg: cat 6/6, car 6/6, dog I=4 U=6; b.jpg: cat predicted on 4 car pixels
    # dataset: cat 6/(6+4), car 6/(6+4), dog 4/6
    assert constant["threshold"] == 0.5
    assert constant["per_class_iou"] == pytest.approx({"cat": 0.6, "car": 0.6, "dog": 4 / 6})
    assert constant["miou"] == pytest.approx((0.6 + 0.6 + 4 / 6) / 3)
    assert constant["recall"] == pytest.approx(3 / 4)  # a: cat, car, dog found; b: car missed
    human = report["human"]
    # h=3: only a/0 (cat): cat 1, car 0/10, dog 0/6; h>=2: + a/2 (dog 4/6); h>=1: + a/1 (car 6/10)
    assert human["3"]["miou"] == pytest.approx(1 / 3) and human["3"]["recall"] == pytest.approx(1 / 4)
    assert human["2"]["miou"] == pytest.approx((1 + 4 / 6) / 3) and human["2"]["recall"] == pytest.approx(2 / 4)
    assert human["1"]["miou"] == pytest.approx((1 + 0.6 + 4 / 6) / 3) and human["1"]["recall"] == pytest.approx(3 / 4)
    assert human["1"]["batches"][1] is None and human["1"]["unrated_segments"] == [1, 5, 5]

    sweep = run(
        "sweep",
        t / "pred",
        "--reassigned",
        t / "reassigned.json",
        "--gt-dir",
        t / "gt",
        "--thresholds",
        "0",
        "0.5",
        "1",
        "--out",
        t / "sweep.json",
    )
    points = {p["threshold"]: p for p in sweep["points"]}
    # τ=0: "mathematics" -> car too: car P=8 in a.jpg, U=8+4; τ=1: only the exact "cat" on b.jpg
    assert points[0.0]["per_class_iou"] == pytest.approx({"cat": 0.6, "car": 6 / 12, "dog": 4 / 6})
    assert points[0.5]["miou"] == pytest.approx(constant["miou"])
    assert points[1.0]["miou"] == 0.0 and points[1.0]["per_class_iou"]["cat"] == 0.0

    distribution = run("ratings", t / "ratings.json", "--out", t / "dist.json")
    assert distribution["fractions"] == {"0": 0.25, "1": 0.25, "2": 0.25, "3": 0.25}

    (t / "pairs.json").write_text(json.dumps([{"label": "cat", "text": "kitten"}, {"label": "dog", "text": "car"}]))
    assert run("tgq", t / "pairs.json", "--out", t / "tgq.json")["tgq"] == 0.5


def test_miou_command_with_and_without_background(files):
    t = files
    (t / "labels").mkdir()
    predicted = GT_A.copy()
    predicted[0, 0] = 3  # one cat pixel called dog
    predicted[2, 0] = 1  # one background pixel called cat
    write_png(t / "labels" / "a.png", predicted)
    args = ["miou", "--pred-dir", t / "labels", "--gt-dir", t / "gt", "--classes", t / "classes.txt"]
    with_bg = run(*args, "--out", t / "m21.json")
    # background 3/4 (I=3, U=4); cat I=5, P=6, G=6, U=7; car 1; dog I=6, U=7
    assert with_bg["per_class_iou"] == pytest.approx({"background": 3 / 4, "cat": 5 / 7, "car": 1.0, "dog": 6 / 7})
    without_bg = run(*args, "--exclude-class", "background", "--out", t / "m20.json")
    # background pixels ignored: cat I=5, U=6; car 1; dog I=6, U=7
    assert without_bg["miou"] == pytest.approx((5 / 6 + 1 + 6 / 7) / 3)
    builtin = run(*args[:-1], "voc", "--out", t / "voc.json")  # the built-in VOC list also reads these PNGs
    assert builtin["classes"][:4] == ["background", "aeroplane", "bicycle", "bird"]


@pytest.mark.parametrize(
    "template, prompt",
    [
        (["--template", "a photo of a {}."], "a photo of a {}."),
        ([], "Image of a {}."),  # the default: the authors' evaluation script's prompt
    ],
)
def test_segment_to_text_with_embeddings_in_the_predictions(files, tiny_models, template, prompt):
    t = files
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(4, tiny_models.clip.encode_text(["x"]).shape[1])).tolist()
    write_prediction(t / "pred" / "a.json", "a.jpg", SEGMENTS_A, embeddings)
    report = run(
        "reassign",
        t / "pred" / "a.json",
        "--classes",
        t / "classes.txt",
        "--exclude-class",
        "background",
        "--method",
        "st",
        "--preset",
        "tiny",
        *template,
        "--out",
        t / "st.json",
    )
    text = tiny_models.clip.encode_text([prompt.format(c) for c in ("cat", "car", "dog")]).numpy()
    e = np.asarray(embeddings)
    cosine = (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (text / np.linalg.norm(text, axis=1, keepdims=True)).T
    segments = report["images"][0]["segments"]
    assert [s["label_index"] for s in segments] == cosine.argmax(axis=1).tolist()
    assert [s["similarity"] for s in segments] == pytest.approx(cosine.max(axis=1).tolist(), abs=1e-5)
    assert all(s["method"] == "ST" for s in segments)


def test_errors_exit_with_status_2(files, caplog):
    t = files
    (t / "gt" / "b.png").unlink()
    run(
        "reassign",
        t / "pred",
        "--classes",
        t / "classes.txt",
        "--exclude-class",
        "background",
        "--method",
        "tt",
        "--out",
        t / "r.json",
    )
    assert main(["segmentation", str(t / "pred"), "--reassigned", str(t / "r.json"), "--gt-dir", str(t / "gt")]) == 2
    assert "no ground truth for b.jpg" in caplog.text
    assert main(["miou", "--pred-dir", str(t), "--gt-dir", str(t / "gt"), "--classes", "nope"]) == 2
    assert "class list 'nope'" in caplog.text
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0


def test_label_maps_are_read_as_values_not_colours(tmp_path):
    from backend.evaluation.files import read_label_map

    Image.fromarray(np.array([[0, 300], [458, 65535]], dtype=np.uint16)).save(tmp_path / "wide.png")  # PC-459 style
    np.testing.assert_array_equal(read_label_map(tmp_path / "wide.png"), [[0, 300], [458, 65535]])
    write_png(tmp_path / "palette.png", np.array([[3, 255]]))
    np.testing.assert_array_equal(read_label_map(tmp_path / "palette.png"), [[3, 255]])
    Image.new("RGB", (2, 2)).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match="mode RGB"):
        read_label_map(tmp_path / "colour.png")
