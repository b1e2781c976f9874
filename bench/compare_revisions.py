"""Float32 before and after: the same workload on two source trees, as ratios to SAM's set_image.

Checks that the float32 path (a CPU without bfloat16) is no slower than a former revision: FMbSeg
Stage 1, Stage 2 base and refined, and zero-guidance on the ``cpu`` architectures (random weights,
512x512, 2 threads, float32), each tree in its own child process, alternately (``--rounds``
times each; the medians count), with segment-anything's ``SamPredictor.set_image`` (ViT-B,
float32) timed before and after each child.
SAM's cached embedding is dropped before each Stage 1 and refined run in both trees.

    git worktree add --detach /tmp/before <commit>
    python bench/compare_revisions.py --before /tmp/before [--after .]

Writes bench/results/compare_revisions.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
# bench_fmbseg.py's COCO_LIKE (copied: the worker runs with a former revision's tree on its path)
CLASSES = [
    "person",
    "bicycle",
    "car",
    "dog",
    "cat",
    "horse",
    "sky",
    "tree",
    "grass",
    "road",
    "building",
    "water",
    "chair",
    "table",
    "bottle",
    "bird",
    "boat",
    "train",
    "sofa",
    "wall",
]


def synthetic_scene(size: int, seed: int = 0):
    """bench_zeroguide.py's scene (copied: that module imports what a former revision may lack)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    image = np.zeros((size, size, 3))
    for _ in range(8):
        cy, cx, r = rng.uniform(0, 1, 3)
        image[((yy - cy) ** 2 + (xx - cx) ** 2) < (0.1 + 0.3 * r) ** 2] = rng.uniform(0, 1, 3)
    image += rng.normal(0, 0.05, image.shape)
    return (image.clip(0, 1) * 255).astype(np.uint8)


def worker(size: int, threads: int) -> dict:
    """Run in the tree on PYTHONPATH: seconds of each figure (float32)."""
    import statistics
    import tempfile

    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from backend.fmbseg import FMbSegPredictor
    from backend.fmbseg.alignment import build_from_config
    from backend.fmbseg.checkpoints import AlignmentCheckpoint
    from backend.fmbseg.training import TrainingSettings
    from backend.models.registry import FoundationModels
    from backend.zeroguide import ZeroGuidanceSegmenter, ZeroGuideSettings

    try:
        models = FoundationModels("cpu", device="cpu", random_weights=True, dtype="float32")
    except TypeError:  # a revision before DTYPE: always float32
        models = FoundationModels("cpu", device="cpu", random_weights=True)

    def forget() -> None:
        if hasattr(models.sam, "forget_images"):
            models.sam.forget_images()
        else:
            models.sam._predictor = None  # the former predictor kept the last image's embedding

    def seconds(fn, repeats: int, before=None) -> float:
        times = []
        for _ in range(repeats):
            if before:
                before()
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return round(statistics.median(times), 3)

    result = {}
    scene = synthetic_scene(size)  # bench_zeroguide.py's image; first, in a fresh process
    with tempfile.TemporaryDirectory() as cache:
        overrides = models.method_overrides("zeroguide")
        settings = ZeroGuideSettings.for_preset(overrides, captioner_options={"cache_dir": cache})
        segmenter = ZeroGuidanceSegmenter(models, settings)
        segmenter.segment(scene)
        result["zeroguide_total"] = seconds(lambda: segmenter.segment(scene), 3)
    image = (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)
    predictor = FMbSegPredictor(models)
    predictor.text_embeddings(CLASSES)
    predictor.pseudo_label(image, CLASSES)
    result["stage1_pseudo_labels"] = seconds(lambda: predictor.pseudo_label(image, CLASSES), 2, forget)
    config = predictor.module_config("transformer")
    predictor.load_checkpoint(
        AlignmentCheckpoint(
            module=build_from_config(config, seed=0).eval(),
            classes=tuple(CLASSES),
            text_embeddings=predictor.text_embeddings(CLASSES).cpu(),
            module_config=config,
            settings=TrainingSettings(),
            epochs_completed=1,
            loss_history=(0.0,),
            version="compare",
        )
    )
    predictor.predict(image, CLASSES, refine=False)
    result["stage2_base"] = seconds(lambda: predictor.predict(image, CLASSES, refine=False), 3)
    result["stage2_refined"] = seconds(lambda: predictor.predict(image, CLASSES, refine=True), 2, forget)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="the former revision's source tree")
    parser.add_argument("--after", type=Path, default=HERE.parent)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.size, args.threads)), flush=True)
        return
    import numpy as np

    sys.path.insert(0, str(HERE.parent))
    from bench.common import SetImageReference, load_average, write

    image = (np.random.default_rng(0).random((args.size, args.size, 3)) * 255).astype(np.uint8)
    reference = SetImageReference(image, args.threads)
    reference.measure()
    load_before = load_average()
    rounds: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(args.rounds):
        for name, tree in (("before", args.before), ("after", args.after)):
            env = {**os.environ, "PYTHONPATH": str(tree.resolve()), "DTYPE": "float32"}
            command = [
                sys.executable,
                str(HERE / "compare_revisions.py"),
                "--worker",
                "--size",
                str(args.size),
                "--threads",
                str(args.threads),
            ]
            run = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tree)
            if run.returncode:
                raise SystemExit(f"the {name} tree failed:\n{run.stderr[-3000:]}")
            rounds[name].append(json.loads(run.stdout.strip().splitlines()[-1]))
            reference.measure()
    reference.close()
    figures = {
        name: {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}
        for name, runs in rounds.items()
    }
    ratios = {name: {k: round(v / reference.median, 4) for k, v in values.items()} for name, values in figures.items()}
    report = {
        "benchmark": "float32 before and after, cpu architectures, random weights, "
        f"{args.size}x{args.size}, {args.threads} threads",
        "trees": {"before": str(args.before), "after": str(args.after)},
        "commits": {
            name: subprocess.run(
                ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip()
            for name, tree in (("before", args.before), ("after", args.after))
        },
        "seconds": figures,
        "rounds": rounds,
        "reference_set_image": reference.report(),
        "ratio_to_set_image": ratios,
        "after_over_before": {k: round(figures["after"][k] / figures["before"][k], 3) for k in figures["after"]},
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    print(json.dumps({k: report[k] for k in ("seconds", "ratio_to_set_image", "after_over_before")}))
    write(HERE / "results" / "compare_revisions.json", report)


if __name__ == "__main__":
    main()
