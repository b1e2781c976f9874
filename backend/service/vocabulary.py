"""The class vocabulary of a class-mask tag: which labels FMbSeg predicts, and with which prompts.

Built once from the label config, by :class:`ClassVocabulary.from_control`, and used by both the
class-mask adapters (serving) and retraining (``backend.service.retraining``), which receives the
adapters' :class:`ClassMaskTag` records: training and serving see the same classes and settings.

Rules, in label order:

* a label's prompt is its ``model_prompt`` attribute, else the first of its ``predicted_values``,
  else the label value itself;
* a label with ``model_skip="true"`` is left out;
* a label whose prompt is empty, longer than :data:`MAX_PROMPT_CHARS`, or already used by an
  earlier label is *unsupported*: reported with the reason, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..fmbseg.settings import FMbSegSettings
from .config import parse_bool

__all__ = ["MAX_PROMPT_CHARS", "ClassMaskTag", "ClassVocabulary", "label_prompt"]

MAX_PROMPT_CHARS = 300


def label_prompt(label: str, attributes: Mapping[str, str]) -> str:
    """The text FMbSeg is asked to segment for ``label``."""
    prompt = attributes.get("model_prompt")
    if prompt is None and attributes.get("predicted_values"):
        prompt = str(attributes["predicted_values"]).split(",")[0]
    return str(label if prompt is None else prompt).strip()


def _skipped(label: str, attributes: Mapping[str, str]) -> bool:
    raw = attributes.get("model_skip")
    if raw is None or str(raw).strip() == "":
        return False
    return parse_bool(str(raw), f'<Label value="{label}" model_skip=...>')


@dataclass(frozen=True)
class ClassVocabulary:
    """A tag's labels as FMbSeg classes.

    Attributes:
        prompt_to_label: the prompts FMbSeg is asked for, in label order, and the label each
            stands for.
        unsupported: labels that are not predicted, with the reason.
    """

    prompt_to_label: Mapping[str, str]
    unsupported: Mapping[str, str] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        """The prompts, in label order (FMbSeg's class list)."""
        return list(self.prompt_to_label)

    @property
    def label_to_prompt(self) -> dict[str, str]:
        return {label: prompt for prompt, label in self.prompt_to_label.items()}

    @classmethod
    def from_labels(cls, labels: Mapping[str, Mapping[str, str]]) -> "ClassVocabulary":
        """From ``{label: its <Label> attributes}`` in label order.

        Raises:
            ValueError: a ``model_skip`` that is not a boolean.
        """
        prompt_to_label: dict[str, str] = {}
        unsupported: dict[str, str] = {}
        for label, attributes in labels.items():
            if _skipped(label, attributes):
                continue
            prompt = label_prompt(label, attributes)
            if not prompt:
                unsupported[label] = "its prompt is empty"
            elif len(prompt) > MAX_PROMPT_CHARS:
                unsupported[label] = f"its prompt is longer than {MAX_PROMPT_CHARS} characters"
            elif prompt in prompt_to_label:
                unsupported[label] = f'its prompt "{prompt}" is already used by label "{prompt_to_label[prompt]}"'
            else:
                prompt_to_label[prompt] = label
        return cls(prompt_to_label, unsupported)


@dataclass(frozen=True)
class ClassMaskTag:
    """What serving a class-mask tag resolved, handed to retraining as is.

    Attributes:
        from_name: the BrushLabels/PolygonLabels tag's name.
        image_key: the task data field of its image (``image`` for ``value="$image"``).
        vocabulary: its classes.
        settings: the FMbSeg settings in force for it (paper < preset < operator < project).
    """

    from_name: str
    image_key: str
    vocabulary: ClassVocabulary
    settings: FMbSegSettings
