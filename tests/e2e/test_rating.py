"""The 0-3 rating protocol end to end: a real Label Studio 1.23.2, three real raters.

The project pre-labelled by ``python -m plugin setup`` (tiny preset, conftest.prelabelled) is
turned into a rating project with ``python -m plugin rate setup``. Two more users sign up
through the organisation's invite link (Label Studio 1.23 has no API that creates a user who
can log in: ``POST /api/users/`` makes a user without a password whose token nobody can read),
each reads their own API token, and the admin and the two of them rate through Label Studio's
labelling stream (``GET /api/projects/<id>/next``, what "Label All Tasks" uses), taking turns,
until the stream has nothing left for them. ``rate collect`` must then give back exactly the
scores they submitted, and the distribution the test computes from them.
"""

from __future__ import annotations

import io
import json
import uuid
from collections import defaultdict

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


def sign_up_rater(url: str, admin_token: str) -> tuple[int, str]:
    """A new user, signed up with the organisation's invite link: ``(user id, legacy token)``."""
    invite = requests.get(f"{url}/api/invite", headers={"Authorization": f"Token {admin_token}"}, timeout=30)
    assert invite.status_code == 200, invite.text
    session = requests.Session()
    signup_url = f"{url}/user/signup/?token={invite.json()['token']}"
    session.get(signup_url, timeout=30)  # sets the csrftoken cookie
    email = f"rater-{uuid.uuid4().hex[:8]}@example.com"
    response = session.post(
        signup_url,
        data={
            "email": email,
            "password": f"pw-{uuid.uuid4().hex}",
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
        },
        allow_redirects=False,
        timeout=30,
    )
    assert response.status_code == 302, f"sign-up failed: {response.status_code} {response.text[:300]}"
    token = session.get(f"{url}/api/current-user/token", timeout=30).json()["token"]
    whoami = requests.get(f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {token}"}, timeout=30)
    assert whoami.json()["email"] == email
    return whoami.json()["id"], token


def fetch_image(label_studio, path: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 of an image Label Studio serves at ``path``."""
    response = label_studio.api("GET", path)
    assert response.status_code == 200, f"GET {path}: {response.status_code}"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def next_task(url: str, token: str, project_id: int) -> dict | None:
    """The labelling stream's next task for this user, or None when it has none left."""
    response = requests.get(
        f"{url}/api/projects/{project_id}/next", headers={"Authorization": f"Token {token}"}, timeout=30
    )
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text[:300]
    return response.json()


def test_three_raters_rate_every_segment_and_collect_returns_their_scores(
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
    rating_id = summary["project_id"]
    project = label_studio.api("GET", f"/api/projects/{rating_id}/").json()
    assert (project["maximum_annotations"], project["overlap_cohort_percentage"]) == (RATERS, 100)

    tasks = {task.id: task for task in admin.tasks.list(project=rating_id)}
    assert sorted(tasks) == sorted(summary["created_task_ids"])
    by_segment = {(task.data["source_task"], task.data["region"]): task for task in tasks.values()}
    assert sorted(by_segment) == sorted(expected_segments)  # one task per predicted segment with a text
    images: dict[int, np.ndarray] = {}
    for key, task in by_segment.items():
        text, brush = expected_segments[key]
        assert task.data["text"] == text and task.data["source_project"] == source.project_id
        stored = label_studio.api("GET", f"/api/tasks/{task.id}").json()
        assert stored["overlap"] == RATERS, "each task must ask for three distinct annotators"
        if key[0] not in images:
            images[key[0]] = fetch_image(label_studio, task.data["source_image"])
        source_pixels = images[key[0]]
        shown = fetch_image(label_studio, task.data["image"])
        height, width = source_pixels.shape[:2]
        assert shown.shape == (height, 2 * width + GAP, 3)
        np.testing.assert_array_equal(shown[:, :width], source_pixels)  # the input image, for reference
        # the region in its own colours, the rest dimmed, a black and white outline around it
        np.testing.assert_array_equal(shown[:, width + GAP :], reference_segmented(source_pixels, brush_inside(brush)))

    # running it again adds nothing
    assert plugin_main(["rate", "setup", "--project", str(source.project_id), "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (again["project_id"], again["created_task_ids"], again["existing_tasks"]) == (rating_id, [], len(tasks))

    # --- three raters, taking turns in the labelling stream ---------------------------
    whoami = label_studio.api("GET", "/api/current-user/whoami").json()
    raters = [(whoami["id"], admin_token)] + [sign_up_rater(url, admin_token) for _ in range(RATERS - 1)]
    rng = np.random.default_rng(7)
    submitted: dict[int, list[tuple[int, int, int]]] = defaultdict(list)  # task -> [(annotation id, rater, score)]
    active = list(range(RATERS))
    while active:
        for index in list(active):
            user_id, token = raters[index]
            task = next_task(url, token, rating_id)
            if task is None:
                active.remove(index)
                continue
            score = int(rng.integers(0, 4))
            created = LabelStudio(base_url=url, api_key=token).annotations.create(
                id=task["id"],
                result=[
                    {"from_name": "rating", "to_name": "image", "type": "choices", "value": {"choices": [str(score)]}}
                ],
                lead_time=1.0,
            )
            assert created.completed_by == user_id
            submitted[task["id"]].append((created.id, user_id, score))
    assert sorted(submitted) == sorted(tasks)
    for task_id, ratings in submitted.items():
        assert sorted(rater for _, rater, _ in ratings) == sorted(user for user, _ in raters), (
            f"task {task_id}: the stream must give each task to each of the three raters once"
        )
        assert label_studio.api("GET", f"/api/tasks/{task_id}").json()["is_labeled"] is True

    # --- rate collect --------------------------------------------------------------------
    out, report_path = tmp_path / "ratings.json", tmp_path / "report.json"
    status = plugin_main(
        ["rate", "collect", "--project", str(rating_id), "--out", str(out), "--report", str(report_path)]
    )
    assert status == 0, capsys.readouterr()
    records = json.loads(out.read_text())
    got = sorted((r["rating_task"], r["annotation"], int(r["rater"]), r["score"], r["batch"]) for r in records)
    want = sorted(
        (task_id, annotation_id, rater, score, batch)
        for task_id, ratings in submitted.items()
        for batch, (annotation_id, rater, score) in enumerate(sorted(ratings), start=1)
    )
    assert got == want
    for record in records:
        task = tasks[record["rating_task"]]
        assert (record["segment"], record["text"], record["label"]) == (task.data["region"], task.data["text"], None)

    # Table 2, computed here: per batch the share of labels at each score, then the mean.
    batches = [[score for (_, _, _, score, batch) in want if batch == b] for b in range(1, RATERS + 1)]
    expected = {s: sum(batch.count(s) / len(batch) for batch in batches) / len(batches) for s in range(4)}
    report = json.loads(report_path.read_text())
    assert report["distribution"]["fractions"] == pytest.approx({str(s): v for s, v in expected.items()})
    assert report["unrated_segments"] == [] and report["incomplete_segments"] == []
    assert sorted(map(int, report["raters"])) == sorted(user for user, _ in raters)
    printed = capsys.readouterr().out
    assert f"{len(records)} rating(s) of {len(tasks)} segment(s) by {RATERS} rater(s)" in printed
