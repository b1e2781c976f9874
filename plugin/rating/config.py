"""The rating project's label config (appendix F, Fig. 21) and the names it shares with task data."""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ElementTree

from label_studio_sdk.label_interface import LabelInterface

from backend.evaluation.rating import RATING_SCALE, RatingLevel

# Names in the rating project's label config (and so in its task data and results).
IMAGE_KEY = "image"  # <Image value="$image">: the rendered input | segmented PNG
TEXT_KEY = "text"  # <Header value="$text">: the predicted text
RATING_CONTROL = "rating"  # <Choices name="rating">: the 0-3 score
# Task data keys that link a rating task back to its segment.
LINK_KEYS = ("source_project", "source_task", "region")
# Task data keys of a rater batch's project: which batch (1..N) and how many batches.
BATCH_KEY, BATCHES_KEY = "rater_batch", "rater_batches"
SCORES = tuple(level.score for level in RATING_SCALE)

# Label Studio's editor (1.23; web/libs/editor: `setupHotKeys` in stores/Annotation/Annotation.js,
# `makeComb` in core/Hotkey.ts) first binds every explicit ``hotkey`` attribute, then gives each
# Label and Choice without one, in document order, the first key of "1234567890qwetasdfgzxcvbyiopjklnm"
# not bound yet. Without explicit hotkeys the choices 0, 1, 2, 3 got the keys 1, 2, 3, 4, so pressing
# "3" chose 2. Each score's choice therefore carries its own digit as hotkey.

# Appendix F's definitions point at example pictures "(A)" to "(E)" of the paper's Fig. 21,
# which the rating project does not show: the references are left out of what raters read.
_EXAMPLE_REFERENCE = re.compile(r"\s*\([A-E]\)")


def shown_definition(level: RatingLevel) -> str:
    """The level's appendix F definition without the references to the paper's example pictures."""
    return _EXAMPLE_REFERENCE.sub("", level.definition)


def rating_instruction(tasks: int) -> str:
    """The instruction (after Fig. 21's), with the number of tasks of this rater's project.

    Fig. 21's "You will be solving 30 independent questions" was one MTurk page; the highlight
    is described as `plugin.rating.render` draws it.
    """
    questions = f"{tasks} independent question{'s' if tasks != 1 else ''}"
    return (
        f"You will be solving {questions}, one per task. Each shows 1) an input image (only for reference), "
        "2) the same image with one region highlighted: the region in its own colours, the rest dimmed, "
        "a black and white outline around it, and 3) a text label. Rate how well the label describes the "
        "highlighted region on a scale of 0-3; please ignore typos. Keys 0-3 choose a score; submit with "
        "Ctrl+Enter."
    )


def _choice_html(level: RatingLevel) -> str:
    """What a choice shows: ``<digit> · <name>`` in bold and, below it, the definition."""
    return (
        f"<b>{level.score} · {html.escape(level.name)}</b>"
        f'<br/><span style="font-size: 12px; line-height: 1.3">{html.escape(shown_definition(level))}</span>'
    )


def rating_label_config(tasks: int) -> str:
    """The rating project's label config (Fig. 21 as Label Studio tags), for a project of ``tasks`` tasks.

    One screen: the instruction (`rating_instruction`) on top; below it, side by side, the
    rendered image and a column with the predicted text and ``<Choices name="rating">``, one radio
    button per score, 0 to 3 (Fig. 21's radio buttons, "Incorrect ← → Correct"). Each choice's stored
    value and hotkey are the score's digit; it shows "<digit> · <name>" and the definition
    (`shown_definition`) as text, and its ``hint`` (tooltip) repeats them. A rating is required.
    """
    if tasks < 1:
        raise ValueError(f"a rating project has at least one task, got {tasks}")
    view = ElementTree.Element("View", style="display: flex; flex-direction: column; gap: 8px")

    ElementTree.SubElement(
        view,
        "Header",
        value=rating_instruction(tasks),
        size="6",
        style="font-weight: normal; line-height: 1.4; max-width: 1100px",
    )
    row = ElementTree.SubElement(view, "View", style="display: flex; gap: 24px; align-items: flex-start")
    picture = ElementTree.SubElement(row, "View", style="flex: 1 1 auto; min-width: 0")
    ElementTree.SubElement(
        picture,
        "Header",
        value="Left: input image (only for reference). Right: the highlighted region.",
        size="6",
        style="font-weight: normal",
    )
    ElementTree.SubElement(picture, "Image", name=IMAGE_KEY, value=f"${IMAGE_KEY}", zoom="true", zoomControl="true")
    answer = ElementTree.SubElement(row, "View", style="flex: 0 0 360px")
    ElementTree.SubElement(answer, "Header", value="Label:", size="6", style="margin-bottom: 0")
    ElementTree.SubElement(answer, "Header", value=f"${TEXT_KEY}", size="3", style="margin-top: 0")
    choices = ElementTree.SubElement(
        answer,
        "Choices",
        name=RATING_CONTROL,
        toName=IMAGE_KEY,
        choice="single-radio",
        layout="vertical",
        required="true",
        requiredMessage="Choose a score from 0 to 3 (keys 0-3).",
    )
    for level in sorted(RATING_SCALE, key=lambda level: level.score):
        ElementTree.SubElement(
            choices,
            "Choice",
            value=str(level.score),  # the stored result: `score_of` and backend.evaluation read int(value)
            hotkey=str(level.score),
            html=_choice_html(level),  # shown instead of the value, not stored
            hint=f"{level.score} · {level.name}: {shown_definition(level)}",
        )
    ElementTree.indent(view)
    return ElementTree.tostring(view, encoding="unicode")


def rating_instruction_html(tasks: int) -> str:
    """The project's instruction page (Label Studio's "Instructions" button while labelling)."""
    items = "".join(
        f"<li><b>{level.score} · {html.escape(level.name)}</b>: {html.escape(shown_definition(level))}</li>"
        for level in sorted(RATING_SCALE, key=lambda level: -level.score)
    )
    return f"<p>{html.escape(rating_instruction(tasks))}</p><ul>{items}</ul>"


def configured_tasks(label_config: str) -> int | None:
    """The number of tasks a rating config's instruction states, or None when it states none."""
    match = re.search(r"You will be solving (\d+) independent question", label_config)
    return int(match[1]) if match else None


def is_rating_config(label_config: str) -> bool:
    """True for a rating project's config: ``<Image name="image" value="$image">`` and, as its only
    control, a whole-task (not per-region) ``<Choices name="rating">`` on that image."""
    try:
        interface = LabelInterface(label_config)
    except Exception:  # lxml / the SDK raise several types for bad XML
        return False
    images = [tag for tag in interface.objects if tag.tag == "Image"]
    controls = list(interface.controls)
    return (
        len(images) == 1
        and (images[0].name, images[0].value) == (IMAGE_KEY, f"${IMAGE_KEY}")
        and len(controls) == 1
        and (controls[0].tag, controls[0].name) == ("Choices", RATING_CONTROL)
        and controls[0].attr.get("perRegion", "false").lower() != "true"
    )
