"""Picklable fake methods for the model-process tests (imported by the spawned child: keep light)."""

import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np


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


class GilHoggingSegmenter:
    def __init__(self, state_dir: Path, overrides: dict, calibration: tuple[int, float]) -> None:
        self.state_dir = state_dir
        self.overrides = overrides
        self.calibration = calibration

    def segment(self, image: np.ndarray) -> SimpleNamespace:
        if self.overrides.get("crash"):
            os._exit(3)
        if self.overrides.get("raise"):
            raise ValueError("bad settings for this fake")
        if self.overrides.get("hog_seconds"):
            # time.monotonic() is the system-wide CLOCK_MONOTONIC: comparable across processes
            (self.state_dir / "started").write_text(f"{os.getpid()} {time.monotonic()}")
            hold_the_interpreter(float(self.overrides["hog_seconds"]), self.calibration)
            (self.state_dir / "done").write_text(str(time.monotonic()))
        height, width = image.shape[:2]
        left = np.zeros((height, width), bool)
        left[:, : width // 2] = True
        segment = SimpleNamespace(mask=left, text="left", score=0.8)
        return SimpleNamespace(segments=[segment, SimpleNamespace(mask=~left, text="right", score=None)])


class QuickMethods:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.calibration: tuple[int, float] | None = None

    def load_models(self, preset: str, device: str | None) -> dict:
        if preset == "broken":
            raise FileNotFoundError("no weights for preset broken")
        self.calibration = calibrate_backtracking()
        return {"preset": preset, "pid": os.getpid()}

    def zero_guidance(self, models: dict, overrides: dict) -> GilHoggingSegmenter:
        return GilHoggingSegmenter(self.state_dir, dict(overrides), self.calibration)

    def fmbseg(self, models: dict, overrides: dict, checkpoint) -> SimpleNamespace:
        class Bands:
            def predict(self, image, classes, refine=None, open_vocabulary=False):
                height = image.shape[0]
                label_map = np.full(image.shape[:2], -1, np.int64)
                for index, rows in enumerate(np.array_split(np.arange(height), len(classes))):
                    label_map[rows] = index
                return SimpleNamespace(label_map=label_map, class_masks={}, classes=list(classes))

        return Bands()


def quick_library(config) -> QuickMethods:
    return QuickMethods(Path(config.model_dir))


def child_training_hook(request) -> dict:
    (request.model_dir / "trained-by").write_text(str(os.getpid()))
    return {"pid": os.getpid(), "annotations": len(request.annotations)}
