"""Benchmark: ``encode_segments`` for K segments, batched, against K separate masked full passes.

Random weights (same cost as real ones) for the ``cpu`` preset's CLIP ViT-B/16 and the ``paper``
preset's ViT-L/14@336. Writes bench/results/encode_segments.json.

    python bench/bench_encode_segments.py [--segments 20] [--repeats 3] [--archs ViT-B-16-quickgelu ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from backend.models.clip import ClipModel, SegmentEncoding
from backend.models.images import resize_masks
from backend.models.segment_attention import run_masked_block, token_masks

RESULTS = Path(__file__).with_name("results") / "encode_segments.json"


def separate_passes(clip: ClipModel, image: np.ndarray, masks: np.ndarray, settings: SegmentEncoding) -> torch.Tensor:
    """The straightforward way: one full forward pass per segment."""
    visual = clip.model.visual
    blocks = visual.transformer.resblocks
    first_masked = len(blocks) - settings.masked_layers
    out = []
    with torch.inference_mode():
        pixels = clip._pixels(image)[None]
        for mask in masks:
            weights = token_masks(
                resize_masks(torch.from_numpy(mask)[None].float(), (clip.input_size,) * 2), clip.grid_size
            )
            x = visual._embeds(pixels)
            for i, block in enumerate(blocks):
                if i < first_masked:
                    x = block(x)
                else:
                    x = run_masked_block(block, x, weights, subtract_global=True, sigma_squared=settings.sigma_squared)
            pooled, _ = visual._pool(x)
            out.append(F.normalize(pooled @ visual.proj, dim=-1)[0])
    return torch.stack(out)


def random_segments(k: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """K blob-like masks: nearest of K random seeds (a Voronoi partition)."""
    seeds = rng.uniform(0, size, (k, 2))
    yy, xx = np.mgrid[:size, :size]
    nearest = np.argmin((yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2, axis=0)
    return np.stack([nearest == i for i in range(k)]).astype(np.float32)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--archs", nargs="+", default=["ViT-B-16-quickgelu", "ViT-L-14-336-quickgelu"])
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    image = (rng.random((512, 512, 3)) * 255).astype(np.uint8)
    masks = random_segments(args.segments, 512, rng)
    settings = SegmentEncoding()
    rows = []
    for arch in args.archs:
        model = open_clip.create_model(arch, pretrained=None)
        clip = ClipModel(model, open_clip.get_tokenizer(arch), arch, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
        clip.encode_segments(image, masks[:2], settings)  # warm-up
        batched_s, batched = timed(lambda: clip.encode_segments(image, masks, settings), args.repeats)
        separate_s, separate = timed(lambda: separate_passes(clip, image, masks, settings), max(1, args.repeats - 1))
        row = {
            "arch": arch,
            "segments": args.segments,
            "batched_s": round(batched_s, 3),
            "separate_passes_s": round(separate_s, 3),
            "speedup": round(separate_s / batched_s, 2),
            "max_abs_difference": float((batched - separate).abs().max()),
        }
        print(json.dumps(row))
        rows.append(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "encode_segments: batched masked blocks vs one full pass per segment",
                "weights": "random (same cost as real weights)",
                "threads": torch.get_num_threads(),
                "machine": platform.processor() or platform.machine(),
                "torch": torch.__version__,
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
