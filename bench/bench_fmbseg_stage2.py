"""Benchmark of FMbSeg Stage 2 (alignment module training step and base inference) on CPU.

Feature sizes of the paper's set-ups, with random features (the cost does not depend on the
values) and random weights:

- ``vits14``: DINOv2 ViT-S/14 at 518 x 518 -> 37 x 37 patches of 384-d, into CLIP B/16's 512-d
  text space;
- ``vitl14``: DINOv2 ViT-L/14 at 518 x 518 -> 37 x 37 patches of 1024-d, into CLIP L/14's 768-d
  text space (the paper's, section 4.1).

Cases (each in its own process, so that its peak memory, ru_maxrss above the process's size just
before the measured calls, is its own):

- ``train_step``: one SGD step on a batch of 5 images (6,845 patches) with l_TSupCon over K = 171
  classes (COCO-Stuff): module forward, loss, backward, optimiser step;
- ``loss``: l_TSupCon forward + backward alone on 6,845 precomputed patch embeddings;
- ``base_inference``: one image: module forward on its 37 x 37 grid, patch-text similarities for
  171 classes, bilinear upsampling and argmax at 518 x 518 and 480 x 640;
- ``refine``: majority vote and overlay of 100 random box masks on a 480 x 640 base map.

Loss study (``loss_study`` in the JSON): accuracy on clean held-out synthetic images after the
paper's budget (10 epochs, 5 images a batch, SGD + cosine) with 20% wrong pseudo labels, for
each loss of Table 3 and our ``balance_terms`` variant, several seeds and learning rates. The
synthetic world is the one of tests/fmbseg/test_training.py: 6 class prototypes in 32-d plus
unit Gaussian noise as "DINOv2" features, 6 x 6 patches an image, 3 classes an image in Voronoi
regions, random unit 16-d text features, 20 training images, 20 test images.

Usage: ``python bench/bench_fmbseg_stage2.py [--repeats 5] [--threads 2] [--skip-timing] [--skip-loss-study]
[--out bench/results/fmbseg_stage2.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ENCODERS = {"vits14": (384, 512), "vitl14": (1024, 768)}
KINDS = ("transformer", "mlp", "linear")
GRID = 37
BATCH = 5
NUM_CLASSES = 171


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _timed(call, repeats: int) -> list[float]:
    call()  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def run_case(case: dict) -> dict:
    """One measurement, meant to run in its own process."""
    import numpy as np
    import torch

    from backend.fmbseg.alignment import build_alignment_module, count_parameters
    from backend.fmbseg.inference import align_patch_grid, base_label_map, refined_label_map
    from backend.fmbseg.loss import tsupcon_loss

    torch.set_num_threads(case["threads"])
    in_dim, out_dim = ENCODERS[case["encoder"]]
    generator = torch.Generator().manual_seed(0)
    texts = torch.nn.functional.normalize(torch.randn(NUM_CLASSES, out_dim, generator=generator), dim=-1)
    result = dict(case)

    if case["name"] == "train_step":
        module = build_alignment_module(case["kind"], in_dim, out_dim, seed=0)
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
        features = torch.randn(BATCH, GRID * GRID, in_dim, generator=generator)
        # ~20 classes a batch, 10% of the patches without a pseudo label
        labels = torch.randint(0, 20, (BATCH * GRID * GRID,), generator=generator)
        labels[torch.rand(labels.shape, generator=generator) < 0.1] = -1

        def call():
            loss = tsupcon_loss(module(features).flatten(0, 1), labels, texts)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        result["parameters"] = count_parameters(module)
    elif case["name"] == "loss":
        embeddings = torch.nn.functional.normalize(
            torch.randn(BATCH * GRID * GRID, out_dim, generator=generator), dim=-1
        )
        embeddings.requires_grad_(True)
        labels = torch.randint(0, 20, (BATCH * GRID * GRID,), generator=generator)

        def call():
            embeddings.grad = None
            tsupcon_loss(embeddings, labels, texts).backward()

    elif case["name"] == "base_inference":
        module = build_alignment_module(case["kind"], in_dim, out_dim, seed=0).eval()
        features = torch.randn(GRID, GRID, in_dim, generator=generator)
        size = tuple(case["image_size"])

        def call():
            with torch.inference_mode():
                base_label_map(align_patch_grid(module, features), texts, size)

    elif case["name"] == "refine":
        height, width = case["image_size"]
        rng = np.random.default_rng(0)
        base = rng.integers(0, 20, size=(height, width))
        masks = np.zeros((case["masks"], height, width), dtype=bool)
        for mask in masks:
            top, left = rng.integers(0, height - 16), rng.integers(0, width - 16)
            mask[top : top + rng.integers(16, height - top + 1), left : left + rng.integers(16, width - left + 1)] = (
                True
            )

        def call():
            refined_label_map(base, masks)

    else:
        raise ValueError(f"Unknown case {case['name']!r}")

    start_rss = _current_rss_mb()
    seconds = _timed(call, case["repeats"])
    result["seconds"] = seconds
    result["median_s"] = statistics.median(seconds)
    result["min_s"] = min(seconds)  # the least disturbed run, on a shared machine
    result["peak_mb_above_start"] = round(max(0.0, _peak_rss_mb() - start_rss), 1)
    return result


def _synthetic_accuracy(seed: int, loss_kwargs: dict, learning_rate: float) -> float:
    """Train the transformer module on the synthetic world (module docstring); clean accuracy."""
    import torch
    import torch.nn.functional as F

    from backend.fmbseg.alignment import AlignmentModuleConfig
    from backend.fmbseg.loss import LossSettings
    from backend.fmbseg.training import TrainingExample, TrainingSettings, train_alignment_module

    classes, in_dim, out_dim, grid = 6, 32, 16, 6
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(classes, in_dim, generator=generator)
    texts = F.normalize(torch.randn(classes, out_dim, generator=generator), dim=-1)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")

    def image():
        chosen = torch.randperm(classes, generator=generator)[:3]
        centres = torch.rand(3, 2, generator=generator) * grid
        distances = (rows[None] - centres[:, 0, None, None]) ** 2 + (cols[None] - centres[:, 1, None, None]) ** 2
        clean = chosen[distances.argmin(0)].flatten()
        return prototypes[clean] + torch.randn(grid * grid, in_dim, generator=generator), clean

    train = []
    for _ in range(20):
        features, clean = image()
        noisy = clean.clone()
        wrong = torch.rand(clean.shape, generator=generator) < 0.2
        shift = torch.randint(1, classes, clean.shape, generator=generator)
        noisy[wrong] = (clean[wrong] + shift[wrong]) % classes
        train.append(TrainingExample(features, noisy))
    test = [image() for _ in range(20)]
    result = train_alignment_module(
        train,
        [f"class{k}" for k in range(classes)],
        texts,
        AlignmentModuleConfig("transformer", in_dim, out_dim, num_heads=2),
        TrainingSettings(seed=seed, learning_rate=learning_rate, loss=LossSettings(**loss_kwargs)),
        progress_bar=False,
    )
    with torch.no_grad():
        predicted = (result.module(torch.stack([f for f, _ in test])) @ texts.T).argmax(-1)
    return (predicted == torch.stack([c for _, c in test])).float().mean().item()


def loss_study(seeds: int = 5) -> list[dict]:
    import torch

    torch.set_num_threads(1)  # tiny tensors: one thread is fastest
    losses = {
        "tsupcon (Eq. 1, paper)": dict(variant="tsupcon"),
        "tsupcon balance_terms (ours)": dict(variant="tsupcon", balance_terms=True),
        "supcon (Table 3)": dict(variant="supcon"),
        "prototype, Eq. 2 (Table 3)": dict(variant="prototype"),
    }
    rows = []
    for learning_rate in (0.1, 1.0):
        for name, kwargs in losses.items():
            accuracies = [_synthetic_accuracy(seed, kwargs, learning_rate) for seed in range(seeds)]
            rows.append(
                dict(
                    loss=name,
                    learning_rate=learning_rate,
                    accuracies=[round(a, 4) for a in accuracies],
                    mean=round(statistics.mean(accuracies), 4),
                    min=round(min(accuracies), 4),
                )
            )
            print(f"{name:32s} lr={learning_rate:<4} mean {rows[-1]['mean']:.3f} min {rows[-1]['min']:.3f}", flush=True)
    return rows


def _cases(repeats: int, threads: int) -> list[dict]:
    cases = []
    for encoder in ENCODERS:
        for kind in KINDS:
            cases.append(dict(name="train_step", encoder=encoder, kind=kind))
        cases.append(dict(name="loss", encoder=encoder))
        for size in ((518, 518), (480, 640)):
            for kind in KINDS:
                cases.append(dict(name="base_inference", encoder=encoder, kind=kind, image_size=size))
    cases.append(dict(name="refine", encoder="vits14", image_size=(480, 640), masks=100))
    for case in cases:
        case.update(repeats=repeats, threads=threads)
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fmbseg_stage2.json")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-loss-study", action="store_true")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return

    import torch

    report = {
        "what": "FMbSeg Stage 2 on random features: train step (5 images x 37^2 patches, "
        "l_TSupCon, K=171) and base inference (one image, K=171)",
        "machine": {
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "load_average_at_start": list(os.getloadavg()),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "results": [],
    }
    for case in [] if args.skip_timing else _cases(args.repeats, args.threads):
        process = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True)
        if process.returncode != 0:
            raise RuntimeError(f"Case {case} failed:\n{process.stderr[-4000:]}")
        result = json.loads(process.stdout.strip().splitlines()[-1])
        report["results"].append(result)
        label = " ".join(str(result.get(k, "")) for k in ("name", "encoder", "kind", "image_size"))
        print(f"{label:60s} median {result['median_s']:.3f} s  peak +{result['peak_mb_above_start']} MB", flush=True)
    if not args.skip_loss_study:
        report["loss_study"] = {
            "what": "clean accuracy (chance 1/6) after 10 epochs on synthetic features with 20% "
            "wrong pseudo labels; seeds 0..4; transformer module; see the module docstring",
            "rows": loss_study(),
        }
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
