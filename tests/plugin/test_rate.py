"""``python -m plugin rate``: against an in-memory Label Studio behind httpx's MockTransport.

The SDK client and `LabelStudioConnection` are the real ones; only the HTTP transport is
replaced by `FakeLabelStudio.handle`, which answers the endpoints the command uses the way
Label Studio 1.23.2 does (checked by tests/e2e/test_rating.py against the real server).
"""

from __future__ import annotations

import email
import email.policy
import io
import json
import re
import secrets
import xml.etree.ElementTree as ElementTree

import httpx
import numpy as np
import pytest
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter.brush import mask2rle
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image

from backend.evaluation.rating import RATING_INSTRUCTION, RATING_SCALE
from plugin.cli import main
from plugin.connection import ConnectionSettings, LabelStudioConnection
from plugin.errors import PluginError
from plugin.rating.collect import ratings_from_tasks, score_of
from plugin.rating.config import rating_label_config
from tests.plugin.test_rating_render import reference_segmented

URL = "http://ls.test:8080"
TOKEN = "0123456789abcdef0123456789abcdef01234567"
W, H = 12, 9


# ------------------------------------------------------------------------------ fake server
class FakeLabelStudio:
    """The endpoints ``rate`` uses, with Label Studio's request and response shapes."""

    def __init__(self):
        self.projects: dict[int, dict] = {}
        self.tasks: dict[int, dict] = {}
        self.predictions: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.uploads: list[list[str]] = []  # file names per import request
        self.project_patches: list[tuple[int, dict]] = []
        self.task_patches: list[int] = []
        self._ids = iter(range(1, 10**6))

    # state helpers
    def add_project(self, title: str, label_config: str, **fields) -> int:
        project_id = next(self._ids)
        self.projects[project_id] = {
            "id": project_id, "title": title, "label_config": label_config,
            "maximum_annotations": 1, "overlap_cohort_percentage": 100, **fields,
        }
        return project_id

    def add_task(self, project_id: int, data: dict, annotations: list | None = None) -> int:
        task_id = next(self._ids)
        self.tasks[task_id] = {"id": task_id, "project": project_id, "data": data, "annotations": annotations or []}
        return task_id

    def upload_image(self, project_id: int, name: str, content: bytes) -> int:
        path = f"/data/upload/{project_id}/{secrets.token_hex(4)}-{name}"
        self.files[path] = content
        return self.add_task(project_id, {"image": path})

    def project_tasks(self, project_id: int) -> list[dict]:
        return [task for task in self.tasks.values() if task["project"] == project_id]

    # HTTP
    def connection(self) -> LabelStudioConnection:
        client = LabelStudio(
            base_url=URL, api_key=TOKEN, httpx_client=httpx.Client(transport=httpx.MockTransport(self.handle))
        )
        return LabelStudioConnection(ConnectionSettings(url=URL, api_key=TOKEN), client=client)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") != f"Token {TOKEN}" and request.url.path != "/health":
            return httpx.Response(401, json={"detail": "Invalid token."})
        method, path, params = request.method, request.url.path, request.url.params
        is_json = request.headers.get("content-type", "").startswith("application/json")
        body = json.loads(request.content) if is_json else None
        if path == "/health":
            return httpx.Response(200, json={"status": "UP"})
        if path == "/api/current-user/whoami":
            return httpx.Response(200, json={"id": 1, "email": "admin@example.com", "username": "admin"})
        if path == "/api/projects/" and method == "GET":
            found = [p for p in self.projects.values() if params.get("title", "").lower() in p["title"].lower()]
            page = found if params.get("page", "1") == "1" else []
            return httpx.Response(200, json={"count": len(found), "results": page})
        if path == "/api/projects/" and method == "POST":
            project_id = self.add_project(body.pop("title"), body.pop("label_config"), **body)
            return httpx.Response(201, json=self.projects[project_id])
        if match := re.fullmatch(r"/api/projects/(\d+)/", path):
            project = self.projects.get(int(match[1]))
            if project is None:
                return httpx.Response(404, json={"detail": "Not found."})
            if method == "PATCH":
                self.project_patches.append((project["id"], body))
                project.update(body)
            return httpx.Response(200, json=project)
        if match := re.fullmatch(r"/api/projects/(\d+)/import", path):
            return self.import_files(int(match[1]), request)
        if path == "/api/tasks/" and method == "GET":
            tasks = sorted(self.project_tasks(int(params["project"])), key=lambda task: task["id"])
            size, page = int(params.get("page_size", 100)), int(params.get("page", 1))
            return httpx.Response(
                200,
                json={"tasks": tasks[(page - 1) * size : page * size], "total": len(tasks),
                      "total_annotations": 0, "total_predictions": 0},
            )
        if (match := re.fullmatch(r"/api/tasks/(\d+)/", path)) and method == "PATCH":
            task = self.tasks[int(match[1])]
            assert "image" in body["data"], "Label Studio refuses task data without the config's $image"
            task["data"] = body["data"]
            self.task_patches.append(task["id"])
            return httpx.Response(200, json=task)
        if path == "/api/predictions/":
            project_id = int(params["project"])
            return httpx.Response(200, json=[p for p in self.predictions if p["project"] == project_id])
        if path in self.files:
            return httpx.Response(200, content=self.files[path])
        raise AssertionError(f"unexpected request {method} {request.url}")

    def import_files(self, project_id: int, request: httpx.Request) -> httpx.Response:
        raw = b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n" + request.content
        message = email.message_from_bytes(raw, policy=email.policy.HTTP)
        names, ids = [], []
        for part in message.iter_parts():
            names.append(part.get_filename())
            ids.append(self.upload_image(project_id, part.get_filename(), part.get_payload(decode=True)))
        self.uploads.append(names)
        return httpx.Response(201, json={"task_count": len(ids), "task_ids": ids})


