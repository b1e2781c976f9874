"""``python -m backend.zeroguide IMAGE... --preset cpu --out DIR``: name every segment of images.

Writes, per image, ``NAME.json`` (segments with text, scores and mask as COCO RLE) and
``NAME.overlay.png`` (each segment coloured, its text written on it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..models import MissingWeightsError, list_presets, load_models
from ..models.settings import SegmentEncoding
from ..outputs import ReadableImages, draw_overlay, write_json
from .captioning.registry import captioner_names, captioner_settings
from .settings import ZeroGuideSettings

log = logging.getLogger("backend.zeroguide")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend.zeroguide", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--preset", default="cpu", choices=list_presets(), help="foundation models (default: cpu)")
    parser.add_argument(
        "--device", default=None, help="torch device (default: $DEVICE, else CUDA if present, else CPU)"
    )
    parser.add_argument(
        "--captioner",
        choices=captioner_names(),
        default=None,
        help="text generator (section 3.3; default: the preset's: zerocap for paper, retrieval otherwise)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path("~/.cache/zeroguide").expanduser(),
        help="where the captioner may cache on disk, if it caches (default: ~/.cache/zeroguide)",
    )
    parser.add_argument("--n-clusters", type=int, default=None, help="n of section 3.1 (paper: 20)")
    parser.add_argument("--merge-threshold", type=float, default=None, help="tau_merge (paper: 0.8)")
    parser.add_argument("--no-crf", action="store_true", help="skip the DenseCRF refinement")
    parser.add_argument("--no-merge", action="store_true", help="ablation: no merging (Table 3)")
    parser.add_argument("--no-global-subtraction", action="store_true", help="ablation: masking without Eqs. 2-4")
    parser.add_argument("--crop-and-mask", action="store_true", help="ablation: the crop-and-mask baseline")
    return parser


def settings_from_args(args: argparse.Namespace, preset_overrides: dict) -> ZeroGuideSettings:
    settings = ZeroGuideSettings.for_preset(preset_overrides)
    changes = {}
    captioner = args.captioner or settings.captioner
    if captioner != settings.captioner or args.cache_dir:
        # another captioner starts from its own defaults: the options it replaces were not its own
        options = captioner_settings(captioner, settings.captioner_options if captioner == settings.captioner else None)
        changes["captioner"] = captioner
        changes["captioner_options"] = options.with_cache_dir(str(args.cache_dir)) if args.cache_dir else options
    if args.n_clusters is not None:
        changes["n_clusters"] = args.n_clusters
    if args.merge_threshold is not None:
        changes["merge_threshold"] = args.merge_threshold
    if args.no_crf:
        changes["use_crf"] = False
    if args.no_merge:
        changes["merge"] = False
    encoding = settings.segment_encoding
    if args.no_global_subtraction or args.crop_and_mask:
        changes["segment_encoding"] = SegmentEncoding(
            method="crop" if args.crop_and_mask else encoding.method,
            masked_layers=encoding.masked_layers,
            subtract_global=encoding.subtract_global and not args.no_global_subtraction,
            sigma_squared=encoding.sigma_squared,
        )
    return settings.replace(**changes)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    from .pipeline import ZeroGuidanceSegmenter

    models = load_models(args.preset, args.device)
    try:
        settings = settings_from_args(args, models.method_overrides("zeroguide"))
    except ValueError as error:
        log.error("invalid settings: %s", error)
        return 2
    segmenter = ZeroGuidanceSegmenter(models, settings)
    args.out.mkdir(parents=True, exist_ok=True)
    banner = "tiny preset: random weights, not a real result" if models.random_weights else None
    readable = ReadableImages(args.images, "zero-guidance", log)
    for path, image in readable:
        try:
            result = segmenter.segment(image)
        except MissingWeightsError as error:
            log.error("%s", error)
            return 2
        write_json(args.out / f"{path.stem}.json", result.to_json(path.name))
        overlay = draw_overlay(image, [s.mask for s in result.segments], [s.text for s in result.segments], banner)
        overlay.save(args.out / f"{path.stem}.overlay.png")
    if readable.failures:
        log.error("%d of %d images failed", readable.failures, len(args.images))
    return 1 if readable.failures else 0


if __name__ == "__main__":
    sys.exit(main())
