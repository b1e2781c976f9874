"""ZeroCap on the tiny preset: steering, logit rules, beam search, prefix-cache exactness, selection."""

import math

import pytest
import torch
import torch.nn.functional as F

from backend.zeroguide.captioning import SteeringTrace, ZeroCapCaptioner, ZeroCapSettings, build_captioner
from backend.zeroguide.captioning.zerocap import clean_caption

SMALL = dict(beam_size=3, max_tokens=3, num_iterations=1, top_k_candidates=16)


@pytest.fixture(scope="module")
def models(tiny_models):
    return tiny_models


def clip_embed(clip, texts):
    with torch.no_grad():
        return F.normalize(clip.model.encode_text(clip.tokenizer(texts)), dim=-1)


def prompt_context(language, prompt="Image of a"):
    tokenizer = language.tokenizer
    return torch.tensor([[tokenizer.bos_token_id, *tokenizer.encode(prompt)]])


def test_steering_lowers_the_loss_and_moves_the_choice_to_the_clip_target(models):
    """Target = CLIP("Image of a" + token X): CLIP prefers X among the candidates; steering must follow."""
    top_k = 32
    captioner = build_captioner("zerocap", models, {"top_k_candidates": top_k, "forbid_non_word_tokens": False})
    context = prompt_context(models.language)
    with torch.no_grad():
        probs_before = F.softmax(models.language.model(context).logits[0, -1], dim=-1)
    candidates = probs_before.topk(top_k).indices.tolist()
    token = candidates[9]  # ranked 10th by the unsteered GPT-2
    texts = ["Image of a" + captioner.token_texts[c] for c in candidates]
    target = clip_embed(models.clip, [texts[9]])[0]
    # Independent check of the set-up: CLIP's target distribution puts most mass on X.
    clip_target = F.softmax(clip_embed(models.clip, texts) @ target / 0.01, dim=0)
    assert clip_target.argmax().item() == 9 and clip_target[9] > 0.5

    trace = captioner.next_token_distribution(1, context, target)
    clip_losses = [loss.item() for loss in trace.clip_losses]
    assert len(clip_losses) == 5
    assert all(later < earlier for earlier, later in zip(clip_losses, clip_losses[1:]))
    assert trace.fluency_losses[0].item() == pytest.approx(0.0, abs=1e-6)  # Δ = 0: p = p_before
    assert trace.fluency_losses[-1].item() > 0
    probs = trace.probs[0]
    assert probs[token] > probs_before[token]
    assert probs.argmax().item() == token != probs_before.argmax().item()


