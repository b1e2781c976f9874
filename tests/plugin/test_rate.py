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
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image

from backend.evaluation.rating import RATING_SCALE
from plugin.cli import main
from plugin.connection import ConnectionSettings, LabelStudioConnection
from plugin.errors import PluginError
from plugin.rating.collect import ratings_from_batch_tasks, ratings_from_tasks, score_of
from plugin.rating.config import (
    configured_tasks,
    rating_instruction,
    rating_instruction_html,
    rating_label_config,
    shown_definition,
)
from tests.plugin.test_export_formats import brush  # a brush region as Label Studio sends it
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
            "id": project_id,
            "title": title,
            "label_config": label_config,
            "maximum_annotations": 1,
            "overlap_cohort_percentage": 100,
            **fields,
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
                json={
                    "tasks": tasks[(page - 1) * size : page * size],
                    "total": len(tasks),
                    "total_annotations": 0,
                    "total_predictions": 0,
                },
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
        {
            "id": 5,
            "task": task_id,
            "project": project_id,
            "model_version": "old",
            "result": [brush("old", "segment", "segment", box(0, 0, 2, 2)), caption("old", "stale")],
        }
    )
    newest = [brush(region, "segment", "segment", mask) for region, (mask, _) in SEGMENTS.items()]
    newest += [caption(region, text) for region, (_, text) in SEGMENTS.items()]
    newest.append(brush("c1", "class_mask", "cat", box(0, 0, 3, 3)))  # FMbSeg: no text
    fake.predictions.append({"id": 9, "task": task_id, "project": project_id, "model_version": "v2", "result": newest})
    return project_id, task_id


# ---------------------------------------------------------------------------- label config
def test_label_config_states_the_task_count_and_the_scale_without_missing_pictures():
    config = rating_label_config(16)
    interface = LabelInterface(config)
    (image,) = [tag for tag in interface.objects if tag.tag == "Image"]
    assert (image.name, image.value) == ("image", "$image")
    rating = interface.get_control("rating")
    assert rating.tag == "Choices" and rating.to_name == ["image"]
    assert rating.attr["required"] == "true" and rating.attr["choice"] == "single-radio"
    root = ElementTree.fromstring(config)
    hints = [(choice.get("value"), choice.get("hint")) for choice in root.iter("Choice")]
    assert hints == [
        (str(level.score), f"{level.score} · {level.name}: {shown_definition(level)}") for level in RATING_SCALE
    ]
    headers = [header.get("value") for header in root.iter("Header")]
    assert rating_instruction(16) in headers and "$text" in headers
    assert "You will be solving 16 independent questions" in rating_instruction(16)
    assert "1 independent question," in rating_instruction(1)
    assert configured_tasks(config) == 16
    # Fig. 21's page had 30 questions and example pictures (A)-(E) that are not shown here
    assert "30 independent" not in config and not re.search(r"\([A-E]\)", config)
    assert not re.search(r"\([A-E]\)", rating_instruction_html(16))
    assert "green" not in rating_instruction(16)  # the highlight is no longer green
    assert (
        interface.validate_prediction(
            {"result": [{"from_name": "rating", "to_name": "image", "type": "choices", "value": {"choices": ["2"]}}]},
            return_errors=True,
        )
        == []
    )
    with pytest.raises(ValueError):
        rating_label_config(0)


