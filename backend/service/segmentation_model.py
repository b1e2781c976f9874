"""The service's model class: the label config decides what is predicted, adapters do the work.

:class:`SegmentationMLBackend` detects one adapter per supported control tag, fetches each task's
image once, lets every adapter add its regions, validates the result with label-studio-sdk's
``LabelInterface`` (Label Studio 1.23 rejects a whole batch when one prediction is invalid) and
isolates failures: a task that fails gets an empty prediction and a logged error, never a failed
batch.

With Label Studio's interactive context (a smart tool's clicks or box), ``/predict`` answers one
task with one region instead: :meth:`SegmentationMLBackend.predict_interactive`
(:mod:`backend.service.interactive`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any, Callable

from .. import __version__
from .adapters import (
    CLASSES,
    ZERO_GUIDANCE,
    ClassMaskAdapter,
    ControlAdapter,
    LabelConfigError,
    detect_adapters,
    no_adapter_message,
)
from .adapters.class_masks import STAGE1_AGREEMENT
from .config import ServiceConfig
from .images import ImageFetcher, ImageFetchError
from .informativeness import disagreement
from .regions import regions_from_results
from .interactive import (
    InteractiveContext,
    InteractiveContextError,
    check_smart_tools,
    choose_target,
    click_settings_for,
    parse_context,
    text_result,
)
from .method_settings import zero_guidance_settings
from .ml_base import MLBackendBase, ModelResponse
from .runtime import ModelsNotReady, Runtime, project_number
from .training import TrainingCoordinator

logger = logging.getLogger(__name__)


def short_hash(payload: Any) -> str:
    """First 8 hex digits of the SHA-1 of ``payload``'s canonical JSON."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


BRUSH_TYPES = ("brushlabels", "brush")
_RLE_PLACEHOLDER = [0, 1]  # passes both label-studio-sdk RLE checks; the real RLE is checked by rle_problem


def rle_problem(result: dict) -> str | None:
    """Why a brush result's RLE would not decode in Label Studio, or ``None`` (other types: ``None``).

    The RLE is a byte stream whose first 32 bits hold the number of RGBA values, which must be
    ``original_width * original_height * 4``.
    """
    if result.get("type") not in BRUSH_TYPES:
        return None
    rle = (result.get("value") or {}).get("rle")
    if not isinstance(rle, list) or len(rle) < 4 or not all(isinstance(v, int) and 0 <= v <= 255 for v in rle):
        return "brush RLE must be a list of at least 4 bytes (0-255)"
    declared = int.from_bytes(bytes(rle[:4]), "big")
    expected = int(result.get("original_width", 0)) * int(result.get("original_height", 0)) * 4
    if declared != expected:
        return f"brush RLE holds {declared // 4} pixels, but the image is {result.get('original_width')}x{result.get('original_height')}"
    return None


def _sdk_checkable(result: dict) -> dict:
    """``result`` with its RLE swapped for a placeholder, for label-studio-sdk's structural checks."""
    if result.get("type") not in BRUSH_TYPES or not isinstance(result.get("value"), dict):
        return result
    return {**result, "value": {**result["value"], "rle": _RLE_PLACEHOLDER}}


def _clip(errors: list[str], limit: int = 500) -> str:
    text = "; ".join(errors)
    return text if len(text) <= limit else text[:limit] + "..."


