"""The 0-3 rating protocol end to end: a real Label Studio 1.23.2, three real raters.

The project pre-labelled by ``python -m plugin setup`` (tiny preset, conftest.prelabelled) is
turned into three rater batch projects with ``python -m plugin rate setup``. Two more users sign
up through the organisation's invite link (Label Studio 1.23 has no API that creates a user who
can log in: ``POST /api/users/`` makes a user without a password whose token nobody can read),
each reads their own API token. Rater b rates batch project b through Label Studio's labelling
stream (``GET /api/projects/<id>/next``, what "Label All Tasks" uses) until the stream has
nothing left. Before the second rater starts, the test checks through the API what that rater
can see: no score of the first rater in their own project, but the first rater's scores in the
first rater's project (the community edition's limit, stated in docs/label-studio.md).
``rate collect`` must then give back exactly the scores they submitted, batch b from project b.
"""

from __future__ import annotations

import io
import json
import uuid
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pytest
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from plugin.cli import main as plugin_main
from tests.plugin.test_rating_render import reference_segmented

pytestmark = pytest.mark.e2e

RATERS = 3
GAP = 8  # plugin.rating.PANEL_GAP_PX, stated here on purpose: the picture's layout is the contract


def brush_inside(item: dict) -> np.ndarray:
    """``(H, W)`` bool: where the brush result's alpha is at least 128."""
    height, width = item["original_height"], item["original_width"]
    return np.asarray(decode_rle(item["value"]["rle"]), dtype=np.uint8).reshape(height, width, 4)[:, :, 3] >= 128


def newest_texts(client: LabelStudio, project_id: int) -> dict[tuple[int, str], tuple[str, dict]]:
    """``{(task, region): (text, brush item)}`` of the newest prediction of each task, for regions with a text."""
    newest: dict[int, object] = {}
    for prediction in client.predictions.list(project=project_id):
        if prediction.task not in newest or prediction.id > newest[prediction.task].id:
            newest[prediction.task] = prediction
    found = {}
    for task_id, prediction in newest.items():
        brushes = {item["id"]: item for item in prediction.result if item["type"] == "brushlabels"}
        for item in prediction.result:
            if item["type"] != "textarea" or item["id"] not in brushes:
                continue
            texts = [text for text in item["value"].get("text", []) if text.strip()]
            if texts:
                found[(task_id, item["id"])] = (texts[0].strip(), brushes[item["id"]])
    return found


@dataclass(frozen=True)
class Rater:
    """A user who signed up through the invite link."""

    id: int
    email: str
    password: str
    token: str


