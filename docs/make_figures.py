"""Regenerate the pictures in docs/images/ from the code as it is.

    PYTHONPATH=. python docs/make_figures.py [--preset tiny]

With the default ``tiny`` preset (random weights) the segments follow colour and texture only
through DINO's random features and the CRF, and the names are arbitrary vocabulary entries: the
pictures show what the pipeline produces and how it is drawn, not how good it is. With real
weights (``--preset cpu`` and the weights of docs/models.md) they show real results.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from backend.fmbseg import FMbSegPredictor
from backend.models import load_models
from backend.outputs import draw_overlay
from backend.zeroguide import ZeroGuidanceSegmenter
from backend.zeroguide.clustering import find_segment_candidates
from backend.zeroguide.crf import upsample_label_map

HERE = Path(__file__).parent / "images"


def scene(size: int = 256, seed: int = 3) -> np.ndarray:
    """A synthetic scene: sky, ground, a sun and two blobs, with texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    image = np.zeros((size, size, 3))
    image[yy < 0.55] = (0.45, 0.65, 0.95)
    image[yy >= 0.55] = (0.35, 0.55, 0.2)
    image[((yy - 0.2) ** 2 + (xx - 0.75) ** 2) < 0.01] = (1.0, 0.85, 0.2)
    image[((yy - 0.7) ** 2 + (xx - 0.3) ** 2) < 0.02] = (0.55, 0.3, 0.15)
    image[(np.abs(yy - 0.75) < 0.08) & (np.abs(xx - 0.7) < 0.12)] = (0.8, 0.1, 0.1)
    image += rng.normal(0, 0.04, image.shape)
    return (image.clip(0, 1) * 255).astype(np.uint8)


def panel_row(panels: list[tuple[str, Image.Image]], banner: str | None) -> Image.Image:
    width = sum(p.width for _, p in panels) + 10 * (len(panels) - 1)
    height = panels[0][1].height + 22 + (18 if banner else 0)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    top = 18 if banner else 0
    if banner:
        draw.text((4, 2), banner, fill=(200, 0, 0))
    x = 0
    for title, picture in panels:
        draw.text((x + 4, top + 4), title, fill=(0, 0, 0))
        canvas.paste(picture, (x, top + 22))
        x += picture.width + 10
    return canvas


def zeroguide_figure(models, image: np.ndarray, banner: str | None) -> Image.Image:
    segmenter = ZeroGuidanceSegmenter(models)
    settings = segmenter.settings
    features = models.dino(image, settings.dino_image_size, settings.dino_stride)
    candidates = find_segment_candidates(
        features, n_clusters=settings.n_clusters, similarity_threshold=settings.dino_similarity_threshold
    )
    grid = upsample_label_map(candidates.label_map, image.shape[:2])
    crf = segmenter._pixel_labels(image, features, candidates.label_map)
    result = segmenter.segment(image)

    def regions(label_map):
        return draw_overlay(image, [label_map == i for i in np.unique(label_map)], [""] * len(np.unique(label_map)))

    final = draw_overlay(image, [s.mask for s in result.segments], [s.text for s in result.segments])
    return panel_row(
        [
            ("input", Image.fromarray(image)),
            (f"1. DINO keys, Ward, T_dino ({len(candidates.segment_ids)})", regions(grid)),
            ("   DenseCRF", regions(crf)),
            (f"2-4. CLIP, names, merged ({len(result.segments)})", final),
        ],
        banner,
    )


def fmbseg_figure(models, image: np.ndarray, banner: str | None) -> Image.Image:
    predictor = FMbSegPredictor(models)
    predictor = FMbSegPredictor(models, predictor.settings.replace(presence_min_crops=0))
    classes = ["sky", "grass", "sun", "car"]
    pseudo = predictor.pseudo_label(image, classes)
    stage11 = [m for m in pseudo.masks if m.source == "1.1"]
    first = draw_overlay(image, [m.mask for m in stage11], [m.class_name for m in stage11])
    draw = ImageDraw.Draw(first)
    for m in stage11:
        for x, y in m.points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), outline=(0, 255, 0), width=2)
    stage12 = [m for m in pseudo.masks if m.source == "1.2"]
    second = draw_overlay(image, [m.mask for m in stage12], [m.class_name for m in stage12])
    label_map = pseudo.label_map()
    present = [i for i in range(len(classes)) if (label_map == i).any()]
    combined = draw_overlay(image, [label_map == i for i in present], [classes[i] for i in present])
    return panel_row(
        [
            ("input", Image.fromarray(image)),
            ("Stage 1.1: CLIP points -> SAM", first),
            ("Stage 1.2: SAM masks labelled", second),
            ("pseudo-label map", combined),
        ],
        banner,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args()
    models = load_models(args.preset)
    banner = "tiny preset: RANDOM WEIGHTS - shows the pipeline's outputs, not their quality" if models.random_weights else None
    HERE.mkdir(exist_ok=True)
    image = scene()
    zeroguide_figure(models, image, banner).save(HERE / "zeroguide-pipeline.png")
    fmbseg_figure(models, image, banner).save(HERE / "fmbseg-stage1.png")


if __name__ == "__main__":
    main()