@pytest.fixture
def fake(monkeypatch) -> FakeLabelStudio:
    server = FakeLabelStudio()

    def from_environment(cls):
        connection = server.connection()
        connection.verify()
        return connection

    monkeypatch.setattr(LabelStudioConnection, "from_environment", classmethod(from_environment))
    return server


# ----------------------------------------------------------------------------- test data
def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def brush(region_id: str, mask: np.ndarray, control: str = "segment", label: str = "segment") -> dict:
    return {
        "id": region_id, "from_name": control, "to_name": "image", "type": "brushlabels",
        "original_width": mask.shape[1], "original_height": mask.shape[0],
        "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [label]},
    }


def caption(region_id: str, text: str) -> dict:
    return {"id": region_id, "from_name": "caption", "to_name": "image", "type": "textarea", "value": {"text": [text]}}


def source_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def box(top, left, bottom, right) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


SEGMENTS = {"r/1": (box(1, 1, 6, 7), "a small dog"), "r2": (box(5, 6, 9, 12), "grass")}


@pytest.fixture
def source(fake, label_config) -> tuple[int, int]:
    """A pre-labelled project: one task, an older prediction and a newer one with two texts."""
    project_id = fake.add_project("Segmentation pre-labelling", label_config)
    task_id = fake.upload_image(project_id, "dog.png", png(source_image()))
    fake.predictions.append(
        {"id": 5, "task": task_id, "project": project_id, "model_version": "old",
         "result": [brush("old", box(0, 0, 2, 2)), caption("old", "stale")]}
    )
    newest = [brush(region, mask) for region, (mask, _) in SEGMENTS.items()]
    newest += [caption(region, text) for region, (_, text) in SEGMENTS.items()]
    newest.append(brush("c1", box(0, 0, 3, 3), control="class_mask", label="cat"))  # FMbSeg: no text
    fake.predictions.append({"id": 9, "task": task_id, "project": project_id, "model_version": "v2", "result": newest})
    return project_id, task_id


