"""Picklable fake methods for the model-process tests (imported by the spawned child: keep light)."""

import json
import os
import re
import time
from pathlib import Path

import numpy as np

from backend.fmbseg.results import ClassMaskPrediction
from backend.fmbseg.settings import FMbSegSettings
from backend.interactive.results import ClickResult
from backend.interactive.settings import ClickSettings
from backend.zeroguide.results import Segment, ZeroGuidanceResult
from backend.zeroguide.settings import ZeroGuideSettings


def write_atomically(path: Path, text: str) -> None:
    """The test polls for ``path``: it must never see the file before its text."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def calibrate_backtracking() -> tuple[int, float]:
    """``(n, seconds)``: a size at which one backtracking match takes a measurable time."""
    n = 16
    while True:
        started = time.monotonic()
        re.match(r"(a+)+$", "a" * n + "b")
        elapsed = time.monotonic() - started
        if elapsed >= 0.05:
            return n, elapsed
        n += 1


def hold_the_interpreter(seconds: float, calibration: tuple[int, float]) -> None:
    """One C call of the ``re`` module (which never releases the GIL) lasting about ``seconds``:
    catastrophic backtracking takes 2^n steps, so each extra character doubles the time."""
    n, elapsed = calibration
    extra = max(0, int(round(np.log2(seconds / elapsed))))
    re.match(r"(a+)+$", "a" * (n + extra) + "b")


# The tests steer the fakes through ordinary, allow-listed settings (a project can send nothing else):
CRASH_CLUSTERS = 91  # n_clusters=91: the child exits
RAISE_CLUSTERS = 92  # n_clusters=92: the method raises
HOG_CLUSTERS = 93  # n_clusters=93: the method holds the interpreter lock for crf_iterations seconds
HANG_CLUSTERS = 94  # n_clusters=94: the method never returns (sleeps forever)
SLEEP_CLUSTERS = 95  # n_clusters=95: the method sleeps crf_iterations tenths of a second, then answers


def fake_segment(mask: np.ndarray, text: str, text_score: float) -> Segment:
    return Segment(mask, text, np.zeros(4, np.float32), text_score=text_score, merge_score=None, node_id=0)


class GilHoggingSegmenter:
    def __init__(self, state_dir: Path, settings: ZeroGuideSettings, calibration: tuple[int, float]) -> None:
        self.state_dir = state_dir
        self.settings = settings
        self.calibration = calibration

    def warm_up(self) -> None:
        pass

    def segment(self, image: np.ndarray) -> ZeroGuidanceResult:
        if self.settings.n_clusters == CRASH_CLUSTERS:
            os._exit(3)
        if self.settings.n_clusters == RAISE_CLUSTERS:
            raise ValueError("bad settings for this fake")
        if self.settings.n_clusters == HANG_CLUSTERS:
            (self.state_dir / "hanging").write_text(str(os.getpid()))
            while True:
                time.sleep(3600)
        if self.settings.n_clusters == SLEEP_CLUSTERS:
            time.sleep(self.settings.crf_iterations / 10)
        if self.settings.n_clusters == HOG_CLUSTERS:
            # time.monotonic() is the system-wide CLOCK_MONOTONIC: comparable across processes
            write_atomically(self.state_dir / "started", f"{os.getpid()} {time.monotonic()}")
            hold_the_interpreter(float(self.settings.crf_iterations), self.calibration)
            write_atomically(self.state_dir / "done", str(time.monotonic()))
        height, width = image.shape[:2]
        left = np.zeros((height, width), bool)
        left[:, : width // 2] = True
        segments = [fake_segment(left, "left", 0.8), fake_segment(~left, "right", 0.3)]
        return ZeroGuidanceResult(segments, (height, width), self.settings, "fake", "tiny", random_weights=True)


class Bands:
    """FMbSeg stand-in: class i is the i-th horizontal band."""

    def __init__(self, settings: FMbSegSettings) -> None:
        self.settings = settings

    def trained_classes(self) -> list[str] | None:
        return None

    def predict(self, image, classes, refine=None, open_vocabulary=False) -> ClassMaskPrediction:
        height = image.shape[0]
        label_map = np.full(image.shape[:2], -1, np.int64)
        for index, rows in enumerate(np.array_split(np.arange(height), len(classes))):
            label_map[rows] = index
        return ClassMaskPrediction(label_map, list(classes), "stage1", "fake", random_weights=True)


class BoxClicker:
    """Interactive stand-in: the box, or the whole image; names it after the settings it got."""

    def __init__(self, settings: ZeroGuideSettings, click_settings: ClickSettings) -> None:
        self.settings, self.click_settings = settings, click_settings

    def segment(self, image, points, labels, box, classes=(), task_key=None, class_template="a photo of a {}"):
        mask = np.zeros(image.shape[:2], bool)
        if box is None:
            mask[:] = True
        else:
            x0, y0, x1, y1 = (int(v) for v in box)
            mask[y0:y1, x0:x1] = True
        text = f"pid {os.getpid()} multimask {self.click_settings.multimask_output} task {task_key}"
        classes = list(classes)
        return ClickResult(mask, text, 0.25, 0.5, classes[-1] if classes else None, 0.6 if classes else None)


class QuickMethods:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.calibration: tuple[int, float] | None = None

    def load_models(self, preset: str, device: str | None) -> dict:
        if device == "broken":
            raise FileNotFoundError("no weights for device broken")
        self.calibration = calibrate_backtracking()
        return {"preset": preset, "pid": os.getpid()}

    def zero_guidance(self, models: dict, settings: ZeroGuideSettings) -> GilHoggingSegmenter:
        return GilHoggingSegmenter(self.state_dir, settings, self.calibration)

    def fmbseg(self, models: dict, settings: FMbSegSettings, checkpoint) -> Bands:
        return Bands(settings)

    def click(self, models: dict, settings: ZeroGuideSettings, click_settings: ClickSettings, describer) -> BoxClicker:
        return BoxClicker(settings, click_settings)


def quick_library(config) -> QuickMethods:
    return QuickMethods(Path(config.model_dir))


def environment_reporting_library(config) -> QuickMethods:
    """quick_library, after writing what the child saw before any model loaded."""
    import sys

    report = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "torch_loaded": "torch" in sys.modules}
    write_atomically(Path(config.model_dir) / "environment.json", json.dumps(report))
    return quick_library(config)


def child_training_hook(request) -> dict:
    (request.model_dir / "trained-by").write_text(str(os.getpid()))
    return {"pid": os.getpid(), "annotations": len(request.annotations)}


def sleepy_training_hook(request) -> dict:
    """Sleeps the seconds written in ``MODEL_DIR/train-seconds`` (a stand-in for a long training run)."""
    seconds = float((request.model_dir / "train-seconds").read_text())
    (request.model_dir / "training-started").write_text(str(os.getpid()))
    time.sleep(seconds)
    return {"pid": os.getpid(), "slept": seconds}
