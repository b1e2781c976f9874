"""FMbSeg on a BrushLabels / PolygonLabels tag: masks for exactly the tag's labels.

The tag's ``<Label>`` values are the vocabulary. A label's text prompt is its ``model_prompt``
attribute (or the first of its ``predicted_values``), else the label value itself; a label with
``model_skip="true"`` is not predicted. Labels the model cannot handle (an empty prompt, a prompt
shared by two labels, a class the predictor does not return) are *reported*: logged, listed in
the ``/predict`` reply's ``warnings`` and counted in ``/metrics`` — never silently dropped.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..images import LoadedImage
from ..runtime import settings_key, trained_classes
from .base import CLASSES, BrushShape, ControlAdapter, LabelConfigError, PolygonShape, TagOptions, clip_score

logger = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 300


def label_prompt(label: str, attributes: dict) -> str:
    """The text FMbSeg is asked to segment for ``label``."""
    prompt = attributes.get("model_prompt")
    if prompt is None and attributes.get("predicted_values"):
        prompt = str(attributes["predicted_values"]).split(",")[0]
    return str(label if prompt is None else prompt).strip()


class _ClassMaskAdapter(ControlAdapter):
    mode = CLASSES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refine = self.options.flag("model_refine", self.config.fmbseg_refine)
        self.open_vocabulary = self.options.flag("model_open_vocabulary", self.config.fmbseg_open_vocabulary)
        self.settings_overrides = self.options.settings("model_settings", self.config.fmbseg_settings)
        self.prompt_to_label: dict[str, str] = {}
        self.unsupported: dict[str, str] = {}  # label -> reason
        labels_attrs = self.control.labels_attrs or {}
        for label in self.control.labels or []:
            attributes = dict(getattr(labels_attrs.get(label), "attr", None) or {})
            if TagOptions(_LabelView(label, attributes), self.config).flag("model_skip", False):
                continue
            prompt = label_prompt(label, attributes)
            if not prompt:
                self._report(label, "its prompt is empty")
            elif len(prompt) > MAX_PROMPT_CHARS:
                self._report(label, f"its prompt is longer than {MAX_PROMPT_CHARS} characters")
            elif prompt in self.prompt_to_label:
                self._report(label, f'its prompt "{prompt}" is already used by label "{self.prompt_to_label[prompt]}"')
            else:
                self.prompt_to_label[prompt] = label
        if not self.prompt_to_label:
            raise LabelConfigError(
                f'<{self.tag} name="{self.from_name}"> has no label FMbSeg can segment; add labels such as '
                '<Label value="cat"/> <Label value="sky"/>, or model_skip="true" to leave the tag alone'
            )

    def _report(self, label: str, reason: str) -> None:
        if label not in self.unsupported:
            self.unsupported[label] = reason
            message = f'<{self.tag} name="{self.from_name}">: label "{label}" is not predicted: {reason}'
            self.problems.append(message)
            logger.warning(message)

    @property
    def classes(self) -> list[str]:
        """The prompts sent to FMbSeg, in label order."""
        return list(self.prompt_to_label)

    def version_inputs(self) -> dict[str, Any]:
        return {
            **super().version_inputs(),
            "method": CLASSES,
            "classes": self.prompt_to_label,
            "refine": self.refine,
            "open_vocabulary": self.open_vocabulary,
            "settings": self.settings_overrides,
        }

    def predict_regions(self, image: LoadedImage, cache: dict) -> list[dict]:
        predictor = self.runtime.fmbseg(self.settings_overrides)
        classes, options = self._vocabulary(predictor)
        key = (
            "fmbseg",
            image.source,
            tuple(classes),
            repr(sorted(options.items())),
            settings_key(self.settings_overrides),
        )
        if key not in cache:
            with self.runtime.inference_lock:
                cache[key] = predictor.predict(image.pixels, classes=classes, **options)
        output = cache[key]
        class_masks = dict(getattr(output, "class_masks", None) or {})
        class_scores = dict(getattr(output, "class_scores", None) or {})
        returned = list(getattr(output, "classes", None) or class_masks)
        results: list[dict] = []
        for prompt, label in self.prompt_to_label.items():
            if prompt not in returned:
                self._report(label, "the model returned no prediction for it")
                continue
            mask = class_masks.get(prompt)
            if mask is None:
                mask = np.asarray(output.label_map) == returned.index(prompt)
            mask = image.mask_to_original(np.asarray(mask))
            if not mask.any() or int(mask.sum()) < self.min_area:
                continue
            score = clip_score(class_scores.get(prompt))
            if score is not None and score < self.score_threshold:
                continue
            results.extend(self.shape_results(image, mask, label, score))
        return results

    def _vocabulary(self, predictor: Any) -> tuple[list[str], dict[str, Any]]:
        """The class list to ask for and the keyword options of ``predict``.

        Without an alignment checkpoint (Stage 1) or with ``model_open_vocabulary``, the tag's
        prompts. With a checkpoint, the classes it was trained for (FMbSeg's closed setting):
        the tag's labels among them are predicted, the others reported.
        """
        options: dict[str, Any] = {}
        if self.refine is not None:
            options["refine"] = self.refine
        trained = trained_classes(predictor)
        if trained is None:
            return self.classes, options
        if self.open_vocabulary:
            return self.classes, {**options, "open_vocabulary": True}
        for prompt, label in self.prompt_to_label.items():
            if prompt not in trained:
                self._report(
                    label,
                    f"the alignment checkpoint was trained for {sorted(trained)}: retrain with this label, "
                    'or set model_open_vocabulary="true" to predict it zero-shot',
                )
        return list(trained), options


class _LabelView:
    """Just enough of a tag for :class:`TagOptions` to read a ``<Label>``'s attributes."""

    def __init__(self, label: str, attributes: dict) -> None:
        self.tag = "Label"
        self.name = label
        self.attr = attributes


class ClassBrushAdapter(BrushShape, _ClassMaskAdapter):
    """``<BrushLabels>`` with class labels: one brush region per predicted class."""

    tag = "BrushLabels"


class ClassPolygonAdapter(PolygonShape, _ClassMaskAdapter):
    """``<PolygonLabels>`` with class labels: one polygon region per connected component."""

    tag = "PolygonLabels"
