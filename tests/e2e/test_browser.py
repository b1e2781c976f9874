"""What people see in Label Studio's editor, in headless chromium at 1400x900.

- the pre-annotations: free-text segments in distinct colours with their texts in the Regions list
  (``test-artifacts/browser-prelabels.png``);
- the rating protocol's raters: the first screen of a rating task, key 3 recording a 3
  (``test-artifacts/rating-rater-view.png``), and a second rater who does not see that score in
  their own batch project (``test-artifacts/rating-second-rater.png``). docs/images/ holds copies.

Debian's chromium (``scripts/install-browser.sh``) driven by Python playwright through
``executable_path`` (``playwright install`` is never run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from label_studio_sdk import LabelStudio

from tests.e2e.conftest import missing_prerequisite

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
TIMEOUT_MS = 60_000
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
PRELABELS_SCREENSHOT = DOCS_IMAGES / "label-studio-prelabels.png"
PALETTE_SIZE = 8  # label_config.xml's zero-guidance labels: segment, segment 2, ..., segment 8


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_prerequisite("Python playwright is not installed (it is in requirements-dev.txt)")
    if shutil.which(str(CHROMIUM)) is None:
        missing_prerequisite(f"{CHROMIUM} not found: run scripts/install-browser.sh (or set CHROMIUM)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def region_texts(result: list[dict]) -> dict[str, list[str]]:
    """``{region id: its per-region texts}`` for the brush regions of a result."""
    texts = {item["id"]: [] for item in result if item["type"] == "brushlabels"}
    for item in result:
        if item["type"] == "textarea" and item["id"] in texts:
            texts[item["id"]].extend(item["value"]["text"])
    return texts


def log_in(page, label_studio) -> None:
    """Log the page in as the server's admin, through the login form."""
    page.goto(f"{label_studio.url}/user/login/")
    page.fill("input[name=email]", label_studio.email)
    page.fill("input[name=password]", label_studio.password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/user/login" not in url)


def squashed(text: str) -> str:
    return " ".join(text.split())


def test_editor_shows_the_predicted_regions_and_their_text(browser, prelabelled, label_studio, artifacts_dir):
    project = prelabelled("legacy")
    task_id = project.task_ids[-1]  # the webhook test annotates the first task; this one has only predictions
    client = LabelStudio(base_url=label_studio.url, api_key=project.api_key)
    (prediction,) = client.predictions.list(task=task_id)
    texts = region_texts(prediction.result)
    assert texts, "the prediction has no brush region"

    started = time.monotonic()

    def step(name: str) -> None:  # printed with the test's output: where the time goes
        print(f"{time.monotonic() - started:6.1f} s  {name}")

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        log_in(page, label_studio)
        step("logged in")

        page.goto(f"{label_studio.url}/projects/{project.project_id}/data?task={task_id}")
        page.wait_for_selector("canvas")
        step("editor canvas shown")
        regions = page.locator(".lsf-tree__node_type_brushregion")  # the "Regions" panel
        regions.first.wait_for()
        assert regions.count() == len(texts)
        step(f"{regions.count()} regions listed")

        # The Regions list itself: free-text segments in distinct colours, each with its text
        # (label_config.xml: a palette of labels, the caption TextArea in displayMode="region-list").
        listed = [regions.nth(index).evaluate("""node => ({
                    label: node.querySelector('.lsf-labels-list')?.innerText.trim() ?? '',
                    colour: getComputedStyle(node).getPropertyValue('--icon-color').trim(),
                    texts: [...node.querySelectorAll('textarea')].map(area => area.value).filter(Boolean),
                })""") for index in range(regions.count())]
        step(f"Regions list: {listed}")
        shown_texts = sorted(text for item in listed for text in item["texts"])
        assert shown_texts == sorted(text for values in texts.values() for text in values)  # every text, in the list
        segments = [item for item in listed if item["texts"]]
        colours = [item["colour"] for item in segments]
        assert len(segments) >= 2 and len(set(colours)) == min(len(colours), PALETTE_SIZE), listed
        details = page.locator(".lsf-detailed-region").first  # "Info" panel of the selected region

        def selected_region(previous: str | None) -> tuple[str, str]:
            """(id, panel text) of the newly selected region, once the panel shows it."""
            deadline = time.monotonic() + 10
            while True:
                shown = squashed(details.inner_text()) if details.count() else ""
                ids = [rid for rid in texts if re.search(rf"(^|\s){re.escape(rid)}(\s|$)", shown)]
                if len(ids) == 1 and ids[0] != previous:
                    return ids[0], shown
                assert time.monotonic() < deadline, f"no newly selected region in the panel: {shown!r}"
                page.wait_for_timeout(100)

        checked, region_id = 0, None
        for index in range(regions.count()):  # class-mask regions have no text: find a free-text one
            regions.nth(index).click()
            region_id, shown = selected_region(region_id)
            step(f"selected region {index}: {shown!r}")
            for text in texts[region_id]:
                assert squashed(text) in shown, f"region {region_id}: text {text!r} not in {shown!r}"
                checked += 1
            if checked:
                break
        assert checked, "no predicted region with a text"
    finally:
        page.screenshot(path=str(artifacts_dir / "browser-prelabels.png"))
        step("screenshot saved")
        page.close()
    shutil.copyfile(artifacts_dir / "browser-prelabels.png", PRELABELS_SCREENSHOT)


DOCS_SCREENSHOT = DOCS_IMAGES / "label-studio-interactive.png"


def test_interactive_click_with_the_smart_keypoint_shows_the_mask_and_its_text(
    browser, interactive_project, label_studio, artifacts_dir
):
    """An annotator turns on Auto-Annotation, picks the smart keypoint tool and its label, clicks the
    disc: Label Studio asks our backend (interactive-annotating), the mask appears as a region of
    the nearest class, and selecting it shows its text. The screenshot goes to docs/."""
    project = interactive_project
    task_id = project.task_ids[-1]
    # only what the click brings: the editor does not show (or ask for) pre-labels in this project
    response = label_studio.api(
        "PATCH", f"/api/projects/{project.project_id}", token=project.api_key, json={"show_collab_predictions": False}
    )
    assert response.status_code == 200, response.text[:500]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        log_in(page, label_studio)
        page.goto(f"{label_studio.url}/projects/{project.project_id}/data?task={task_id}")
        page.wait_for_selector("canvas")
        auto_annotation = page.get_by_text("Auto-Annotation", exact=True)  # shown once the ML backends loaded
        auto_annotation.wait_for(state="visible")
        auto_annotation.click()
        assert page.locator("[data-testid=bottombar-auto-annotation-toggle]").is_checked()
        auto_accept = page.get_by_text("Auto-Accept Suggestions", exact=True)  # the mask becomes a region at once
        auto_accept.wait_for(state="visible")
        auto_accept.click()
        smart = page.locator(".lsf-tool_smart")
        smart.first.hover()  # the smart tools unfold
        page.locator(".lsf-tool_smart[aria-label=key-point-tool]").click()
        page.locator(".lsf-label", has_text="object").first.click()  # the KeyPointLabels' label (hotkey c)

        stage = page.locator("canvas").nth(1)  # the image's stage, 96x64 shown at its aspect
        stage.wait_for()
        before = stage.screenshot()
        box = stage.bounding_box()
        with page.expect_response(lambda r: "/interactive-annotating" in r.url) as answer:
            page.mouse.click(box["x"] + box["width"] * 0.37, box["y"] + box["height"] * 0.49)  # on the disc
        data = answer.value.json()
        assert "data" in data, data
        regions = [item for item in data["data"]["result"] if item["type"] == "brushlabels"]
        result = data["data"]["result"]
        texts = [text for item in result if item["type"] == "textarea" for text in item["value"]["text"]]
        assert len(regions) == 1 and texts, data
        label = regions[0]["value"]["brushlabels"][0]

        listed = page.locator(".lsf-tree__node_type_brushregion")
        listed.first.wait_for()
        assert listed.count() == 1
        assert label in squashed(listed.first.inner_text())
        deadline = time.monotonic() + 10
        while stage.screenshot() == before:  # the mask is drawn over the image
            assert time.monotonic() < deadline, "the mask never showed on the image"
            page.wait_for_timeout(100)
        listed.first.click()
        details = page.locator(".lsf-detailed-region").first
        details.wait_for()
        shown = squashed(details.inner_text())
        for text in texts:
            assert squashed(text) in shown, f"text {text!r} not in the selected region's panel {shown!r}"
    finally:
        page.screenshot(path=str(artifacts_dir / "browser-interactive.png"))
        page.close()
    shutil.copyfile(artifacts_dir / "browser-interactive.png", DOCS_SCREENSHOT)


# ------------------------------------------------------------------------------ the rater
VIEWPORT = {"width": 1400, "height": 900}


def login(browser, url: str, email: str, password: str):
    """A new 1400x900 page logged in as that user."""
    page = browser.new_page(viewport={"width": VIEWPORT["width"], "height": VIEWPORT["height"]})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{url}/user/login/")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda address: "/user/login" not in address)
    return page


def inside_viewport(box: dict | None) -> bool:
    """The element's box lies entirely in the first screen (no scrolling)."""
    return (
        box is not None
        and box["x"] >= 0
        and box["y"] >= 0
        and box["x"] + box["width"] <= VIEWPORT["width"]
        and box["y"] + box["height"] <= VIEWPORT["height"]
    )


def checked_choice(page) -> list[str]:
    """The texts of the rating choices whose radio button is checked."""
    checked = page.locator(".lsf-choice:has(input[type=radio]:checked)")
    return [squashed(checked.nth(index).inner_text()) for index in range(checked.count())]


def open_task(page, url: str, project_id: int, task_id: int) -> None:
    """Open a task from the Data Manager (what clicking its row does) and wait for the choices."""
    page.goto(f"{url}/projects/{project_id}/data?task={task_id}")
    page.locator(".lsf-choice").nth(3).wait_for()
    page.wait_for_timeout(1500)  # annotations load after the choices render


def test_rater_rates_with_key_3_on_one_screen_and_a_second_rater_sees_no_score(
    browser, prelabelled, label_studio, artifacts_dir, monkeypatch, capsys
):
    from plugin.cli import main as plugin_main
    from tests.e2e.test_rating import get, sign_up_rater

    source = prelabelled("legacy")
    url, admin_token = label_studio.url, source.api_key
    first, second = sign_up_rater(url, admin_token), sign_up_rater(url, admin_token)
    monkeypatch.setenv("LABEL_STUDIO_URL", url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", admin_token)
    setup = ["rate", "setup", "--project", str(source.project_id), "--raters", "2", "--json"]
    assert plugin_main([*setup, "--title", f"Browser rating {source.project_id}"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    first_project, second_project = summary["project_ids"]
    admin = LabelStudio(base_url=url, api_key=admin_token)
    segment_tasks = {
        project_id: {(t.data["source_task"], t.data["region"]): t for t in admin.tasks.list(project=project_id)}
        for project_id in summary["project_ids"]
    }
    texts = {task.data["text"] for task in segment_tasks[first_project].values()}

    started = time.monotonic()

    def step(name: str) -> None:
        print(f"{time.monotonic() - started:6.1f} s  {name}")

    # --- the first rater: "Label All Tasks" in their batch project ------------------------
    page = login(browser, url, first.email, first.password)
    try:
        page.goto(f"{url}/projects/{first_project}/data")
        page.get_by_text("Label All Tasks").first.click()
        choices = page.locator(".lsf-choice")
        choices.nth(3).wait_for()
        picture = page.locator("div.lsf-image").first  # the picture's element, sized to the loaded image
        picture.wait_for()
        page.wait_for_function("() => document.querySelector('div.lsf-image').getBoundingClientRect().height > 50")
        page.wait_for_timeout(1000)
        step("labelling stream open")
        assert page.get_by_text("Labeling Instructions").count() == 0, "no instruction modal"
        assert "You will be solving" in page.inner_text("body")

        # the first screen at 1400x900: the label, the four choices with their names, the picture
        shown = [text for text in texts if page.get_by_text(text, exact=True).count()]
        assert shown, f"none of the labels {sorted(texts)} is on the page"
        label = page.get_by_text(shown[0], exact=True).first
        assert inside_viewport(label.bounding_box()), label.bounding_box()
        assert choices.count() == 4
        for index, name in enumerate(("incorrect", "partially correct", "correct but too general/specific", "correct")):
            choice = choices.nth(index)
            assert squashed(choice.inner_text()).startswith(f"{index} · {name}")  # the name, not only on hover
            assert inside_viewport(choice.bounding_box()), (index, choice.bounding_box())
        assert inside_viewport(picture.bounding_box()), picture.bounding_box()  # both panels
        assert checked_choice(page) == []

        page.keyboard.press("3")
        (chosen,) = checked_choice(page)
        assert chosen.startswith("3 · correct")
        page.screenshot(path=str(artifacts_dir / "rating-rater-view.png"))
        step("key 3 chose '3 · correct'; screenshot saved")
        page.keyboard.press("Control+Enter")  # submit, as the instruction says
        deadline = time.monotonic() + 30
        annotations = []
        while time.monotonic() < deadline:
            annotations = [
                (task.id, annotation)
                for task in segment_tasks[first_project].values()
                for annotation in get(url, admin_token, f"/api/tasks/{task.id}/").json()["annotations"]
            ]
            if annotations:
                break
            page.wait_for_timeout(500)
        assert len(annotations) == 1, annotations
        rated_task, annotation = annotations[0]
        assert annotation["completed_by"]["id"] == first.id
        assert [item["value"]["choices"] for item in annotation["result"]] == [["3"]]  # key 3 recorded a 3
        step(f"task {rated_task}: the first rater's 3 stored")
    finally:
        page.close()

    segment = next(key for key, task in segment_tasks[first_project].items() if task.id == rated_task)
    counterpart = segment_tasks[second_project][segment].id  # the same segment in the second batch

    # --- the second rater, through the API -------------------------------------------------
    own_view = get(url, second.token, "/api/tasks/", project=second_project, fields="all", page_size=500).json()
    assert [a for task in own_view["tasks"] for a in task["annotations"]] == []
    assert get(url, second.token, f"/api/tasks/{counterpart}/").json()["annotations"] == []
    stream = get(url, second.token, f"/api/projects/{second_project}/next").json()
    assert stream["annotations"] == []
    # the community edition's limit (docs/label-studio.md, "Raters"): the first rater's project is
    # open to every member of the organisation, and with it the first rater's score
    other = get(url, second.token, f"/api/tasks/{rated_task}/").json()["annotations"]
    assert [(a["completed_by"]["id"], a["result"][0]["value"]["choices"]) for a in other] == [(first.id, ["3"])]

    # --- the second rater, through the UI ----------------------------------------------------
    page = login(browser, url, second.email, second.password)
    try:
        page.goto(f"{url}/projects/{second_project}/data")
        page.get_by_text("Submitted annotations: 0").wait_for()  # the Data Manager's footer
        open_task(page, url, second_project, counterpart)
        assert checked_choice(page) == [], "the second rater's task shows no score"
        page.screenshot(path=str(artifacts_dir / "rating-second-rater.png"))
        step("second rater: no score on the same segment in their project; screenshot saved")
        open_task(page, url, first_project, rated_task)  # the limit, in the UI
        assert [text[:11] for text in checked_choice(page)] == ["3 · correct"]
        step("second rater: the first rater's project shows its score (the documented limit)")
    finally:
        page.close()


WEB_UI_SCREENSHOTS = {
    "connect": DOCS_IMAGES / "label-studio-connect-model.png",
    "actions": DOCS_IMAGES / "label-studio-retrieve-predictions.png",
    "predicted": DOCS_IMAGES / "label-studio-predictions-listed.png",
}


def test_web_ui_path_connects_the_backend_and_retrieves_predictions(
    browser, label_studio, api_keys, backend_for, e2e_images, artifacts_dir
):
    """docs/label-studio.md "In the web UI": a project without a backend (``plugin setup
    --no-backend``), then by hand: Settings > Model > Connect Model (name, URL, interactive),
    Validate and Save; Data Manager: select all, the "N Tasks" menu, Retrieve Predictions, OK.
    Label Studio then holds a prediction of our backend for every task. The screenshots go to docs/."""
    from tests.e2e.conftest import LABEL_CONFIG, run_plugin

    backend = backend_for("legacy")
    made = run_plugin(
        ["setup", "--title", "e2e web ui", "--config", str(LABEL_CONFIG), "--no-backend"]
        + ["--images", str(e2e_images), "--json"],
        label_studio.url,
        api_keys["legacy"],
    )
    assert made.returncode == 0, made.stdout + made.stderr
    project_id = json.loads(made.stdout.strip().splitlines()[-1])["project_id"]
    client = LabelStudio(base_url=label_studio.url, api_key=api_keys["legacy"])
    task_ids = [task.id for task in client.tasks.list(project=project_id)]
    assert task_ids and not client.ml.list(project=project_id)

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    shots = {name: artifacts_dir / f"web-ui-{name}.png" for name in WEB_UI_SCREENSHOTS}
    try:
        log_in(page, label_studio)

        page.goto(f"{label_studio.url}/projects/{project_id}/settings/ml")  # Settings > Model
        page.locator("button", has_text="Connect Model").first.click()
        page.fill("input[name=title]", "zero-guidance + FMbSeg")
        page.fill("input[name=url]", backend.url)
        page.locator("input[name=is_interactive]").check(force=True)  # the smart tools' clicks
        page.screenshot(path=str(shots["connect"]))
        page.locator("button", has_text="Validate and Save").click()
        page.get_by_text("Connected", exact=True).first.wait_for()
        (record,) = client.ml.list(project=project_id)
        assert record.url.rstrip("/") == backend.url.rstrip("/") and record.is_interactive

        page.goto(f"{label_studio.url}/projects/{project_id}/data")  # the Data Manager
        page.locator("input[type=checkbox]").first.check(force=True)  # select all
        page.locator("button", has_text=f"{len(task_ids)} Tasks").first.click()
        page.get_by_text("Retrieve Predictions", exact=True).first.wait_for()
        page.screenshot(path=str(shots["actions"]))
        page.get_by_text("Retrieve Predictions", exact=True).first.click()
        page.locator("button", has_text="OK").click()

        deadline = time.monotonic() + 180
        while True:
            predicted = {prediction.task for prediction in client.predictions.list(project=project_id)}
            if predicted >= set(task_ids):
                break
            assert time.monotonic() < deadline, f"predictions for {sorted(predicted)} of {task_ids} after 180 s"
            time.sleep(2)
        for task_id in task_ids:
            (prediction,) = client.predictions.list(task=task_id)
            assert any(item["type"] == "brushlabels" for item in prediction.result), prediction.result
        page.reload()
        page.get_by_text(f"Predictions: {len(task_ids)}").first.wait_for()  # the Data Manager's footer
        page.screenshot(path=str(shots["predicted"]))
    finally:
        page.close()
    for name, target in WEB_UI_SCREENSHOTS.items():
        shutil.copyfile(shots[name], target)
