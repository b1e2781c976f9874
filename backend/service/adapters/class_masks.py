"""FMbSeg on a BrushLabels / PolygonLabels tag: masks for exactly the tag's labels.

The tag's ``<Label>`` values are the vocabulary (:class:`~backend.service.vocabulary.ClassVocabulary`:
prompts, ``model_skip``, duplicates; retraining uses the same one). Labels the model cannot handle
(an empty prompt, a prompt shared by two labels, a class the predictor does not return) are
*reported*: logged, listed in the ``/predict`` reply's ``warnings`` and counted in ``/metrics`` —
never silently dropped. FMbSeg gives a label map, not a confidence: class-mask regions carry no
score (``model_score_threshold`` applies to zero-guidance segments).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ...fmbseg.results import ClassMaskPrediction
from ..images import LoadedImage
from ..method_settings import PROJECT_SETTINGS_ATTRIBUTE, fmbseg_settings
from ..vocabulary import ClassMaskTag, ClassVocabulary
from .base import CLASSES, BoxShape, BrushShape, ControlAdapter, LabelConfigError, PolygonShape, label_attributes

logger = logging.getLogger(__name__)


STAGE1_AGREEMENT = "stage1_agreement"  # key of a task's prediction cache: FMbSeg Stage 1 vs 2 agreement


class ClassMaskAdapter(ControlAdapter):
    mode = CLASSES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refine = self.options.flag("model_refine", self.config.fmbseg_refine)
        self.open_vocabulary = self.options.flag("model_open_vocabulary", self.config.fmbseg_open_vocabulary)
        self.settings = self.options.project_settings(
            PROJECT_SETTINGS_ATTRIBUTE, lambda project, where: fmbseg_settings(self.config, project, where)
        )
        try:
            self.vocabulary = ClassVocabulary.from_labels(
                {label: label_attributes(self.control, label) for label in self.control.labels or []}
            )
        except ValueError as error:
            raise LabelConfigError(str(error)) from None
        self.unsupported: dict[str, str] = {}  # label -> reason
        for label, reason in self.vocabulary.unsupported.items():
            self._report(label, reason)
        if not self.vocabulary.prompt_to_label:
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
    def prompt_to_label(self) -> dict[str, str]:
        return dict(self.vocabulary.prompt_to_label)

    @property
    def classes(self) -> list[str]:
        """The prompts sent to FMbSeg, in label order."""
        return self.vocabulary.classes

    def training_tag(self) -> ClassMaskTag:
        """What retraining needs to train the module this tag serves with."""
        return ClassMaskTag(self.from_name, self.image_key, self.vocabulary, self.settings)

    def version_inputs(self) -> dict[str, Any]:
        return {
            **super().version_inputs(),
            "method": CLASSES,
            "classes": self.prompt_to_label,
            "refine": self.refine,
            "open_vocabulary": self.open_vocabulary,
            "settings": self.settings.to_dict(),
        }

    def predict_regions(self, image: LoadedImage, cache: dict) -> list[dict]:
        predictor = self.runtime.fmbseg(self.settings, self.project)
        trained = predictor.trained_classes()
        trained_module = trained is not None
        classes, open_vocabulary = self._vocabulary(trained)
        # INFORMATIVENESS_STAGE1: with a trained module, Stage 1 too (its agreement scores the task)
        extra = {"stage1_agreement": True} if self.config.informativeness_stage1 and trained_module else {}
        key = (CLASSES, image.source, tuple(classes), self.refine, open_vocabulary, self.settings.fingerprint())
        if key not in cache:
            with self.runtime.inference_lock:
                cache[key] = predictor.predict(
                    image.pixels, classes=classes, refine=self.refine, open_vocabulary=open_vocabulary, **extra
                )
        output: ClassMaskPrediction = cache[key]
        if output.stage1_agreement is not None:
            cache[STAGE1_AGREEMENT] = output.stage1_agreement
        class_masks = output.class_masks
        results: list[dict] = []
        for prompt, label in self.vocabulary.prompt_to_label.items():
            if prompt not in output.classes:
                self._report(label, "the model returned no prediction for it")
                continue
            mask = class_masks.get(prompt)
            if mask is None:
                continue
            mask = image.mask_to_original(np.asarray(mask))
            if not mask.any() or int(mask.sum()) < self.min_area:
                continue
            # largest first (polygons: one region a connected component), at most the label's cap
            results.extend(self.shape_results(image, mask, label, score=None)[: self.label_options[label].max_regions])
        return results

    def _vocabulary(self, trained: list[str] | None) -> tuple[list[str], bool]:
        """The class list to ask for, and whether to predict it open-vocabulary.

        Without an alignment checkpoint (Stage 1) or with ``model_open_vocabulary``, the tag's
        prompts. With a checkpoint, the classes it was trained for (FMbSeg's closed setting):
        the tag's labels among them are predicted, the others reported.
        """
        if trained is None:
            return self.classes, False
        if self.open_vocabulary:
            return self.classes, True
        for prompt, label in self.vocabulary.prompt_to_label.items():
            if prompt not in trained:
                self._report(
                    label,
                    f"the alignment checkpoint was trained for {sorted(trained)}: retrain with this label, "
                    'or set model_open_vocabulary="true" to predict it zero-shot',
                )
        return list(trained), False


class ClassBrushAdapter(BrushShape, ClassMaskAdapter):
    """``<BrushLabels>`` with class labels: one brush region per predicted class."""

    tag = "BrushLabels"


class ClassPolygonAdapter(PolygonShape, ClassMaskAdapter):
    """``<PolygonLabels>`` with class labels: one polygon region per connected component."""

    tag = "PolygonLabels"


class ClassBoxAdapter(BoxShape, ClassMaskAdapter):
    """``<RectangleLabels>`` with class labels: a box per connected component of each class mask
    (the FMbSeg call is shared with a mask tag of the same labels and settings)."""

    tag = "RectangleLabels"