# ------------------------------------------------------------------------------------ setup
def setup_summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_setup_creates_one_project_per_rater_batch_with_every_segment_once(fake, source, capsys):
    project_id, task_id = source
    assert main(["rate", "setup", "--project", str(project_id), "--json"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed.strip().splitlines()[-1])
    assert (summary["raters"], summary["segments"], summary["regions_without_text"]) == (3, 2, 1)
    assert [entry["batch"] for entry in summary["projects"]] == [1, 2, 3]
    assert summary["project_ids"] == [entry["project_id"] for entry in summary["projects"]]

    source_path = fake.tasks[task_id]["data"]["image"]
    for entry in summary["projects"]:
        batch, rating_id = entry["batch"], entry["project_id"]
        project = fake.projects[rating_id]
        assert project["title"] == entry["title"] == f"Rating of project {project_id} (rater batch {batch}/3)"
        assert project["label_config"] == rating_label_config(2)  # "You will be solving 2 independent questions"
        assert (project["maximum_annotations"], project["overlap_cohort_percentage"]) == (1, 100)
        assert project["show_skip_button"] is False and project["enable_empty_annotation"] is False
        assert project["show_instruction"] is False  # no modal on every "Label All Tasks"
        assert project["expert_instruction"] == rating_instruction_html(2)  # behind the "Instructions" button

        tasks = sorted(fake.project_tasks(rating_id), key=lambda task: task["data"]["region"])
        # neither the old prediction nor the class mask is rated
        assert [task["data"]["region"] for task in tasks] == ["r/1", "r2"]
        assert entry["created_task_ids"] == sorted(task["id"] for task in tasks) and entry["existing_tasks"] == 0
        for task in tasks:
            data = task["data"]
            mask, text = SEGMENTS[data["region"]]
            keys = (
                "text",
                "source_project",
                "source_task",
                "source_image",
                "prediction",
                "model_version",
                "rater_batch",
                "rater_batches",
                "image_name",
            )
            assert {key: data[key] for key in keys} == {
                "text": text,
                "source_project": project_id,
                "source_task": task_id,
                "source_image": source_path,
                "prediction": 9,
                "model_version": "v2",
                "rater_batch": batch,
                "rater_batches": 3,
                "image_name": f"{task_id}-dog.png",
            }
            assert data["image"].startswith(f"/data/upload/{rating_id}/")  # each project has its own upload
            shown = np.asarray(Image.open(io.BytesIO(fake.files[data["image"]])))
            np.testing.assert_array_equal(shown[:, :W], source_image())
            np.testing.assert_array_equal(shown[:, W + 8 :], reference_segmented(source_image(), mask))
    ids = " ".join(str(entry["project_id"]) for entry in summary["projects"])
    assert f"python -m plugin rate collect --project {ids} --out ratings.json" in printed


def test_setup_again_adds_nothing_and_more_raters_make_other_projects(fake, source, capsys):
    project_id, _ = source
    assert main(["rate", "setup", "--project", str(project_id), "--json"]) == 0
    first = setup_summary(capsys)
    uploads = len(fake.uploads)
    assert main(["rate", "setup", "--project", str(project_id), "--json"]) == 0
    again = setup_summary(capsys)
    assert again["project_ids"] == first["project_ids"] and len(fake.uploads) == uploads
    assert [(e["created"], e["created_task_ids"], e["existing_tasks"]) for e in again["projects"]] == [
        (False, [], 2)
    ] * 3

    assert main(["rate", "setup", "--project", str(project_id), "--raters", "5", "--json"]) == 0
    five = setup_summary(capsys)
    assert [fake.projects[pid]["title"] for pid in five["project_ids"]] == [
        f"Rating of project {project_id} (rater batch {b}/5)" for b in range(1, 6)
    ]
    assert not set(five["project_ids"]) & set(first["project_ids"])


def test_a_new_segment_is_added_to_every_batch_and_the_count_follows(fake, source, capsys):
    project_id, task_id = source
    assert main(["rate", "setup", "--project", str(project_id), "--json"]) == 0
    ids = setup_summary(capsys)["project_ids"]
    newer = [brush(region, "segment", "segment", mask) for region, (mask, _) in SEGMENTS.items()]
    newer.append(brush("r3", "segment", "segment", box(0, 8, 3, 12)))
    newer += [caption(region, text) for region, (_, text) in SEGMENTS.items()] + [caption("r3", "sky")]
    fake.predictions.append({"id": 12, "task": task_id, "project": project_id, "model_version": "v3", "result": newer})
    assert main(["rate", "setup", "--project", str(project_id), "--json"]) == 0
    summary = setup_summary(capsys)
    assert [(len(e["created_task_ids"]), e["existing_tasks"]) for e in summary["projects"]] == [(1, 2)] * 3
    for rating_id in ids:
        assert len(fake.project_tasks(rating_id)) == 3
        assert fake.projects[rating_id]["label_config"] == rating_label_config(3)
        assert "You will be solving 3 independent questions" in fake.projects[rating_id]["expert_instruction"]


def test_setup_completes_an_interrupted_run_without_uploading_again(fake, source, capsys):
    project_id, _ = source
    assert main(["rate", "setup", "--project", str(project_id), "--json"]) == 0
    rating_id = setup_summary(capsys)["project_ids"][1]
    task = next(task for task in fake.project_tasks(rating_id) if task["data"]["region"] == "r2")
    task["data"] = {"image": task["data"]["image"]}  # uploaded, data never written
    uploads, patches = len(fake.uploads), len(fake.task_patches)
    assert main(["rate", "setup", "--project", str(project_id)]) == 0
    assert len(fake.uploads) == uploads and fake.task_patches[patches:] == [task["id"]]
    assert (task["data"]["text"], task["data"]["rater_batch"]) == ("grass", 2)


def test_setup_refuses_a_title_too_long_for_label_studio(fake, source, capsys):
    assert main(["rate", "setup", "--project", str(source[0]), "--title", "x" * 40]) == 2
    assert "longer than Label Studio's 50 characters" in capsys.readouterr().err
    assert len(fake.projects) == 1


def test_setup_refuses_a_project_without_predictions(fake, label_config, capsys):
    project_id = fake.add_project("Empty", label_config)
    fake.upload_image(project_id, "a.png", png(source_image()))
    assert main(["rate", "setup", "--project", str(project_id)]) == 2
    assert f"project {project_id} has no predictions: pre-label it first" in capsys.readouterr().err
    assert len(fake.projects) == 1  # no rating project made


def test_setup_refuses_predictions_without_text(fake, label_config, capsys):
    project_id = fake.add_project("Classes only", label_config)
    task_id = fake.upload_image(project_id, "a.png", png(source_image()))
    class_mask = brush("c", "class_mask", "cat", box(0, 0, 2, 2))
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
    fake.add_project(f"Rating of project {project_id} (rater batch 1/3)", label_config)
    assert main(["rate", "setup", "--project", str(project_id)]) == 2
    assert "is not a rating project" in capsys.readouterr().err


def test_raters_must_be_positive(fake, source, capsys):
    assert main(["rate", "setup", "--project", str(source[0]), "--raters", "0"]) == 2
    assert "--raters must be at least 1" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- collect
def annotation(annotation_id: int, rater: int, score: str | None, cancelled: bool = False) -> dict:
    result = (
        []
        if score is None
        else [{"id": "x", "from_name": "rating", "to_name": "image", "type": "choices", "value": {"choices": [score]}}]
    )
    return {"id": annotation_id, "completed_by": rater, "result": result, "was_cancelled": cancelled}


def rating_data(task: int, region: str, text: str) -> dict:
    return {
        "image": f"/data/upload/2/abcd0123-s{task}.png",
        "text": text,
        "source_project": 1,
        "source_task": task,
        "region": region,
        "image_name": f"{task}-cat.png",
        "source_image": "/data/upload/1/x-cat.png",
        "prediction": 4,
        "model_version": "v",
    }


def batch_data(task: int, region: str, text: str, batch: int, batches: int = 3, source_project: int = 1) -> dict:
    return {
        **rating_data(task, region, text),
        "source_project": source_project,
        "rater_batch": batch,
        "rater_batches": batches,
    }


@pytest.fixture
def batches(fake) -> list[int]:
    """Three rater batch projects of the segments (7, a), (7, b), (8, c), rated with some noise."""
    ids = []
    plan = {
        1: {"a": [annotation(41, 1, "3")], "b": [annotation(42, 1, "2")], "c": [annotation(43, 1, "1")]},
        # two users in batch 2's project: annotation 53 is a second rating of that task
        2: {"a": [annotation(51, 2, "2")], "b": [annotation(52, 2, "0"), annotation(53, 5, "3")], "c": []},
        # rater 1 wandered into batch 3: a second rating of segment a by rater 1; c was skipped
        3: {"a": [annotation(61, 1, "1")], "b": [annotation(62, 3, "3")], "c": [annotation(63, 3, None, True)]},
    }
    for batch, tasks in plan.items():
        rating_id = fake.add_project(f"Rating of project 1 (rater batch {batch}/3)", rating_label_config(3))
        for region, annotations in tasks.items():
            source_task = 8 if region == "c" else 7
            fake.add_task(rating_id, batch_data(source_task, region, f"text {region}", batch), annotations)
        ids.append(rating_id)
    return ids


def task_of(fake, project_id: int, region: str) -> int:
    (task,) = [task for task in fake.project_tasks(project_id) if task["data"]["region"] == region]
    return task["id"]


def test_collect_combines_the_batch_projects(fake, batches, tmp_path, capsys):
    out, report_path = tmp_path / "ratings.json", tmp_path / "report.json"
    given = [str(project_id) for project_id in reversed(batches)]  # any order
    assert main(["rate", "collect", "--project", *given, "--out", str(out), "--report", str(report_path)]) == 0
    records = json.loads(out.read_text())
    fields = ("image", "segment", "text", "label", "rater", "score", "batch", "annotation", "rating_task")
    assert [tuple(record[field] for field in fields) for record in records] == [
        ("7-cat.png", "a", "text a", None, "1", 3, 1, 41, task_of(fake, batches[0], "a")),
        ("7-cat.png", "a", "text a", None, "2", 2, 2, 51, task_of(fake, batches[1], "a")),
        ("7-cat.png", "b", "text b", None, "1", 2, 1, 42, task_of(fake, batches[0], "b")),
        ("7-cat.png", "b", "text b", None, "2", 0, 2, 52, task_of(fake, batches[1], "b")),
        ("7-cat.png", "b", "text b", None, "3", 3, 3, 62, task_of(fake, batches[2], "b")),
        ("8-cat.png", "c", "text c", None, "1", 1, 1, 43, task_of(fake, batches[0], "c")),
    ]
    # exactly the keys of the records before rater batch projects
    assert set(records[0]) == {
        "image",
        "segment",
        "text",
        "label",
        "rater",
        "score",
        "batch",
        "source_project",
        "source_task",
        "rating_task",
        "annotation",
    }
    report = json.loads(report_path.read_text())
    # Table 2 by hand: batch 1 = {3, 2, 1}, batch 2 = {2, 0}, batch 3 = {3}
    expected = {0: (0 + 1 / 2 + 0) / 3, 1: (1 / 3 + 0 + 0) / 3, 2: (1 / 3 + 1 / 2 + 0) / 3, 3: (1 / 3 + 0 + 1) / 3}
    assert report["distribution"]["fractions"] == pytest.approx({str(k): v for k, v in expected.items()})
    assert report["rating_projects"] == [int(project_id) for project_id in given]
    assert (report["raters_per_segment"], report["segments"], report["rating_tasks"], report["ratings"]) == (3, 3, 9, 6)
    assert report["unrated_segments"] == [] and report["incomplete_segments"] == [[7, "a"], [8, "c"]]
    assert report["open_tasks"] == sorted(
        [task_of(fake, batches[1], "c"), task_of(fake, batches[2], "a"), task_of(fake, batches[2], "c")]
    )
    notes = "\n".join(report["notes"])
    assert "annotation 53 by rater 5 left out (a batch project's task holds one rating" in notes
    assert "annotation 61 left out: rater 1 already rated this segment in batch 1" in notes
    assert "annotation 63 was skipped" in notes and len(report["notes"]) == 3
    assert "6 rating(s) of 3 segment(s) by 3 rater(s)" in capsys.readouterr().out


def test_collect_notes_a_batch_project_not_given(fake, batches, tmp_path, capsys):
    out = tmp_path / "ratings.json"
    assert main(["rate", "collect", "--project", str(batches[0]), str(batches[1]), "--out", str(out)]) == 0
    assert {record["batch"] for record in json.loads(out.read_text())} == {1, 2}
    assert "rater batch(es) [3] of 3 not collected" in capsys.readouterr().err


def test_collect_refuses_projects_that_do_not_make_one_set_of_batches(fake, batches, tmp_path, capsys):
    out = str(tmp_path / "ratings.json")
    twice = fake.add_project("copy of batch 1", rating_label_config(1))
    fake.add_task(twice, batch_data(7, "a", "text a", 1), [])
    assert main(["rate", "collect", "--project", str(batches[0]), str(twice), "--out", out]) == 2
    assert f"projects {batches[0]} and {twice} both hold rater batch 1" in capsys.readouterr().err

    other = fake.add_project("Rating of project 5 (rater batch 3/3)", rating_label_config(1))
    fake.add_task(other, batch_data(7, "a", "text a", 3, source_project=5), [])
    assert main(["rate", "collect", "--project", str(batches[0]), str(other), "--out", out]) == 2
    assert "batches of different rating set-ups" in capsys.readouterr().err

    shared = fake.add_project("Rating of project 1", rating_label_config(1), maximum_annotations=3)
    fake.add_task(shared, rating_data(7, "a", "a dog"), [])
    assert main(["rate", "collect", "--project", str(batches[0]), str(shared), "--out", out]) == 2
    assert f"project(s) [{shared}] are shared rating projects" in capsys.readouterr().err

    assert main(["rate", "collect", "--project", *map(str, batches), "--raters", "2", "--out", out]) == 2
    assert "--raters 2: the rater batch projects make 3 batches" in capsys.readouterr().err


def test_ratings_from_batch_tasks_refuses_a_segment_twice_in_one_batch():
    tasks = [{"id": i, "data": batch_data(7, "a", "t", 1), "annotations": []} for i in (1, 2)]
    with pytest.raises(PluginError, match="both hold task 7, region 'a' in rater batch 1"):
        ratings_from_batch_tasks(tasks, 3)
    with pytest.raises(PluginError, match="rater_batch 4 is not a batch from 1 to 3"):
        ratings_from_batch_tasks([{"id": 1, "data": batch_data(7, "a", "t", 4), "annotations": []}], 3)


@pytest.fixture
def rated(fake) -> int:
    """A shared rating project (made by earlier versions, overlap 3): a fully rated task, a partly
    rated one with noise, an unrated one, an over-rated one."""
    rating_id = fake.add_project("Rating of project 1", rating_label_config(4), maximum_annotations=3)
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
        rating_id,
        rating_data(8, "d", "tree"),
        # the 4th rating is left out
        [annotation(30, 4, "1"), annotation(31, 5, "1"), annotation(32, 6, "2"), annotation(33, 7, "0")],
    )
    return rating_id


