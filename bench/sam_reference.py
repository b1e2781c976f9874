"""Child process of bench/common.py: segment-anything's own ``SamPredictor.set_image`` (SAM ViT-B,
float32, random weights) on one image, timed on demand.

    python bench/sam_reference.py IMAGE.npy THREADS

Builds the model, runs one untimed call, prints ``{"ready": true}``; then for each line ``N`` read
from stdin, times N calls and prints ``{"seconds": [...], "peak_rss_mb": ...}``.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np
import torch


def main() -> None:
    image = np.load(sys.argv[1])
    torch.set_num_threads(int(sys.argv[2]))
    from segment_anything import SamPredictor, sam_model_registry

    torch.manual_seed(0)
    predictor = SamPredictor(sam_model_registry["vit_b"](checkpoint=None).eval())
    with torch.inference_mode():
        predictor.set_image(image)
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            seconds = []
            for _ in range(int(line)):
                start = time.perf_counter()
                predictor.set_image(image)
                seconds.append(time.perf_counter() - start)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(json.dumps({"seconds": seconds, "peak_rss_mb": round(peak, 1)}), flush=True)


if __name__ == "__main__":
    main()