class SegmentationMLBackend(MLBackendBase):
    """Zero-guidance segments and FMbSeg class masks for the tags of one label config."""

    def __init__(
        self,
        label_config: str,
        project_id: str | None = None,
        *,
        config: ServiceConfig,
        runtime: Runtime,
        fetcher_for: Callable[[], ImageFetcher],
        training: TrainingCoordinator | None = None,
    ) -> None:
        self.config = config
        self.runtime = runtime
        self._fetcher_for = fetcher_for
        self.training = training
        self.adapters: list[ControlAdapter] = []
        self.config_error: LabelConfigError | None = None
        super().__init__(label_config, project_id)

    @property
    def project(self) -> int | None:
        """Label Studio's project id as a number (its alignment checkpoint is its own)."""
        return project_number(self.project_id)

    def setup(self) -> None:
        try:
            self.adapters = detect_adapters(self.label_interface, self.config, self.runtime, self.project)
            check_smart_tools(self.label_interface, self.config)
        except LabelConfigError as error:
            self.config_error = error
            return
        if not self.adapters:
            self.config_error = LabelConfigError(no_adapter_message())

    def check_config(self) -> None:
        """Raise the :class:`LabelConfigError` that keeps this label config from being served."""
        if self.config_error is not None:
            raise self.config_error

    @property
    def problems(self) -> list[str]:
        return [problem for adapter in self.adapters for problem in adapter.problems]

    # ---- model_version --------------------------------------------------------------------

    @property
    def model_version(self) -> str:
        """``<preset>[-zg.<hash>][-fmbseg.<hash>.<checkpoint>]``.

        Each hash covers the backend version, the image size the model sees and every tag's
        options and setting overrides (the method defaults are fixed by the backend version).
        The FMbSeg part ends with the alignment checkpoint (``base`` when there is none).
        """
        common = {"backend": __version__, "model_max_pixels": self.config.model_max_pixels}
        parts = [self.config.model_preset]
        zero_guidance = [a.version_inputs() for a in self.adapters if a.mode == ZERO_GUIDANCE]
        if zero_guidance:
            parts.append(f"zg.{short_hash({**common, 'tags': zero_guidance})}")
        classes = [a.version_inputs() for a in self.adapters if a.mode == CLASSES]
        if classes:
            checkpoint = self.runtime.checkpoints.version(self.project)
            parts.append(f"fmbseg.{short_hash({**common, 'tags': classes})}.{checkpoint}")
        return "-".join(parts)

    # ---- predict --------------------------------------------------------------------------

    def predict(self, tasks: list[dict], context: dict | None = None, **kwargs: Any) -> ModelResponse:
        self.check_config()
        clicks = parse_context(context)  # a malformed context: 400
        if clicks is not None:
            return self.predict_interactive(tasks, clicks)
        version = self.model_version
        predictions: list[Any] = []
        warnings: list[str] = []
        failed = 0
        batch_started = time.monotonic()
        fetcher = self._fetcher_for()
        for index, task in enumerate(tasks, start=1):
            task_id = task.get("id")
            started = time.monotonic()
            try:
                prediction, tag_problems = self.predict_task(task, version, fetcher)
            except ModelsNotReady:
                raise  # the whole batch waits for the models: 503, Label Studio retries later
            except Exception as error:  # one bad task never fails the batch
                reason = f"{type(error).__name__}: {error}"
                if isinstance(error, (ImageFetchError, LabelConfigError)):
                    logger.error("task %d/%d (id=%s) failed: %s", index, len(tasks), task_id, reason)
                else:
                    logger.exception("task %d/%d (id=%s) failed: %s", index, len(tasks), task_id, reason)
                warnings.append(f"task {task_id}: {reason}")
                predictions.append(self.failed_prediction(version))
                failed += 1
                continue
            predictions.append(prediction)
            warnings.extend(f"task {task_id}: {problem}" for problem in tag_problems)
            logger.info(
                "task %d/%d (id=%s): %d results, score %.3f, %.2f s",
                index,
                len(tasks),
                task_id,
                len(prediction["result"]),
                prediction["score"],
                time.monotonic() - started,
            )
        logger.info("predicted %d tasks in %.2f s (%d failed)", len(tasks), time.monotonic() - batch_started, failed)
        return ModelResponse(
            predictions=predictions, model_version=version, warnings=warnings + self.problems, failed_tasks=failed
        )

    def failed_prediction(self, version: str) -> Any:
        """What a failed task gets: an empty prediction, or (``FAILED_TASK_REPLY=none``) nothing."""
        if self.config.failed_task_reply == "none":
            return []  # Label Studio stores no prediction and asks again next time
        return {"result": [], "score": 0.0, "model_version": version}

    def predict_task(self, task: dict, version: str, fetcher: ImageFetcher) -> tuple[dict, list[str]]:
        """One task's prediction, and the problems of tags that failed while others succeeded.

        A failing tag does not take the other tags' regions down with it (the prediction keeps
        what succeeded, the problem is reported); the task fails only when its image cannot be
        loaded or every tag failed.
        """
        data = task.get("data")
        if not isinstance(data, dict):
            raise ValueError("task has no 'data' object")
        images: dict[str, Any] = {}
        cache: dict = {}
        results: list[dict] = []
        problems: list[str] = []
        for adapter in self.adapters:
            if adapter.image_key not in images:
                reference = data.get(adapter.image_key)
                if reference is None:
                    raise ImageFetchError(
                        f"task data has no '{adapter.image_key}' (the <Image value=\"${adapter.image_key}\"> field)"
                    )
                images[adapter.image_key] = fetcher.load(reference)
            try:
                results.extend(adapter.predict_regions(images[adapter.image_key], cache))
            except ModelsNotReady:
                raise
            except Exception as error:
                if len(self.adapters) == 1:
                    raise
                logger.exception('<%s name="%s"> failed on task %s', adapter.tag, adapter.from_name, task.get("id"))
                problems.append(f'<{adapter.tag} name="{adapter.from_name}"> failed: {type(error).__name__}: {error}')
        if problems and len(problems) == len(self.adapters):
            raise RuntimeError("every tag failed: " + "; ".join(problems))
        return self.checked_prediction(results, version, cache.get(STAGE1_AGREEMENT)), problems

    def disagreement(self, results: list[dict], stage1_agreement: float | None = None) -> float | None:
        """How much the methods disagree on one task, or ``None`` without anything to compare
        (:func:`backend.service.informativeness.disagreement`)."""
        zero_guidance = {a.from_name for a in self.adapters if a.mode == ZERO_GUIDANCE}
        classes = {a.from_name for a in self.adapters if a.mode == CLASSES}
        if not zero_guidance:
            return disagreement([], None, stage1_agreement)
        regions = regions_from_results(results, zero_guidance | classes, ())
        scores = {r["id"]: r.get("score") for r in results if r.get("from_name") in zero_guidance}
        segments = [(r.mask, scores.get(r.id)) for r in regions if r.control in zero_guidance]
        class_masks = [r.mask for r in regions if r.control in classes] if classes else None
        return disagreement(segments, class_masks, stage1_agreement)

    def checked_prediction(self, results: list[dict], version: str, stage1_agreement: float | None = None) -> dict:
        """``results`` as a prediction, without the regions Label Studio would reject (raises when
        the whole prediction would be rejected)."""
        results = self.validated(results)
        scores = [r["score"] for r in results if isinstance(r.get("score"), (int, float))]
        score = float(sum(scores) / len(scores)) if scores else 0.0
        disagreeing = self.disagreement(results, stage1_agreement)
        if disagreeing is not None:
            score = 1.0 - disagreeing  # the most informative tasks sort first (backend/service/informativeness.py)
        prediction = {"result": results, "score": score, "model_version": version}
        errors = self.label_interface.validate_prediction(
            {**prediction, "result": [_sdk_checkable(r) for r in results]}, return_errors=True
        )
        if errors:
            raise RuntimeError(f"prediction failed validation against the label config: {_clip(errors)}")
        return prediction

    # ---- interactive ------------------------------------------------------------------------

    def predict_interactive(self, tasks: list[dict], clicks: InteractiveContext) -> ModelResponse:
        """One region for the object the annotator clicked (or boxed) in the one task of ``tasks``.

        More tasks, or a context the label config cannot place, are refused (400). A failure
        while predicting is isolated as for a batch: an empty prediction and a warning.
        """
        if len(tasks) != 1:
            raise InteractiveContextError(
                f"an interactive request (a context with clicks) takes one task, got {len(tasks)}"
            )
        task = tasks[0]
        version = self.model_version
        started = time.monotonic()
        warnings: list[str] = []
        try:
            prediction, problems = self.predict_click(task, clicks, version, self._fetcher_for())
        except (ModelsNotReady, LabelConfigError):
            raise
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            log = logger.error if isinstance(error, ImageFetchError) else logger.exception
            log("interactive task (id=%s) failed: %s", task.get("id"), reason)
            response = ModelResponse(
                [self.failed_prediction(version)], version, [f"task {task.get('id')}: {reason}"] + self.problems, 1
            )
            return response
        warnings.extend(f"task {task.get('id')}: {problem}" for problem in problems)
        logger.info(
            "interactive task (id=%s): %d points, box %s, %d results, %.2f s",
            task.get("id"),
            len(clicks.points),
            clicks.box is not None,
            len(prediction["result"]),
            time.monotonic() - started,
        )
        return ModelResponse([prediction], version, warnings + self.problems)

    def predict_click(
        self, task: dict, clicks: InteractiveContext, version: str, fetcher: ImageFetcher
    ) -> tuple[dict, list[str]]:
        """The prediction for ``clicks`` on ``task`` (one region and its text), and problems."""
        data = task.get("data")
        if not isinstance(data, dict):
            raise ValueError("task has no 'data' object")
        target = choose_target(self.adapters, self.label_interface, clicks)
        adapter = target.adapter
        reference = data.get(adapter.image_key)
        if reference is None:
            raise ImageFetchError(
                f"task data has no '{adapter.image_key}' (the <Image value=\"${adapter.image_key}\"> field)"
            )
        image = fetcher.load(reference)
        prompts = clicks.prompts_for(image)
        describing = next((a for a in self.adapters if a.mode == ZERO_GUIDANCE and a.to_name == adapter.to_name), None)
        settings = describing.settings if describing is not None else zero_guidance_settings(self.config)
        clicker = self.runtime.click(settings, click_settings_for(self.label_interface, clicks, self.config))
        extra = {"class_template": adapter.settings.prompt_template} if target.classes else {}
        task_id = task.get("id")
        with self.runtime.inference_lock:
            result = clicker.segment(
                image.pixels,
                prompts.points,
                prompts.labels,
                prompts.box,
                classes=list(target.classes),
                task_key=None if task_id is None else f"{self.project}:{task_id}",
                **extra,
            )
        mask = image.mask_to_original(result.mask)
        if not mask.any():
            return self.checked_prediction([], version), ["SAM found no object at these clicks"]
        label = target.label_for(result.class_name)
        score = target.region_score(result.text_score, result.class_score, result.sam_score)
        shapes = adapter.shape_results(image, mask, label, score)
        if not shapes:
            return self.checked_prediction([], version), ["the object is too small for a polygon"]
        region = shapes[0]  # polygons: the largest connected component
        results = [region]
        text, text_area = result.text.strip(), target.text_area_for(label)
        if text_area is not None and text:
            results.append(text_result(region, text_area, text))
        return self.checked_prediction(results, version), []

    def validated(self, results: list[dict]) -> list[dict]:
        """``results`` without the regions Label Studio would reject (all results of a bad region id).

        Structure, names and labels are checked by label-studio-sdk's ``LabelInterface``; brush
        RLEs by :func:`rle_problem` (label-studio-sdk 2.0.x's own RLE check rejects valid Label
        Studio RLEs; Label Studio 1.23.2 itself ships 2.1.2, whose check is the byte range).
        """
        bad_ids = set()
        for index, result in enumerate(results):
            errors = self.label_interface.validate_region(
                _sdk_checkable(result), return_errors=True, region_index=index
            )
            problem = rle_problem(result)
            if problem:
                errors = [*errors, f"Region {index}: {problem}"]
            if errors:
                bad_ids.add(result.get("id"))
                logger.error("dropping region %s: %s", result.get("id"), _clip(errors))
        return [result for result in results if result.get("id") not in bad_ids]

    # ---- fit ------------------------------------------------------------------------------

    def fit(self, event: str, data: dict, **kwargs: Any) -> dict | None:
        """``START_TRAINING`` runs the registered training hook; other events need no work here
        (human annotations are stored by the webhook handler before it answers)."""
        if event == "START_TRAINING" and self.training is not None:
            return self.training.run(
                project_id=self.project_id,
                label_config=self.label_config,
                event=data,
                class_mask_tags=[a.training_tag() for a in self.adapters if isinstance(a, ClassMaskAdapter)],
            )
        return None
