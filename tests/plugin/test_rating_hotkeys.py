"""Keys 0-3 record the scores 0-3 in both rating configs: the rating project's and label_config.xml.

Label Studio's editor (web/libs/editor: `setupHotKeys` in stores/Annotation/Annotation.js,
`makeComb` in core/Hotkey.ts) binds the explicit ``hotkey`` attributes first, then gives each
Label and Choice without one, in document order, the first unbound key of ``AUTO_KEYS``. Without
explicit hotkeys the choices 0-3 of the rating project got the keys 1-4.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from backend.evaluation.rating import RATING_SCALE
from plugin.rating.config import RATING_CONTROL, rating_label_config, shown_definition

REPO = Path(__file__).resolve().parents[2]
AUTO_KEYS = "1234567890qwetasdfgzxcvbyiopjklnm"  # Hotkey.ts `makeComb`
SCORE_KEYS = {"0", "1", "2", "3"}

CONFIGS = {
    "rating project": lambda: rating_label_config(16),
    "label_config.xml": lambda: (REPO / "label_config.xml").read_text(encoding="utf-8"),
}


@pytest.fixture(params=sorted(CONFIGS))
def config(request) -> ElementTree.Element:
    return ElementTree.fromstring(CONFIGS[request.param]())


def rating_choices(root: ElementTree.Element) -> ElementTree.Element:
    (choices,) = [tag for tag in root.iter("Choices") if tag.get("name") == RATING_CONTROL]
    return choices


def effective_hotkeys(root: ElementTree.Element) -> dict[str, ElementTree.Element]:
    """``{key: tag}`` as Label Studio binds them: explicit hotkeys, then automatic ones in document order."""
    tags = [tag for tag in root.iter() if tag.tag in ("Label", "Choice")]
    bound = {tag.get("hotkey"): tag for tag in root.iter() if tag.get("hotkey")}
    for tag in tags:
        if not tag.get("hotkey"):
            key = next(key for key in AUTO_KEYS if key not in bound)
            bound[key] = tag
    return bound


def test_rating_choices_are_radio_buttons_with_the_digit_as_value_and_hotkey(config):
    choices = rating_choices(config)
    assert choices.get("choice") == "single-radio"  # "single" renders checkboxes
    values = [choice.get("value") for choice in choices.iter("Choice")]
    assert values == ["0", "1", "2", "3"]
    for choice in choices.iter("Choice"):
        assert choice.get("hotkey") == choice.get("value")
        assert choice.get("alias") is None  # an alias would replace the stored value


def shown_text(choice: ElementTree.Element) -> str:
    """The text a choice shows: its ``html`` without tags (Label Studio renders the html)."""
    return re.sub(r"<[^>]+>", " ", choice.get("html", "")).strip()


def test_rating_choices_show_their_digit_and_name(config):
    for choice in rating_choices(config).iter("Choice"):
        digit = choice.get("value")
        assert shown_text(choice).startswith(f"{digit} · ")


def test_rating_project_choices_show_the_scale_names_and_definitions():
    choices = rating_choices(ElementTree.fromstring(rating_label_config(16)))
    shown = [" ".join(shown_text(choice).split()) for choice in choices.iter("Choice")]
    assert shown == [f"{level.score} · {level.name} {shown_definition(level)}" for level in RATING_SCALE]


def test_no_other_tag_has_an_explicit_score_key(config):
    rating = set(rating_choices(config).iter("Choice"))
    others = [tag for tag in config.iter() if tag not in rating and tag.get("hotkey")]
    assert [tag.get("hotkey") for tag in others if tag.get("hotkey").lower() in SCORE_KEYS] == []


def test_keys_0_to_3_choose_the_scores_0_to_3_after_automatic_assignment(config):
    bound = effective_hotkeys(config)
    assert {key: bound[key].get("value") for key in sorted(SCORE_KEYS)} == {key: key for key in sorted(SCORE_KEYS)}
    assert all(bound[key] in set(rating_choices(config).iter("Choice")) for key in SCORE_KEYS)


def test_automatic_assignment_model_reproduces_the_defect():
    """Without explicit hotkeys the model gives the choices 0-3 the keys 1-4, as Label Studio did."""
    root = ElementTree.fromstring(rating_label_config(16))
    for choice in root.iter("Choice"):
        choice.attrib.pop("hotkey", None)
    bound = effective_hotkeys(root)
    assert {key: bound[key].get("value") for key in "1234"} == {"1": "0", "2": "1", "3": "2", "4": "3"}
