"""Rating the reassigned labels T_i* (zero-guidance section 4.2): Table 1's human columns.

The paper verifies a segment's reassigned test label T_i* by human scores h >= k: three raters
rate how well T_i* describes the segment, on the same 0-3 scale as the predicted texts. Here:

1. ``python -m plugin rate predictions --project SOURCE_ID --out DIR``: the source project's
   predicted segments as prediction files (``DIR/<image>.json``, the format of ``python -m
   backend.zeroguide``: segment ids are the Label Studio region ids) and their images
   (``DIR/images/<image>``), named as ``rate collect`` names them;
2. ``python -m backend.evaluation reassign DIR --method st --images DIR/images ...`` (or tt):
   T_i* of every segment;
3. ``python -m plugin rate setup --project SOURCE_ID --target reassigned --reassigned FILE``: rater
   batch projects in which each segment is shown with its T_i* (task data ``label``, the predicted
   text kept as ``predicted_text``);
4. ``python -m plugin rate collect``: records with ``label`` = T_i*, which ``python -m
   backend.evaluation segmentation --ratings`` (and ``reproduce --ratings``) turn into the h = 3,
   h >= 2 and h >= 1 columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from backend.evaluation.files import load_reassignments
from backend.outputs import encode_rle, write_json
from plugin.connection import LabelStudioConnection
from plugin.errors import PluginError
from plugin.rating.segments import RatingSegment, predicted_segments

__all__ = ["write_prediction_files", "reassigned_labels", "with_reassigned_labels"]


def write_prediction_files(
    connection: LabelStudioConnection, project_id: int, out_dir: Path, text_control: str | None = None
) -> tuple[int, int]:
    """Step 1 above: (images, segments) written."""
    segments = predicted_segments(connection, project_id, text_control).segments
    by_image: dict[str, list[RatingSegment]] = {}
    for segment in segments:
        by_image.setdefault(segment.image_name, []).append(segment)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for image_name, group in by_image.items():
        (out_dir / "images" / image_name).write_bytes(connection.download(group[0].source_image))
        write_json(
            out_dir / f"{Path(image_name).stem}.json",
            {
                "image": image_name,
                "image_size": list(group[0].mask.shape),
                "source_project": project_id,
                "source_task": group[0].source_task,
                "model_version": group[0].model_version,
                "segments": [
                    {"id": segment.region, "text": segment.text, "mask_rle": encode_rle(segment.mask)}
                    for segment in group
                ],
            },
        )
    return len(by_image), len(segments)


def reassigned_labels(path: Path) -> dict[tuple[str, str], str]:
    """``{(image name, region id): T_i*}`` from a ``python -m backend.evaluation reassign`` output."""
    try:
        _, _, table = load_reassignments(path)
    except ValueError as error:
        raise PluginError(f"--reassigned {path}: {error}") from None
    return {(image, segment): item.label for image, segments in table.items() for segment, item in segments.items()}


def with_reassigned_labels(
    segments: Sequence[RatingSegment], labels: Mapping[tuple[str, str], str]
) -> list[RatingSegment]:
    """The segments to rate with their T_i* as the shown text; every segment needs one."""
    missing = [segment for segment in segments if (segment.image_name, segment.region) not in labels]
    if missing:
        named = ", ".join(f"{s.image_name} region {s.region}" for s in missing[:5])
        raise PluginError(
            f"the reassignment file has no label for {len(missing)} of the {len(segments)} predicted segments "
            f"({named}{', ...' if len(missing) > 5 else ''}): run `python -m plugin rate predictions` again and "
            "reassign its files"
        )
    relabelled = []
    for segment in segments:
        label = labels[(segment.image_name, segment.region)]
        relabelled.append(segment.relabelled(label))
    return relabelled