def test_collect_reads_a_shared_project_as_before(fake, rated, tmp_path, capsys):
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
        {"0": 0, "1": 1, "2": 0, "3": 2},
        {"0": 0, "1": 1, "2": 1, "3": 0},
        {"0": 1, "1": 0, "2": 1, "3": 0},
    ]
    assert (report["segments"], report["ratings"], report["raters"]) == (4, 7, ["1", "2", "3", "4", "5", "6"])
    assert report["rating_projects"] == [rated]
    assert report["unrated_segments"] == [[8, "c"]] and report["incomplete_segments"] == [[7, "b"]]
    task_ids = sorted(task["id"] for task in fake.project_tasks(rated))
    assert report["open_tasks"] == [task_ids[1], task_ids[2]]
    assert len(report["notes"]) == 4  # skipped, no choice, rated twice, a 4th rating
    printed = capsys.readouterr()
    assert f"3 correct                            {100 * expected[3]:.1f}%" in printed.out
    assert "rated twice; annotation 23 replaces 20" in printed.err


def test_collect_with_no_rating_yet(fake, tmp_path, capsys):
    rating_id = fake.add_project("Rating of project 1", rating_label_config(1), maximum_annotations=3)
    fake.add_task(rating_id, rating_data(7, "a", "a dog"), [])
    out = tmp_path / "ratings.json"
    assert main(["rate", "collect", "--project", str(rating_id), "--out", str(out)]) == 1
    assert json.loads(out.read_text()) == []
    assert "0 rating(s) of 1 segment(s)" in capsys.readouterr().out


