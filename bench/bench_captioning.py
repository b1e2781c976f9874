"""Benchmark of the text step (zero-guidance section 3.3): retrieval and ZeroCap per segment.

All models have random weights (no pretrained weights can be had here); the cost of a forward
pass does not depend on the values. Measured on the CPU preset's architectures:

- retrieval: open_clip ViT-B-16 (``pretrained=None``): the one-off embedding of the built-in
  vocabulary (cold, then read back from the disk cache) and the time per segment;
- ZeroCap: GPT-2 124M (``GPT2Config()``) with CLIP ViT-B-16's text tower at the paper's settings
  (beam 5, top-512, 5 iterations). One token step is timed with and without the CLIP prefix cache,
  split into its GPT-2 and CLIP parts, and the 15-token caption is extrapolated from it (the
  captions stop at "." earlier, so this is an upper bound). GPT-2's tokenizer cannot be downloaded:
  a byte-level BPE of GPT-2's size (50,257 tokens) is trained here on the words of CLIP's
  vocabulary, so candidate texts are English sub-words of realistic length.

Usage: ``python bench/bench_captioning.py [--segments 20] [--skip-zerocap] [--out bench/results/captioning.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

CPU_TIMES: dict[str, float] = {}  # label -> median process CPU seconds of the timed call


def timed(function, repeats: int = 1, label: str | None = None) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls, and the last result.

    The median process CPU time is kept in ``CPU_TIMES[label]``: on a shared, loaded machine it
    tracks the work done better than wall time (with one thread it is the idle-machine wall time).
    """
    times, cpu_times, result = [], [], None
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = function()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    if label is not None:
        CPU_TIMES[label] = round(statistics.median(cpu_times), 4)
    return statistics.median(times), result


def clip_b16():
    import open_clip

    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    return types.SimpleNamespace(model=model, tokenizer=open_clip.get_tokenizer("ViT-B-16"), name="ViT-B-16-random")


