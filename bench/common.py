"""What the end-to-end benchmarks share: the machine's report, peak memory, and the reference.

The reference is segment-anything's own ``SamPredictor.set_image`` with SAM ViT-B in float32 (random
weights, same cost as real ones) on the benchmark's image, timed in a child process of the same
run, before and after the benchmark itself: figures are compared as ratios to it, which holds on a
shared machine whose speed changes from hour to hour (and keeps the reference's 3-4 GB of float32
attention out of the benchmark's peak memory).
"""

from __future__ import annotations

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

import numpy as np

RESULTS_DIR = Path(__file__).with_name("results")
MEMORY_LIMIT_MB = 2500


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (other jobs on this machine)."""
    return [round(value, 2) for value in os.getloadavg()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def machine_report(models) -> dict:
    """CPU, flags, threads, torch and the dtype the models compute in."""
    import torch

    from backend.models.precision import cpu_bf16_flags

    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_bf16_flags(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "dtype": models.dtype_name,
    }


class SetImageReference:
    """``SamPredictor.set_image`` (ViT-B, float32) on ``image``, timed in a child process on demand.

    The child builds the model once and runs one untimed call; each :meth:`measure` times
    ``repeats`` more calls.
    """

    def __init__(self, image: np.ndarray, threads: int):
        self._file = tempfile.NamedTemporaryFile(suffix=".npy", delete=False)
        np.save(self._file, image)
        self._file.close()
        script = Path(__file__).with_name("sam_reference.py")
        self._child = subprocess.Popen(
            [sys.executable, str(script), self._file.name, str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        self._read()  # built and warmed up
        self.seconds: list[float] = []
        self.peak_rss_mb = 0.0

    def _read(self) -> dict:
        line = self._child.stdout.readline()
        if not line:
            raise RuntimeError("the set_image reference process died")
        return json.loads(line)

    def measure(self, repeats: int = 2) -> list[float]:
        self._child.stdin.write(f"{repeats}\n")
        self._child.stdin.flush()
        answer = self._read()
        self.seconds.extend(answer["seconds"])
        self.peak_rss_mb = answer["peak_rss_mb"]
        return answer["seconds"]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def close(self) -> None:
        if self._child.poll() is None:
            self._child.stdin.close()
            self._child.wait(timeout=60)
        os.unlink(self._file.name)

    def report(self) -> dict:
        return {
            "what": "segment-anything SamPredictor.set_image, SAM ViT-B, float32, random weights, same image, "
            "timed in a child process before and after the benchmark",
            "seconds": [round(s, 3) for s in self.seconds],
            "median_s": round(self.median, 3),
            "child_peak_rss_mb": self.peak_rss_mb,
        }


def timed(fn, repeats: int, before=None) -> tuple[float, list[dict]]:
    """Median wall seconds of ``fn(timings)`` over ``repeats`` calls, and each call's timings.

    ``before`` runs untimed before each call (e.g. dropping SAM's cached embedding).
    """
    runs = []
    for _ in range(repeats):
        if before is not None:
            before()
        timings: dict[str, float] = {}
        cpu = time.process_time()
        start = time.perf_counter()
        fn(timings)
        wall = time.perf_counter() - start
        runs.append({"total": round(wall, 4), "cpu_s": round(time.process_time() - cpu, 3), **timings})
    return round(statistics.median(r["total"] for r in runs), 3), runs


def matmul_rate_gflops(dtype, shape: tuple[int, int, int] = (1370, 384, 1536), repeats: int = 50) -> float:
    """This CPU's best rate, GFLOP/s, on one (m x k) @ (k x n) product in ``dtype`` over ``repeats``
    runs (the best, not the median: a floor computed from it is a lower bound even when other jobs
    slow some runs down).

    The default is DINOv2 ViT-S/14's MLP product at 518 px, the base prediction's largest kind.
    """
    import torch

    m, k, n = shape
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    seconds = []
    with torch.inference_mode():
        a @ b
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            seconds.append(time.perf_counter() - start)
    return round(2 * m * k * n / min(seconds) / 1e9, 1)


def counted_gflop(fn) -> float:
    """The GFLOP of the matrix products, convolutions and attention ``fn()`` runs (PyTorch's
    ``FlopCounterMode``: element-wise work such as softmax and LayerNorm is not counted). Attention
    takes PyTorch's math path while counting: the counter does not see inside the fused CPU kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, sdpa_kernel([SDPBackend.MATH]):
        fn()
    return counter.get_total_flops() / 1e9


def median_stages(runs: list[dict]) -> dict[str, float]:
    """Per-step medians over runs (a step missing from a run counts 0)."""
    keys = [k for k in runs[0] if k not in ("cpu_s",)]
    for run in runs[1:]:
        keys += [k for k in run if k not in keys and k != "cpu_s"]
    return {k: round(statistics.median(r.get(k, 0.0) for r in runs), 3) for k in keys}


def results_path(name: str, dtype: str, default_dtype: str) -> Path:
    """``results/<name>.json`` for the machine's default dtype, ``results/<name>-<dtype>.json`` else."""
    return RESULTS_DIR / (f"{name}.json" if dtype == default_dtype else f"{name}-{dtype}.json")


def write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
