"""The rating project's label config (appendix F, Fig. 21) and the names it shares with task data."""

from __future__ import annotations

import html
import xml.etree.ElementTree as ElementTree

from label_studio_sdk.label_interface import LabelInterface

from backend.evaluation.rating import RATING_INSTRUCTION, RATING_SCALE

# Names in the rating project's label config (and so in its task data and results).
IMAGE_KEY = "image"  # <Image value="$image">: the rendered input | segmented PNG
TEXT_KEY = "text"  # <Header value="$text">: the predicted text
RATING_CONTROL = "rating"  # <Choices name="rating">: the 0-3 score
# Task data keys that link a rating task back to its segment.
LINK_KEYS = ("source_project", "source_task", "region")
SCORES = tuple(level.score for level in RATING_SCALE)

# Label Studio's editor (1.23; web/libs/editor: `setupHotKeys` in stores/Annotation/Annotation.js,
# `makeComb` in core/Hotkey.ts) first binds every explicit ``hotkey`` attribute, then gives each
# Label and Choice without one, in document order, the first key of "1234567890qwetasdfgzxcvbyiopjklnm"
# not bound yet. Without explicit hotkeys the choices 0, 1, 2, 3 got the keys 1, 2, 3, 4, so pressing
# "3" chose 2. Each score's choice therefore carries its own digit as hotkey.


def rating_label_config() -> str:
    """The rating project's label config (Fig. 21 as Label Studio tags).

    Instruction, score definitions (visible, highest first as in Fig. 21), the rendered image,
    the predicted text, and ``<Choices name="rating">`` with one radio button per score: stored
    value and hotkey the score's digit, shown as "<digit> · <name>", ``hint`` (tooltip) the name and
    appendix F definition. A rating is required.
    """
    view = ElementTree.Element("View")

    def header(parent: ElementTree.Element, value: str, size: int) -> None:
        ElementTree.SubElement(parent, "Header", value=value, size=str(size))

    header(view, "Rate how well the label describes the highlighted region", 4)
    header(view, RATING_INSTRUCTION, 6)
    definitions = ElementTree.SubElement(view, "View")
    for level in sorted(RATING_SCALE, key=lambda level: -level.score):
        header(definitions, f"Score {level.score} ({level.name}): {level.definition}", 6)
    header(view, "Left: input image (only for reference). Right: the same image with the region highlighted.", 6)
    ElementTree.SubElement(view, "Image", name=IMAGE_KEY, value=f"${IMAGE_KEY}", zoom="true", zoomControl="true")
    header(view, "Label:", 5)
    header(view, f"${TEXT_KEY}", 3)
    header(view, "Incorrect ← → Correct", 6)
    choices = ElementTree.SubElement(
        view,
        "Choices",
        name=RATING_CONTROL,
        toName=IMAGE_KEY,
        choice="single-radio",
        showInline="true",
        required="true",
    )
    for level in RATING_SCALE:
        ElementTree.SubElement(
            choices,
            "Choice",
            value=str(level.score),  # the stored result: `score_of` and backend.evaluation read int(value)
            hotkey=str(level.score),
            html=f"{level.score} · {html.escape(level.name)}",  # shown instead of the value, not stored
            hint=f"{level.name}: {level.definition}",
        )
    ElementTree.indent(view)
    return ElementTree.tostring(view, encoding="unicode")


def rating_instruction_html() -> str:
    """The project's instruction page (shown before labelling): Fig. 21's text and definitions."""
    items = "".join(
        f"<li><b>Score {level.score} ({html.escape(level.name)})</b>: {html.escape(level.definition)}</li>"
        for level in sorted(RATING_SCALE, key=lambda level: -level.score)
    )
    return f"<p>{html.escape(RATING_INSTRUCTION)}</p><ul>{items}</ul>"


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
