"""Benchmark of the segment-candidate step (zero-guidance section 3.1, appendix B).

Measures, on random L2-normalised 384-d features (the cost does not depend on the values):

- Ward linkage to the root at 55 x 55 and 111 x 111 grid points: our BLAS-distance path
  (``distances="matmul"``), scipy's reference (``distances="pdist"``), and fastcluster's
  ``linkage_vector`` when that package is importable; each case in a fresh process so that its
  peak memory (ru_maxrss above the process's size before the call) is its own;
- the whole ``find_segment_candidates`` (linkage, cut at 20, pruning at 0.9);
- DenseCRF refinement, 20 segments, 10 iterations, at 224 x 224 and 448 x 448.

Usage: ``python bench/bench_clustering.py [--sizes 55 111] [--repeats 3] [--out bench/results/clustering.json]``
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
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHANNELS = 384


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _features(side: int, seed: int = 0):
    import numpy as np

    points = np.random.default_rng(seed).normal(size=(side * side, CHANNELS))
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def run_case(case: dict) -> dict:
    """One measurement, meant to run in its own process."""
    import numpy as np

    from backend.zeroguide.clustering import find_segment_candidates, ward_linkage

    side, kind = case["side"], case["kind"]
    points = _features(side)
    if kind == "fastcluster":
        import fastcluster

        def call():
            return fastcluster.linkage_vector(points, method="ward")

    elif kind in ("matmul", "pdist"):

        def call():
            return ward_linkage(points, distances=kind)

    elif kind == "find_segment_candidates":
        grid = points.reshape(side, side, CHANNELS)

        def call():
            return find_segment_candidates(grid).label_map

    else:
        raise ValueError(f"unknown case {kind}")
    baseline = _rss_mb()
    seconds = []
    result = None
    for _ in range(case["repeats"]):
        start = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "side": side,
        "points": side * side,
        "kind": kind,
        "seconds": seconds,
        "median_s": statistics.median(seconds),
        "peak_mb_above_start": round(peak - baseline, 1),
    }
    if kind in ("matmul", "pdist", "fastcluster"):
        np.save(case["linkage_path"], result)
    return out


def run_crf(size: int, grid: int, repeats: int) -> dict:
    import numpy as np

    from backend.zeroguide.crf import densecrf_refine

    rng = np.random.default_rng(0)
    # A piecewise smooth picture: colour gradients with 20 flat rectangles (white noise would be
    # an unrealistic worst case for the bilateral filter's permutohedral lattice).
    rows, cols = np.indices((size, size)) / size
    image = np.stack([rows, cols, 1 - rows], axis=-1) * 160
    for _ in range(20):
        top, left = rng.integers(0, size - size // 4, size=2)
        image[top : top + size // 4, left : left + size // 4] = rng.integers(0, 256, size=3)
    image = image.astype(np.uint8)
    features = rng.normal(size=(grid, grid, CHANNELS))
    label_map = np.arange(grid * grid).reshape(grid, grid) % 20
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        densecrf_refine(image, features, label_map)
        seconds.append(time.perf_counter() - start)
    return {
        "image": [size, size],
        "grid": [grid, grid],
        "labels": 20,
        "iterations": 10,
        "seconds": seconds,
        "median_s": statistics.median(seconds),
    }


def _in_subprocess(case: dict) -> dict:
    completed = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        return {**case, "error": completed.stderr.strip().splitlines()[-1] if completed.stderr else "failed"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[55, 111])
    parser.add_argument("--repeats", type=int, default=3, help="repeats at 55 x 55 (111 x 111 runs once)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "clustering.json")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return

    import numpy as np
    import scipy

    try:
        import fastcluster

        fastcluster_version = fastcluster.__version__
    except ImportError:
        fastcluster_version = None

    tmp_dir = tempfile.TemporaryDirectory()
    tmp = Path(tmp_dir.name)
    linkage_runs, identical = [], {}
    for side in args.sizes:
        repeats = args.repeats if side <= 60 else 1
        kinds = ["matmul", "pdist"] + (["fastcluster"] if fastcluster_version else [])
        for kind in kinds + ["find_segment_candidates"]:
            case = {"side": side, "kind": kind, "repeats": repeats, "linkage_path": str(tmp / f"{kind}_{side}.npy")}
            result = _in_subprocess(case)
            print(json.dumps(result), flush=True)
            linkage_runs.append(result)
        reference = np.load(tmp / f"pdist_{side}.npy")
        for kind in kinds[:1] + kinds[2:]:
            other = np.load(tmp / f"{kind}_{side}.npy")
            identical[f"{kind}_vs_pdist_{side}"] = bool(
                np.array_equal(other[:, [0, 1, 3]], reference[:, [0, 1, 3]])
                and np.allclose(other[:, 2], reference[:, 2])
            )
    tmp_dir.cleanup()

    crf_runs = [run_crf(224, 55, 3), run_crf(448, 111, 1)]
    for run in crf_runs:
        print(json.dumps(run), flush=True)
    report = {
        "what": "Ward linkage to the root on random unit 384-d features; DenseCRF with 20 labels",
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "fastcluster": fastcluster_version,
        },
        "linkage": linkage_runs,
        "same_tree_as_scipy_pdist": identical,
        "crf": crf_runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