def test_collect_refuses_a_project_that_is_not_a_rating_project(fake, source, tmp_path, capsys):
    project_id, _ = source
    assert main(["rate", "collect", "--project", str(project_id), "--out", str(tmp_path / "r.json")]) == 2
    error = capsys.readouterr().err
    assert f"project {project_id} is not a rating project" in error
    assert f"run `python -m plugin rate setup --project {project_id}` first" in error


def test_collect_on_the_source_project_names_its_rating_projects(fake, source, tmp_path, capsys):
    project_id, _ = source
    assert main(["rate", "setup", "--project", str(project_id)]) == 0
    capsys.readouterr()
    other = fake.add_project("Rating of project 99 (rater batch 1/1)", rating_label_config(1))
    fake.add_task(other, batch_data(5, "z", "text z", 1, batches=1, source_project=99), [])
    rating = sorted(
        pid for pid, p in fake.projects.items() if pid not in (project_id, other) and "Rating" in p["title"]
    )
    assert len(rating) == 3
    assert main(["rate", "collect", "--project", str(project_id), "--out", str(tmp_path / "r.json")]) == 2
    error = capsys.readouterr().err
    assert f"project {project_id} is not a rating project" in error
    assert f"python -m plugin rate collect --project {' '.join(map(str, rating))} --out" in error
    assert str(other) not in error.split("its rating projects are")[1].split(":")[0].split()
    assert not (tmp_path / "r.json").exists()


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


