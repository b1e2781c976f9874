"""Print the end-to-end benchmarks' table (``make bench`` runs it last) from bench/results/.

Each row is one figure of bench_zeroguide.py or bench_fmbseg.py, in each dtype measured: the
median seconds, segment-anything's ``SamPredictor.set_image`` (SAM ViT-B, float32) on the same
image in the same run, their ratio against the target, the run's peak memory and the machine's
load before and after; and the FMbSeg base prediction's compute floor (its counted GFLOP at the
CPU's measured matrix-product rate), which says whether its target can be met on this CPU at all.

    python bench/report.py [--results bench/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROWS = {
    "zeroguide": [("zero-guidance, total", lambda r: r["median_s"]["total"], "total")],
    "fmbseg": [
        ("FMbSeg Stage 1", lambda r: r["stage1_pseudo_labels_s"], "stage1_pseudo_labels"),
        ("FMbSeg Stage 2 base", lambda r: r["stage2_base_s"], "stage2_base"),
        ("FMbSeg Stage 2 refined", lambda r: r["stage2_refined_s"], "stage2_refined"),
    ],
}


def rows(results: Path) -> list[str]:
    lines = [
        "| figure | dtype | s | set_image s | ratio | target | peak RSS MB | load before -> after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, figures in ROWS.items():
        for path in sorted(results.glob(f"{name}*.json")):
            report = json.loads(path.read_text())
            if "ratio_to_set_image" not in report:
                continue  # a result of the earlier benchmark, without the reference
            reference = report["reference_set_image"]["median_s"]
            for label, seconds, key in figures:
                ratio = report["ratio_to_set_image"][key]
                target = report["target_ratio"][key]
                verdict = "ok" if ratio <= target else "MISSED"
                lines.append(
                    f"| {label} | {report['dtype']} | {seconds(report):.2f} | {reference:.1f} | "
                    f"{ratio:.3f} | <= {target} {verdict} | {report['peak_rss_mb']:.0f} "
                    f"{'ok' if report['peak_rss_mb'] < report['memory_limit_mb'] else 'OVER'} | "
                    f"{report['load_average_before'][0]} -> {report['load_average_after'][0]} |"
                )
            floor = report.get("stage2_base_floor")
            if floor is not None:  # the base prediction's products alone at this CPU's measured rate
                target = report["target_ratio"]["stage2_base"]
                reachable = "reachable" if floor["ratio_to_set_image"] <= target else "UNREACHABLE on this CPU"
                lines.append(
                    f"| FMbSeg Stage 2 base: compute floor ({floor['gflop']} GFLOP at "
                    f"{floor['matmul_gflops_per_s']} GFLOP/s) | {report['dtype']} | {floor['seconds']:.2f} | "
                    f"{reference:.1f} | {floor['ratio_to_set_image']:.3f} | <= {target} {reachable} | | |"
                )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args()
    print("\n".join(rows(args.results)))


if __name__ == "__main__":
    main()
