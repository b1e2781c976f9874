"""Benchmark: FMbSeg per image on the ``cpu`` preset's architectures (random weights, same cost).

Stage 1 (CLIP crops + SAM point prompts + SAM automatic masks), Stage 2 base prediction (DINOv2
ViT-S/14 at 518 + the alignment module + upsampling), Stage 2 refined (base + SAM's automatic
masks). Writes bench/results/fmbseg.json.

    python bench/bench_fmbseg.py [--size 512] [--repeats 3] [--classes 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from backend.fmbseg import FMbSegPredictor
from backend.fmbseg.alignment import build_from_config
from backend.fmbseg.checkpoints import AlignmentCheckpoint
from backend.fmbseg.training import TrainingSettings
from backend.models.registry import FoundationModels

RESULTS = Path(__file__).with_name("results") / "fmbseg.json"
COCO_LIKE = [
    "person", "bicycle", "car", "dog", "cat", "horse", "sky", "tree", "grass", "road",
    "building", "water", "chair", "table", "bottle", "bird", "boat", "train", "sofa", "wall",
]


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--preset", default="cpu")
    args = parser.parse_args()
    models = FoundationModels(args.preset, device="cpu", random_weights=True)
    predictor = FMbSegPredictor(models)
    classes = COCO_LIKE[: args.classes]
    rng = np.random.default_rng(0)
    image = (rng.random((args.size, args.size, 3)) * 255).astype(np.uint8)
    start = time.perf_counter()
    models.load(("clip", "dinov2", "sam"))
    build_s = time.perf_counter() - start
    predictor.text_embeddings(classes)  # cached text, as in service

    stage1_s = timed(lambda: predictor.pseudo_label(image, classes), max(1, args.repeats - 1))

    config = predictor.module_config("transformer")
    checkpoint = AlignmentCheckpoint(
        module=build_from_config(config, seed=0).eval(), classes=tuple(classes),
        text_embeddings=predictor.text_embeddings(classes).cpu(), module_config=config,
        settings=TrainingSettings(), epochs_completed=10, loss_history=(0.0,), version="bench",
    )
    predictor.load_checkpoint(checkpoint)
    predictor.predict(image, classes, refine=False)  # warm-up
    base_s = timed(lambda: predictor.predict(image, classes, refine=False), args.repeats)
    features_s = timed(lambda: predictor.patch_features(image), args.repeats)
    refined_s = timed(lambda: predictor.predict(image, classes, refine=True), max(1, args.repeats - 1))
    report = {
        "benchmark": f"FMbSeg per {args.size}x{args.size} image, {len(classes)} classes",
        "preset_architectures": args.preset,
        "weights": "random (same cost as real weights)",
        "settings": predictor.settings.to_dict(),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "model_build_s": round(build_s, 2),
        "stage1_pseudo_labels_s": stage1_s,
        "stage2_base_s": base_s,
        "stage2_base_dinov2_features_s": features_s,
        "stage2_refined_s": refined_s,
        "target_stage2_base_s": 1.0,
    }
    print(json.dumps({k: v for k, v in report.items() if k.endswith("_s")}))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