def test_without_steering_the_distribution_follows_the_reference_logit_rules(models):
    """num_iterations=0: p = softmax(tweaked logits)^0.99 · p_before^0.01, from a full (uncached) GPT-2 pass."""
    captioner = build_captioner("zerocap", models, {"num_iterations": 0})
    language = models.language
    context = prompt_context(language)
    with torch.no_grad():
        logits = language.model(context).logits[0, -1].clone()
    probs_before = F.softmax(logits, dim=-1)
    texts = captioner.token_texts
    end = language.tokenizer.encode(".")[0]
    for step in (0, 1):
        tweaked = logits.clone()
        for token, text in enumerate(texts):  # forbidden: no letter (or special), "." excepted
            if token != end and (token == language.tokenizer.bos_token_id or not any(c.isalpha() for c in text)):
                tweaked[token] = tweaked[token] / 20 if tweaked[token] > 0 else tweaked[token] * 20
        value = logits[end].item()
        if step == 0:  # the end token is damped at the first token ...
            tweaked[end] = value / 1.6 if value > 0 else value * 1.6
        else:  # ... and boosted afterwards
            tweaked[end] = value * 1.01 if value > 0 else value / 1.01
        expected = F.softmax(tweaked, dim=-1) ** 0.99 * probs_before**0.01
        expected = expected / expected.sum()
        trace = captioner.next_token_distribution(step, context, F.normalize(torch.ones(32), dim=0))
        assert trace.clip_losses == []
        torch.testing.assert_close(trace.probs_before[0], probs_before, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(trace.probs[0], expected, atol=1e-6, rtol=1e-4)


def test_fused_distribution_normalisation(models):
    target = F.normalize(torch.ones(32), dim=0)
    context = prompt_context(models.language).expand(2, -1)
    context = torch.cat([context, torch.tensor([[5], [9]])], dim=1)
    joint = build_captioner("zerocap", models, {"num_iterations": 0}).next_token_distribution(1, context, target)
    assert joint.probs.sum().item() == pytest.approx(1.0, abs=1e-5)  # the reference: over all beams at once
    per_row = build_captioner("zerocap", models, {"num_iterations": 0, "joint_beam_normalisation": False})
    rows = per_row.next_token_distribution(1, context, target).probs.sum(-1)
    torch.testing.assert_close(rows, torch.ones(2))


def reference_beam_search(next_probs, vocabulary, beam_size, max_tokens, end):
    """Plain-loop beam search with ZeroCap's rules: length-normalised scores, stopped beams carried."""
    first = next_probs([])
    order = sorted(range(vocabulary), key=lambda t: -first[t])[:beam_size]
    beams = [([t], math.log(first[t]), 1, t == end) for t in order]
    for _ in range(1, max_tokens):
        if all(stopped for *_, stopped in beams):
            break
        candidates = []
        for tokens, total, length, stopped in beams:
            if stopped:
                candidates.append((total / length, tokens + [0], total, length, True))
                continue
            probs = next_probs(tokens)
            for t in range(vocabulary):
                new_total = total + math.log(probs[t])
                candidates.append((new_total / (length + 1), tokens + [t], new_total, length + 1, t == end))
        candidates.sort(key=lambda candidate: -candidate[0])
        beams = [(tokens, total, length, stopped) for _, tokens, total, length, stopped in candidates[:beam_size]]
    finished = [(tokens[:length], total / length) for tokens, total, length, _ in beams]
    return sorted(finished, key=lambda beam: -beam[1])


def test_beam_search_matches_a_plain_loop_reference(models):
    language = models.language
    captioner = build_captioner("zerocap", models, {"beam_size": 3, "max_tokens": 5})
    vocabulary = language.model.config.vocab_size
    end = captioner.end_id
    prompt_length = prompt_context(language).shape[1]

    def fake_probs(generated):
        """A fixed random distribution per context that favours the end token as text grows."""
        generator = torch.Generator().manual_seed(1000 + hash(tuple(generated)) % 100_000)
        logits = torch.randn(vocabulary, generator=generator, dtype=torch.float64) * 3
        logits[end] += 2.0 * len(generated)
        return F.softmax(logits, dim=0)

    def fake_step(step, context, target):
        probs = torch.stack([fake_probs(row[prompt_length:].tolist()) for row in context]).float()
        return SteeringTrace(probs_before=probs, probs=probs)

    captioner._next_token_distribution = fake_step
    beams = captioner.generate(F.normalize(torch.ones(32), dim=0))
    expected = reference_beam_search(lambda tokens: fake_probs(tokens).float().double().tolist(), vocabulary, 3, 5, end)
    assert [beam.text for beam in beams] == [language.tokenizer.decode(tokens) for tokens, _ in expected]
    assert [beam.score for beam in beams] == pytest.approx([score for _, score in expected], abs=1e-4)


def test_prefix_cache_gives_the_same_captions_as_plain_encoding(models):
    target = clip_embed(models.clip, ["Image of a dog on the beach"])
    cached = build_captioner("zerocap", models, SMALL).generate(target[0])
    plain = build_captioner("zerocap", models, {"use_prefix_cache": False, **SMALL}).generate(target[0])
    assert [beam.text for beam in cached] == [beam.text for beam in plain]
    assert [beam.score for beam in cached] == pytest.approx([beam.score for beam in plain], abs=1e-4)


def test_caption_keeps_the_beam_clip_likes_best_even_in_inference_mode(models):
    captioner = build_captioner("zerocap", models, SMALL)
    targets = clip_embed(models.clip, ["Image of a red car", "Image of a sandy beach"])
    with torch.inference_mode():
        captions = captioner.caption(targets)
    assert len(captions) == 2
    for caption, target in zip(captions, targets):
        beams = captioner.generate(target)
        scored = ["Image of a" + beam.text for beam in beams]
        scores = clip_embed(models.clip, scored) @ target
        best = scores.argmax().item()
        assert caption.scored_text == scored[best]
        assert caption.text == clean_caption(beams[best].text)
        assert caption.clip_score == pytest.approx(scores[best].item(), abs=1e-4)
        assert len(caption.alternatives) == len(beams) - 1
        assert all(score <= caption.clip_score + 1e-6 for _, score in caption.alternatives)


def test_settings_defaults_are_the_papers_and_bad_values_are_refused(models):
    settings = ZeroCapSettings()
    assert (settings.prompt, settings.beam_size, settings.max_tokens, settings.num_iterations) == (
        "Image of a",
        5,
        15,
        5,
    )
    assert (settings.step_size, settings.clip_loss_scale, settings.clip_loss_temperature) == (0.3, 1.0, 0.01)
    assert (settings.fluency_scale, settings.top_k_candidates, settings.end_factor) == (0.2, 512, 1.01)
    assert (settings.fusion_factor, settings.grad_norm_factor, settings.forbidden_factor) == (0.99, 0.9, 20.0)
    for bad in (dict(prompt=" "), dict(beam_size=0), dict(fusion_factor=1.5), dict(clip_loss_temperature=0)):
        with pytest.raises(ValueError):
            ZeroCapSettings(**bad)
    with pytest.raises(ValueError, match="one GPT-2 token"):
        ZeroCapCaptioner(models.clip, models.language, ZeroCapSettings(end_token=" the end"))


def test_clean_caption():
    assert clean_caption(" dog running on the grass.") == "dog running on the grass"
    assert clean_caption(" Red car") == "red car"  # no final period: nothing cut
    assert clean_caption(" sky..") == "sky"