def sign_up_rater(url: str, admin_token: str) -> Rater:
    """A new user, signed up with the organisation's invite link, with their legacy token."""
    invite = requests.get(f"{url}/api/invite", headers={"Authorization": f"Token {admin_token}"}, timeout=30)
    assert invite.status_code == 200, invite.text
    session = requests.Session()
    signup_url = f"{url}/user/signup/?token={invite.json()['token']}"
    session.get(signup_url, timeout=30)  # sets the csrftoken cookie
    email, password = f"rater-{uuid.uuid4().hex[:8]}@example.com", f"pw-{uuid.uuid4().hex}"
    response = session.post(
        signup_url,
        data={"email": email, "password": password, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        allow_redirects=False,
        timeout=30,
    )
    assert response.status_code == 302, f"sign-up failed: {response.status_code} {response.text[:300]}"
    token = session.get(f"{url}/api/current-user/token", timeout=30).json()["token"]
    whoami = requests.get(f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {token}"}, timeout=30)
    assert whoami.json()["email"] == email
    return Rater(id=whoami.json()["id"], email=email, password=password, token=token)


def fetch_image(label_studio, path: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 of an image Label Studio serves at ``path``."""
    response = label_studio.api("GET", path)
    assert response.status_code == 200, f"GET {path}: {response.status_code}"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def get(url: str, token: str, path: str, **params) -> requests.Response:
    return requests.get(f"{url}{path}", headers={"Authorization": f"Token {token}"}, params=params, timeout=30)


def next_task(url: str, token: str, project_id: int) -> dict | None:
    """The labelling stream's next task for this user, or None when it has none left."""
    response = get(url, token, f"/api/projects/{project_id}/next")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text[:300]
    return response.json()


def rate(url: str, token: str, task_id: int, score: int):
    """Submit ``score`` for the task as the token's user (what the editor's Submit sends)."""
    return LabelStudio(base_url=url, api_key=token).annotations.create(
        id=task_id,
        result=[{"from_name": "rating", "to_name": "image", "type": "choices", "value": {"choices": [str(score)]}}],
        lead_time=1.0,
    )


def scores_seen(url: str, token: str, project_id: int) -> dict[int, list[tuple[int, list]]]:
    """``{task: [(annotation author, choices)]}`` as the token's user reads a project: the task
    list with all fields (the Data Manager's data) and every task's detail (what clicking a row loads)."""
    seen: dict[int, list[tuple[int, list]]] = defaultdict(list)
    listed = get(url, token, "/api/tasks/", project=project_id, fields="all", page_size=500).json()["tasks"]
    for task in listed:
        detail = get(url, token, f"/api/tasks/{task['id']}/").json()
        for annotation in task.get("annotations", []) + detail.get("annotations", []):
            author = annotation["completed_by"]
            author = author["id"] if isinstance(author, dict) else author
            choices = [item["value"]["choices"] for item in annotation["result"] if item["type"] == "choices"]
            seen[task["id"]].append((author, choices))
    return seen


def test_three_raters_rate_one_batch_project_each_and_collect_returns_their_scores(
    prelabelled, label_studio, monkeypatch, capsys, tmp_path
):
    source = prelabelled("legacy")
    url, admin_token = label_studio.url, source.api_key
    admin = LabelStudio(base_url=url, api_key=admin_token)
    expected_segments = newest_texts(admin, source.project_id)
    assert expected_segments, "the pre-labelled project has no region with a text"

    # --- rate setup -----------------------------------------------------------------
    monkeypatch.setenv("LABEL_STUDIO_URL", url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", admin_token)
    assert plugin_main(["rate", "setup", "--project", str(source.project_id), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    batch_projects = summary["project_ids"]
    assert len(batch_projects) == RATERS and summary["segments"] == len(expected_segments)

    images: dict[int, np.ndarray] = {}
    tasks_of: dict[int, dict] = {}  # batch project -> {task id: task}
    for batch, (rating_id, entry) in enumerate(zip(batch_projects, summary["projects"]), start=1):
        project = label_studio.api("GET", f"/api/projects/{rating_id}/").json()
        assert project["title"] == f"Rating of project {source.project_id} (rater batch {batch}/{RATERS})"
        assert (project["maximum_annotations"], project["overlap_cohort_percentage"]) == (1, 100)
        assert project["show_instruction"] is False  # no instruction modal on every "Label All Tasks"
        assert f"You will be solving {len(expected_segments)} independent questions" in project["label_config"]
        tasks = {task.id: task for task in admin.tasks.list(project=rating_id)}
        tasks_of[rating_id] = tasks
        assert sorted(tasks) == entry["created_task_ids"]
        by_segment = {(task.data["source_task"], task.data["region"]): task for task in tasks.values()}
        assert sorted(by_segment) == sorted(expected_segments)  # every predicted segment with a text, once
        for key, task in by_segment.items():
            text, brush = expected_segments[key]
            assert task.data["text"] == text and task.data["source_project"] == source.project_id
            assert (task.data["rater_batch"], task.data["rater_batches"]) == (batch, RATERS)
            stored = label_studio.api("GET", f"/api/tasks/{task.id}").json()
            assert stored["overlap"] == 1, "a batch project's task is rated once"
            if key[0] not in images:
                images[key[0]] = fetch_image(label_studio, task.data["source_image"])
            source_pixels = images[key[0]]
            shown = fetch_image(label_studio, task.data["image"])
            height, width = source_pixels.shape[:2]
            assert shown.shape == (height, 2 * width + GAP, 3)
            np.testing.assert_array_equal(shown[:, :width], source_pixels)  # the input image, for reference
            # the region in its own colours, the rest dimmed, a black and white outline around it
            np.testing.assert_array_equal(
                shown[:, width + GAP :], reference_segmented(source_pixels, brush_inside(brush))
            )

    # running it again adds nothing
    assert plugin_main(["rate", "setup", "--project", str(source.project_id), "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["project_ids"] == batch_projects
    assert [(e["created_task_ids"], e["existing_tasks"]) for e in again["projects"]] == [
        ([], len(expected_segments))
    ] * 3

    # --- rater b rates batch project b, in the labelling stream ---------------------------
    whoami = label_studio.api("GET", "/api/current-user/whoami").json()
    raters = [Rater(whoami["id"], label_studio.email, label_studio.password, admin_token)]
    raters += [sign_up_rater(url, admin_token) for _ in range(RATERS - 1)]
    rng = np.random.default_rng(7)
    submitted: dict[int, tuple[int, int, int, int]] = {}  # task -> (annotation id, rater, score, batch)
    for batch, (rater, rating_id) in enumerate(zip(raters, batch_projects), start=1):
        if batch == 2:
            # what the second rater can see once the first has rated everything
            own = scores_seen(url, rater.token, rating_id)
            assert all(author == rater.id for seen in own.values() for author, _ in seen), own
            assert not any(own.values()), "the second rater's project holds no one's score yet"
            first = scores_seen(url, rater.token, batch_projects[0])
            # the community edition's limit (docs/label-studio.md, "Raters"): another batch's
            # project is open to every member of the organisation, scores included
            assert {author for seen in first.values() for author, _ in seen} == {raters[0].id}
        while (task := next_task(url, rater.token, rating_id)) is not None:
            assert task["id"] in tasks_of[rating_id]
            assert task["annotations"] == [], "the stream shows no earlier rating"
            score = int(rng.integers(0, 4))
            created = rate(url, rater.token, task["id"], score)
            assert created.completed_by == rater.id
            submitted[task["id"]] = (created.id, rater.id, score, batch)
        other = raters[batch % RATERS]
        assert next_task(url, other.token, rating_id) is None, "a rated batch task is given to no one else"
    every_task = {task_id for tasks in tasks_of.values() for task_id in tasks}
    assert set(submitted) == every_task
    for task_id in every_task:
        assert label_studio.api("GET", f"/api/tasks/{task_id}").json()["is_labeled"] is True

    # --- rate collect --------------------------------------------------------------------
    out, report_path = tmp_path / "ratings.json", tmp_path / "report.json"
    status = plugin_main(
        ["rate", "collect", "--project", *map(str, batch_projects), "--out", str(out), "--report", str(report_path)]
    )
    assert status == 0, capsys.readouterr()
    records = json.loads(out.read_text())
    got = sorted((r["rating_task"], r["annotation"], int(r["rater"]), r["score"], r["batch"]) for r in records)
    assert got == sorted((task_id, *values) for task_id, values in submitted.items())
    segment_of = {
        task_id: (task.data["source_task"], task.data["region"], task.data["text"])
        for tasks in tasks_of.values()
        for task_id, task in tasks.items()
    }
    for record in records:
        source_task, region, text = segment_of[record["rating_task"]]
        assert (record["source_task"], record["segment"], record["text"], record["label"]) == (
            source_task,
            region,
            text,
            None,
        )
    per_segment = defaultdict(set)
    for record in records:
        per_segment[(record["source_task"], record["segment"])].add(record["rater"])
    assert all(len(raters_of) == RATERS for raters_of in per_segment.values())  # three distinct raters each

    # Table 2, computed here: per batch the share of labels at each score, then the mean.
    batches = [[score for (_, _, score, b) in submitted.values() if b == batch] for batch in range(1, RATERS + 1)]
    expected = {s: sum(batch.count(s) / len(batch) for batch in batches) / len(batches) for s in range(4)}
    report = json.loads(report_path.read_text())
    assert report["distribution"]["fractions"] == pytest.approx({str(s): v for s, v in expected.items()})
    assert report["unrated_segments"] == [] and report["incomplete_segments"] == [] and report["open_tasks"] == []
    assert sorted(map(int, report["raters"])) == sorted(rater.id for rater in raters)
    printed = capsys.readouterr().out
    assert f"{len(records)} rating(s) of {len(expected_segments)} segment(s) by {RATERS} rater(s)" in printed
