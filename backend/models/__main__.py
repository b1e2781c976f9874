"""``python -m backend.models fetch [--preset cpu]``: every weight of a preset, fetched ahead.

For a machine with network (``make run`` calls it), a Docker image, or an air-gapped copy (fetch
on one machine, copy the Hugging Face cache and ``WEIGHTS_DIR``). Each model loads the library's
standard way, which fills its cache; SAM's official checkpoint goes into ``WEIGHTS_DIR`` (default
``MODEL_DIR/weights``) with its published SHA-256 checked. GPT-2 (for ZeroCap) with
``--with-language``, and always for a preset that captions with ZeroCap (``paper``). Exit status 0 when everything is there, 2 when something is missing.
"""

from __future__ import annotations

import argparse
import sys

from .presets import get_preset, list_presets
from .weights import MissingWeightsError

PARTS = ("clip", "dino", "dinov2", "sam")


def fetch(preset_name: str, with_language: bool) -> list[str]:
    """Load each model of the preset once (downloading what is missing); the problems, if any."""
    from .registry import FoundationModels

    preset = get_preset(preset_name)
    if preset.random_weights:
        return []
    models = FoundationModels(preset, device="cpu")
    problems = []
    for part in PARTS:
        try:
            getattr(models, part)
            print(f"{part}: ready", file=sys.stderr)
        except MissingWeightsError as error:
            problems.append(f"{part}: {error}")
    if preset.name == "paper":
        try:  # the authors' Sentence-BERT, for the evaluation's TT and TGQ (MiniLM ships with the code)
            from sentence_transformers import SentenceTransformer

            from .sentence import PAPER_SENTENCE_MODEL

            SentenceTransformer(PAPER_SENTENCE_MODEL)
            print("sentence (all-mpnet-base-v2): ready", file=sys.stderr)
        except Exception as error:  # noqa: BLE001 - a hub error of any kind; reported, not fatal
            problems.append(f"sentence (all-mpnet-base-v2): {error}")
    if with_language or preset.method_overrides.get("zeroguide", {}).get("captioner") == "zerocap":
        try:
            _fetch_language(preset.language)
            print("language: ready", file=sys.stderr)
        except (MissingWeightsError, OSError) as error:
            problems.append(f"language: {error}")
    return problems


def _fetch_language(name: str) -> None:
    """GPT-2 into the Hugging Face cache (the service then loads it with ``local_files_only``)."""
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast

    GPT2TokenizerFast.from_pretrained(name)
    GPT2LMHeadModel.from_pretrained(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.models", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_parser = commands.add_parser("fetch", help="fetch every weight of a preset ahead")
    fetch_parser.add_argument("--preset", default="cpu", choices=list_presets())
    fetch_parser.add_argument(
        "--with-language",
        action="store_true",
        help="also GPT-2, for the ZeroCap captioner (always for a preset that captions with it: paper)",
    )
    args = parser.parse_args(argv)
    problems = fetch(args.preset, args.with_language)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