def bench_retrieval(clip, segments: int) -> dict:
    from backend.zeroguide.captioning import RetrievalCaptioner, RetrievalSettings

    with tempfile.TemporaryDirectory() as cache_dir:
        settings = RetrievalSettings(cache_dir=cache_dir)
        cold = RetrievalCaptioner(clip, settings)
        embed_seconds, _ = timed(lambda: cold.vocabulary_embeddings, label="vocabulary_embedding_cold")
        cache_bytes = cold.cache_path().stat().st_size
        warm = RetrievalCaptioner(clip, settings)
        load_seconds, _ = timed(lambda: warm.vocabulary_embeddings)
    dim = warm.vocabulary_embeddings.shape[1]
    targets = F.normalize(torch.randn(segments, dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    batch_seconds, _ = timed(lambda: warm.caption(targets), repeats=5, label="caption_batch")
    single_seconds, _ = timed(lambda: warm.caption(targets[:1]), repeats=5, label="caption_single")
    return {
        "clip": "open_clip ViT-B-16, random weights",
        "vocabulary_phrases": len(warm.vocabulary),
        "prompt_templates": list(settings.prompt_templates),
        "vocabulary_embedding_cold_s": round(embed_seconds, 3),
        "vocabulary_embedding_from_disk_cache_s": round(load_seconds, 4),
        "cache_file_bytes": cache_bytes,
        f"caption_{segments}_segments_s": round(batch_seconds, 5),
        "per_segment_in_batch_ms": round(1000 * batch_seconds / segments, 3),
        "single_segment_ms": round(1000 * single_seconds, 3),
    }


def gpt2_sized_tokenizer(clip_tokenizer):
    """A byte-level BPE with GPT-2's 50,257 tokens, trained on CLIP's vocabulary words (bench only)."""
    from backend.models.language import build_tiny_tokenizer

    words = [w[:-4] for w in clip_tokenizer.encoder if w.endswith("</w>") and w[:-4].isalpha()]
    words += [w.capitalize() for w in words]
    corpus = tuple(" ".join(words[i : i + 50]) for i in range(0, len(words), 50))
    return build_tiny_tokenizer(corpus, vocab_size=50257)


def bench_zerocap(clip) -> dict:
    from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

    from backend.models.language import LanguageModel
    from backend.zeroguide.captioning import ZeroCapCaptioner, ZeroCapSettings

    tokenizer_seconds, tokenizer = timed(lambda: gpt2_sized_tokenizer(clip.tokenizer))
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer))).eval().requires_grad_(False)
    language = LanguageModel(gpt2, tokenizer, "gpt2 (random weights)", is_tiny=False)
    settings = ZeroCapSettings()
    captioner = ZeroCapCaptioner(clip, language, settings)
    plain = ZeroCapCaptioner(clip, language, ZeroCapSettings(use_prefix_cache=False))
    tables_seconds, _ = timed(lambda: (captioner.token_texts, captioner.forbidden_ids))
    plain._token_texts, plain._forbidden_ids = captioner._token_texts, captioner._forbidden_ids

    target = F.normalize(
        torch.randn(clip.model.text_projection.shape[1], generator=torch.Generator().manual_seed(1)), dim=0
    )
    prompt = [tokenizer.bos_token_id, *tokenizer.encode(settings.prompt)]
    first_context = torch.tensor([prompt])
    # A mid-caption step: 5 beams, 4 generated tokens each.
    generated = [
        tokenizer.encode(text)
        for text in (" dog on the", " red car in", " sandy beach with", " crowd of people", " tall tree next")
    ]
    length = min(len(g) for g in generated)
    beam_context = torch.tensor([prompt + g[:length] for g in generated])

    first_seconds, first_trace = timed(
        lambda: captioner.next_token_distribution(0, first_context, target), label="first_step"
    )
    step_seconds, step_trace = timed(
        lambda: captioner.next_token_distribution(1, beam_context, target), label="step_prefix_cache"
    )
    plain_step_seconds, _ = timed(lambda: plain.next_token_distribution(1, beam_context, target), label="step_plain")

    # Parts of one iteration with 5 beams: GPT-2 forward + backward on the shifted cache ...
    with torch.no_grad():
        past = gpt2(beam_context[:, :-1], use_cache=True).past_key_values
        past = [(layer.keys, layer.values) for layer in past.layers]

    def gpt2_iteration():
        shifts = [(torch.zeros_like(k, requires_grad=True), torch.zeros_like(v, requires_grad=True)) for k, v in past]
        logits = gpt2(
            beam_context[:, -1:], past_key_values=DynamicCache([(k + a, v + b) for (k, v), (a, b) in zip(past, shifts)])
        ).logits
        torch.autograd.grad(logits[:, -1].log_softmax(-1)[:, 0].sum(), [t for pair in shifts for t in pair])

    gpt2_seconds, _ = timed(gpt2_iteration, repeats=3, label="gpt2_forward_backward")
    # ... and CLIP on the 5 x 512 candidate texts, with and without the prefix cache.
    with torch.no_grad():
        probs = F.softmax(gpt2(beam_context).logits[:, -1], dim=-1)
    top = probs.topk(settings.top_k_candidates, dim=-1).indices.tolist()
    prefixes = [captioner._decode_context(row) for row in beam_context]
    texts = [prefixes[r] + captioner.token_texts[t] for r, row in enumerate(top) for t in row]
    rows = [r for r, row in enumerate(top) for _ in row]
    encoder = captioner.text_encoder
    states_seconds, states = timed(lambda: [encoder.prefix_state(p) for p in prefixes], label="clip_prefix_states")
    cached_clip_seconds, cached = timed(
        lambda: encoder.encode_continuations(states, rows, texts, settings.clip_batch_size),
        label="clip_candidates_prefix_cache",
    )
    plain_clip_seconds, plain_embeddings = timed(
        lambda: encoder.encode(texts, batch_size=settings.clip_batch_size), label="clip_candidates_plain"
    )
    tokenize_seconds, tokens = timed(lambda: encoder.tokenize(texts))
    max_difference = float((cached - plain_embeddings).abs().max())

    steps = settings.max_tokens
    caption_estimate = first_seconds + (steps - 1) * step_seconds
    plain_estimate = first_seconds + (steps - 1) * plain_step_seconds
    cpu_estimate = CPU_TIMES["first_step"] + (steps - 1) * CPU_TIMES["step_prefix_cache"]
    cpu_plain_estimate = CPU_TIMES["first_step"] + (steps - 1) * CPU_TIMES["step_plain"]
    return {
        "language_model": "GPT-2 124M (GPT2Config()), random weights",
        "clip_text_tower": "open_clip ViT-B-16, random weights",
        "settings": {
            "beam_size": settings.beam_size,
            "top_k_candidates": settings.top_k_candidates,
            "num_iterations": settings.num_iterations,
            "max_tokens": settings.max_tokens,
        },
        "bench_tokenizer_training_s": round(tokenizer_seconds, 2),
        "token_tables_s": round(tables_seconds, 2),
        "first_step_1_context_s": round(first_seconds, 2),
        "step_5_beams_prefix_cache_s": round(step_seconds, 2),
        "step_5_beams_plain_s": round(plain_step_seconds, 2),
        "clip_texts_encoded_per_step": step_trace.encoded_texts,
        "clip_texts_scored_per_step": settings.beam_size * settings.top_k_candidates * settings.num_iterations,
        "parts_of_one_iteration": {
            "gpt2_forward_backward_s": round(gpt2_seconds, 3),
            "clip_prefix_states_5_beams_s": round(states_seconds, 3),
            "clip_2560_candidates_prefix_cache_s": round(cached_clip_seconds, 3),
            "clip_2560_candidates_plain_trimmed_s": round(plain_clip_seconds, 3),
            "clip_tokenize_2560_s": round(tokenize_seconds, 3),
            "mean_clip_tokens_per_candidate": round(statistics.mean(len(t) for t in tokens), 2),
            "max_abs_difference_cached_vs_plain": max_difference,
        },
        "caption_estimate_15_tokens_s": round(caption_estimate, 1),
        "caption_estimate_15_tokens_plain_s": round(plain_estimate, 1),
        "caption_estimate_15_tokens_cpu_s": round(cpu_estimate, 1),
        "caption_estimate_15_tokens_plain_cpu_s": round(cpu_plain_estimate, 1),
        "estimate_note": "first step (1 context) + 14 steps of 5 beams; captions that stop at '.' are shorter",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--skip-zerocap", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "captioning.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    clip = clip_b16()
    results = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average_1_5_15_before": [round(x, 2) for x in load_before],
        },
        "note": "random weights everywhere (same cost as real ones); *_s: wall-clock seconds; "
        "process_cpu_s: process CPU seconds of the same calls (robust to other load on a shared machine)",
        "retrieval": bench_retrieval(clip, args.segments),
    }
    print(json.dumps(results["retrieval"], indent=2))
    if not args.skip_zerocap:
        results["zerocap"] = bench_zerocap(clip)
        print(json.dumps(results["zerocap"], indent=2))
    results["process_cpu_s"] = dict(CPU_TIMES)
    results["machine"]["load_average_1_5_15_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
