"""The pre-annotations as a person sees them: Label Studio's editor in headless chromium.

Debian's chromium (``scripts/install-browser.sh``) driven by Python playwright through
``executable_path`` (``playwright install`` is never run). The screenshot is saved to
``test-artifacts/browser-prelabels.png``.
"""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_prerequisite("Python playwright is not installed (it is in requirements.txt)")
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
        page.goto(f"{label_studio.url}/user/login/")
        page.fill("input[name=email]", label_studio.email)
        page.fill("input[name=password]", label_studio.password)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/user/login" not in url)
        step("logged in")

        page.goto(f"{label_studio.url}/projects/{project.project_id}/data?task={task_id}")
        page.wait_for_selector("canvas")
        step("editor canvas shown")
        regions = page.locator(".lsf-tree__node_type_brushregion")  # the "Regions" panel
        regions.first.wait_for()
        assert regions.count() == len(texts)
        step(f"{regions.count()} regions listed")

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


DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "label-studio-interactive.png"


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
        page.goto(f"{label_studio.url}/user/login/")
        page.fill("input[name=email]", label_studio.email)
        page.fill("input[name=password]", label_studio.password)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/user/login" not in url)
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