# ---------------------------------------------------------------------------- label config
def test_label_config_has_instruction_definitions_and_required_scores():
    config = rating_label_config()
    interface = LabelInterface(config)
    (image,) = [tag for tag in interface.objects if tag.tag == "Image"]
    assert (image.name, image.value) == ("image", "$image")
    rating = interface.get_control("rating")
    assert rating.tag == "Choices" and rating.to_name == ["image"]
    assert rating.attr["required"] == "true" and rating.attr["choice"] == "single-radio"
    root = ElementTree.fromstring(config)
    hints = [(choice.get("value"), choice.get("hint")) for choice in root.iter("Choice")]
    assert hints == [(str(level.score), f"{level.name}: {level.definition}") for level in RATING_SCALE]
    headers = [header.get("value") for header in root.iter("Header")]
    assert RATING_INSTRUCTION in headers and "$text" in headers
    assert interface.validate_prediction(
        {"result": [{"from_name": "rating", "to_name": "image", "type": "choices", "value": {"choices": ["2"]}}]},
        return_errors=True,
    ) == []


# ------------------------------------------------------------------------------------ setup
def test_setup_creates_one_task_per_segment_with_text(fake, source, capsys):
    project_id, task_id = source
    assert main(["rate", "setup", "--project", str(project_id), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    rating_id = summary["project_id"]
    project = fake.projects[rating_id]
    assert project["title"] == f"Rating of project {project_id}"
    assert project["label_config"] == rating_label_config()
    assert (project["maximum_annotations"], project["overlap_cohort_percentage"]) == (3, 100)
    assert project["show_skip_button"] is False and project["show_instruction"] is True
    assert RATING_INSTRUCTION.split(".")[0] in project["expert_instruction"]

    tasks = sorted(fake.project_tasks(rating_id), key=lambda task: task["data"]["region"])
    # neither the old prediction nor the class mask is rated
    assert [task["data"]["region"] for task in tasks] == ["r/1", "r2"]
    assert sorted(summary["created_task_ids"]) == sorted(task["id"] for task in tasks)
    assert (summary["segments"], summary["existing_tasks"], summary["regions_without_text"]) == (2, 0, 1)
    source_path = fake.tasks[task_id]["data"]["image"]
    for task in tasks:
        data = task["data"]
        mask, text = SEGMENTS[data["region"]]
        keys = ("text", "source_project", "source_task", "source_image", "prediction", "model_version")
        assert {key: data[key] for key in keys} == {
            "text": text, "source_project": project_id, "source_task": task_id,
            "source_image": source_path, "prediction": 9, "model_version": "v2",
        }
        assert data["image_name"] == f"{task_id}-dog.png"
        shown = np.asarray(Image.open(io.BytesIO(fake.files[data["image"]])))
        np.testing.assert_array_equal(shown[:, :W], source_image())
        np.testing.assert_array_equal(shown[:, W + 8 :], reference_segmented(source_image(), mask))


def test_setup_again_adds_nothing_and_raters_are_configurable(fake, source, capsys):
    project_id, _ = source
    assert main(["rate", "setup", "--project", str(project_id)]) == 0
    uploads = len(fake.uploads)
    assert main(["rate", "setup", "--project", str(project_id), "--raters", "5", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["created"], summary["created_task_ids"], summary["existing_tasks"]) == (False, [], 2)
    assert len(fake.uploads) == uploads
    assert fake.projects[summary["project_id"]]["maximum_annotations"] == 5


def test_setup_completes_an_interrupted_run_without_uploading_again(fake, source, capsys):
    project_id, _ = source
    assert main(["rate", "setup", "--project", str(project_id), "--json"]) == 0
    rating_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["project_id"]
    task = next(task for task in fake.project_tasks(rating_id) if task["data"]["region"] == "r2")
    task["data"] = {"image": task["data"]["image"]}  # uploaded, data never written
    uploads, patches = len(fake.uploads), len(fake.task_patches)
    assert main(["rate", "setup", "--project", str(project_id)]) == 0
    assert len(fake.uploads) == uploads and fake.task_patches[patches:] == [task["id"]]
    assert task["data"]["text"] == "grass"


def test_setup_refuses_a_project_without_predictions(fake, label_config, capsys):
    project_id = fake.add_project("Empty", label_config)
    fake.upload_image(project_id, "a.png", png(source_image()))
    assert main(["rate", "setup", "--project", str(project_id)]) == 2
    assert f"project {project_id} has no predictions: pre-label it first" in capsys.readouterr().err
    assert len(fake.projects) == 1  # no rating project made


def test_setup_refuses_predictions_without_text(fake, label_config, capsys):
    project_id = fake.add_project("Classes only", label_config)
    task_id = fake.upload_image(project_id, "a.png", png(source_image()))
    class_mask = brush("c", box(0, 0, 2, 2), "class_mask", "cat")
    fake.predictions.append({"id": 1, "task": task_id, "project": project_id, "result": [class_mask]})
    assert main(["rate", "setup", "--project", str(project_id)]) == 2
    assert "none of the 1 predicted region(s) has a text" in capsys.readouterr().err


def test_unknown_project_is_a_clear_error(fake, capsys):
    assert main(["rate", "setup", "--project", "99"]) == 2
    assert "there is no project 99 at http://ls.test:8080" in capsys.readouterr().err
    assert main(["rate", "collect", "--project", "99", "--out", "unused.json"]) == 2
    assert "there is no project 99" in capsys.readouterr().err


def test_setup_refuses_a_title_taken_by_another_kind_of_project(fake, source, label_config, capsys):
    project_id, _ = source
    fake.add_project(f"Rating of project {project_id}", label_config)
    assert main(["rate", "setup", "--project", str(project_id)]) == 2
    assert "is not a rating project" in capsys.readouterr().err


def test_raters_must_be_positive(fake, source, capsys):
    assert main(["rate", "setup", "--project", str(source[0]), "--raters", "0"]) == 2
    assert "--raters must be at least 1" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- collect
def annotation(annotation_id: int, rater: int, score: str | None, cancelled: bool = False) -> dict:
    result = [] if score is None else [
        {"id": "x", "from_name": "rating", "to_name": "image", "type": "choices", "value": {"choices": [score]}}
    ]
    return {"id": annotation_id, "completed_by": rater, "result": result, "was_cancelled": cancelled}


def rating_data(task: int, region: str, text: str) -> dict:
    return {"image": f"/data/upload/2/abcd0123-s{task}.png", "text": text, "source_project": 1, "source_task": task,
            "region": region, "image_name": f"{task}-cat.png", "source_image": "/data/upload/1/x-cat.png",
            "prediction": 4, "model_version": "v"}


@pytest.fixture
def rated(fake) -> int:
    """A rating project: a fully rated task, a partly rated one with noise, an unrated one, an over-rated one."""
    rating_id = fake.add_project("Rating of project 1", rating_label_config(), maximum_annotations=3)
    complete = [annotation(11, 1, "3"), annotation(12, 2, "2"), annotation(13, 3, "0")]
    fake.add_task(rating_id, rating_data(7, "a", "a dog"), complete)
    fake.add_task(
        rating_id,
        rating_data(7, "b", "grass"),
        [
            annotation(20, 2, "1"),
            annotation(21, 1, None, cancelled=True),  # skipped
            annotation(22, 3, None),  # submitted without a choice
            annotation(23, 2, "3"),  # rater 2 again: replaces annotation 20
        ],
    )
    fake.add_task(rating_id, rating_data(8, "c", "sky"), [])
    fake.add_task(
        rating_id, rating_data(8, "d", "tree"),
        # the 4th rating is left out
        [annotation(30, 4, "1"), annotation(31, 5, "1"), annotation(32, 6, "2"), annotation(33, 7, "0")],
    )
    return rating_id


def test_collect_writes_rating_records_and_the_distribution(fake, rated, tmp_path, capsys):
    out, report_path = tmp_path / "ratings.json", tmp_path / "report.json"
    assert main(["rate", "collect", "--project", str(rated), "--out", str(out), "--report", str(report_path)]) == 0
    records = json.loads(out.read_text())
    fields = ("image", "segment", "text", "label", "rater", "score", "batch", "annotation")
    got = [tuple(record[field] for field in fields) for record in records]
    assert got == [
        ("7-cat.png", "a", "a dog", None, "1", 3, 1, 11),
        ("7-cat.png", "a", "a dog", None, "2", 2, 2, 12),
        ("7-cat.png", "a", "a dog", None, "3", 0, 3, 13),
        ("7-cat.png", "b", "grass", None, "2", 3, 1, 23),
        ("8-cat.png", "d", "tree", None, "4", 1, 1, 30),
        ("8-cat.png", "d", "tree", None, "5", 1, 2, 31),
        ("8-cat.png", "d", "tree", None, "6", 2, 3, 32),
    ]
    assert {(r["source_project"], r["source_task"]) for r in records} == {(1, 7), (1, 8)}

    # Table 2 by hand: batch 1 = {3, 3, 1}, batch 2 = {2, 1}, batch 3 = {0, 2}
    expected = {
        0: (0 / 3 + 0 / 2 + 1 / 2) / 3,
        1: (1 / 3 + 1 / 2 + 0 / 2) / 3,
        2: (0 / 3 + 1 / 2 + 1 / 2) / 3,
        3: (2 / 3 + 0 / 2 + 0 / 2) / 3,
    }
    report = json.loads(report_path.read_text())
    assert report["distribution"]["fractions"] == pytest.approx({str(k): v for k, v in expected.items()})
    assert report["distribution"]["counts_per_batch"] == [
        {"0": 0, "1": 1, "2": 0, "3": 2}, {"0": 0, "1": 1, "2": 1, "3": 0}, {"0": 1, "1": 0, "2": 1, "3": 0}
    ]
    assert (report["segments"], report["ratings"], report["raters"]) == (4, 7, ["1", "2", "3", "4", "5", "6"])
    task_ids = sorted(task["id"] for task in fake.project_tasks(rated))
    assert report["unrated_segments"] == [task_ids[2]] and report["incomplete_segments"] == [task_ids[1]]
    assert len(report["notes"]) == 4  # skipped, no choice, rated twice, a 4th rating
    printed = capsys.readouterr()
    assert f"3 correct                            {100 * expected[3]:.1f}%" in printed.out
    assert "rated twice; annotation 23 replaces 20" in printed.err


def test_collect_with_no_rating_yet(fake, tmp_path, capsys):
    rating_id = fake.add_project("Rating of project 1", rating_label_config(), maximum_annotations=3)
    fake.add_task(rating_id, rating_data(7, "a", "a dog"), [])
    out = tmp_path / "ratings.json"
    assert main(["rate", "collect", "--project", str(rating_id), "--out", str(out)]) == 1
    assert json.loads(out.read_text()) == []
    assert "0 rating(s) of 1 segment(s)" in capsys.readouterr().out


def test_collect_refuses_a_project_that_is_not_a_rating_project(fake, source, tmp_path, capsys):
    project_id, _ = source
    assert main(["rate", "collect", "--project", str(project_id), "--out", str(tmp_path / "r.json")]) == 2
    assert "was not made by `python -m plugin rate setup`" in capsys.readouterr().err


def test_ratings_from_tasks_keeps_raters_per_segment():
    tasks = [{"id": 1, "data": rating_data(7, "a", "t"), "annotations": [annotation(i, i, "2") for i in (5, 6, 7)]}]
    collected = ratings_from_tasks(tasks, raters_per_segment=2)
    assert [r["rater"] for r in collected.records] == ["5", "6"] and collected.notes
    with pytest.raises(PluginError, match="at least 1"):
        ratings_from_tasks(tasks, raters_per_segment=0)


@pytest.mark.parametrize(
    "choices, score", [(["3"], 3), (["0"], 0), (["4"], None), (["x"], None), (["1", "2"], None), ([], None)]
)
def test_score_of(choices, score):
    result = [{"from_name": "rating", "type": "choices", "value": {"choices": choices}}]
    assert score_of(result) == score


@pytest.mark.parametrize("action", ["setup", "collect"])
def test_rate_actions_have_help(action, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["rate", action, "--help"])
    assert exit_info.value.code == 0
    assert f"python -m plugin rate {action}" in capsys.readouterr().out