def test_reassigned_labels_are_rated_and_collected_for_table1(fake, source, tmp_path, capsys):
    """rate predictions -> backend.evaluation reassign (TT, the real Sentence-BERT) -> rate setup
    --target reassigned -> ratings -> rate collect: records carry T_i*, which the evaluation's
    human verification reads."""
    from backend.evaluation.__main__ import main as evaluation_main
    from backend.evaluation.files import load_predictions
    from backend.evaluation.rating import parse_ratings

    project_id, task_id = source
    out = tmp_path / "segments"
    assert main(["rate", "predictions", "--project", str(project_id), "--out", str(out)]) == 0
    (prediction,) = load_predictions([out])
    assert prediction.image == f"{task_id}-dog.png" and prediction.segment_ids == ("r/1", "r2")
    assert prediction.texts == ("a small dog", "grass")
    np.testing.assert_array_equal(prediction.masks()[0], SEGMENTS["r/1"][0])
    shown = np.asarray(Image.open(out / "images" / prediction.image))
    np.testing.assert_array_equal(shown, source_image())

    classes = tmp_path / "classes.txt"
    classes.write_text("background\ndog\ngrass\nsky\n")
    reassigned = tmp_path / "tt.json"
    assert (
        evaluation_main(["reassign", str(out), "--classes", str(classes), "--method", "tt", "--out", str(reassigned)])
        == 0
    )
    capsys.readouterr()

    assert main(["rate", "setup", "--project", str(project_id), "--target", "reassigned"]) == 2  # needs the file
    assert "--target reassigned and --reassigned FILE go together" in capsys.readouterr().err
    args = ["rate", "setup", "--project", str(project_id), "--raters", "1", "--json"]
    assert main([*args, "--target", "reassigned", "--reassigned", str(reassigned)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (entry,) = summary["projects"]
    assert entry["title"] == f"Rating of labels of project {project_id} (rater batch 1/1)"
    tasks = {task["data"]["region"]: task for task in fake.project_tasks(entry["project_id"])}
    expected = {"r/1": "dog", "r2": "grass"}  # "grass" is a label itself; "a small dog" is nearest to "dog"
    for region, task in tasks.items():
        data = task["data"]
        assert data["label"] == data["text"] == expected[region]  # the rater is shown T_i*
        assert data["predicted_text"] == SEGMENTS[region][1]
        task["annotations"] = [annotation(70 + len(region), 4, "3")]

    ratings = tmp_path / "ratings.json"
    assert main(["rate", "collect", "--project", str(entry["project_id"]), "--out", str(ratings)]) == 0
    records = json.loads(ratings.read_text())
    assert sorted((r["segment"], r["label"], r["score"]) for r in records) == [("r/1", "dog", 3), ("r2", "grass", 3)]
    assert all(r["image"] == prediction.image for r in records)
    assert len(parse_ratings(records)) == 2  # the evaluation's --ratings reads them
    # the text-rating projects are others: reusing their title for labels is refused
    assert main(["rate", "setup", "--project", str(project_id), "--raters", "1"]) == 0
    text_title = f"Rating of project {project_id}"
    capsys.readouterr()
    assert main([*args, "--target", "reassigned", "--reassigned", str(reassigned), "--title", text_title]) == 2
    assert "rates predicted texts: choose another --title" in capsys.readouterr().err
