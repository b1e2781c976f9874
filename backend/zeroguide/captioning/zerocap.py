"""ZeroCap: GPT-2 steered by CLIP towards a target embedding (zero-guidance paper, section 3.3).

The zero-guidance paper names each segment with ZeroCap (Tewel et al., CVPR 2022, "Zero-Shot
Image-to-Text Generation for Visual-Semantic Arithmetic"): a frozen GPT-2 completes the prompt
"Image of a" while, at every generated token, additive shifts on its attention keys and values are
optimised so that the next-token distribution favours tokens whose text CLIP finds close to the
segment embedding. This module follows the reference implementation (``model/ZeroCLIP.py`` of
YoadTew/zero-shot-image-to-text, which the zero-guidance authors ran with ``reset_context_delta``):

One step (for each beam, a row of ``context``):
  1. cache = GPT-2 keys/values of the context but its last token; ``p_before`` = unsteered next-token
     distribution.
  2. ``num_iterations`` times, with shifts Δ (zero at the start of every step):
       p = GPT-2(last token | cache + Δ);
       CLIP loss: the ``top_k_candidates`` tokens of p, each appended to the beam's text, are embedded
       by CLIP; target distribution q = softmax(cos(target, text) / τ) on those tokens;
       L_clip = −Σ q · log p;
       fluency: L_flu = ce_scale · KL(p ‖ p_before);
       Δ ← Δ − stepsize · ∇Δ / ‖∇Δ‖^γ (per beam, per layer, separately for keys and values).
  3. p_shift from cache + Δ with the logit tweaks (end token, forbidden tokens); the next-token
     distribution is p_shift^λ · p_before^(1−λ), normalised.
Beam search over length-normalised log-probabilities; stops at ".". The zero-guidance authors
keep the beam whose text has the best CLIP similarity to the target.

Exact speed-ups (same numbers up to float rounding; ``use_prefix_cache=False`` gives the plain path):
  - CLIP prefix key/value cache: every candidate text of a beam is the beam's text plus one token,
    so the beam's CLIP tokens are encoded once per step and only each candidate's tail runs through
    the text tower (see ``clip_text.py`` for the last-word caveat);
  - sequences trimmed to the longest text instead of 77 tokens;
  - all beams' candidates in one text-tower call, and a candidate's embedding computed once per
    step even though the top-k sets of the 5 iterations overlap;
  - ``p_before`` from the context cache (one token) instead of a second full pass.
ZeroCap is a GPU method: on 2 CPU cores a 15-token caption with GPT-2 and CLIP B/16 takes minutes
(see docs/zeroguide-captioning.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from backend.zeroguide.captioning.base import Caption, Captioner, check_embeddings
from backend.zeroguide.captioning.clip_text import ClipTextEncoder, PrefixState
from backend.zeroguide.captioning.settings import ZeroCapSettings

__all__ = ["Beam", "SteeringTrace", "ZeroCapCaptioner", "ZeroCapSettings"]

NORM_EPSILON = 1e-15  # reference: ‖∇‖ + 1e-15 before the power
START_END_DAMPING = 1.6  # reference: end token damped by 1.6 at the first step (hard-coded there)


@dataclass(frozen=True)
class Beam:
    """One finished beam: the generated continuation and its length-normalised log-probability."""

    text: str
    score: float


@dataclass
class SteeringTrace:
    """What one generation step did (for tests and diagnostics).

    Attributes:
        probs_before: ``(rows, V)`` unsteered next-token distribution.
        probs: ``(rows, V)`` final next-token distribution (steered, tweaked, fused).
        clip_losses, fluency_losses: per iteration, ``(rows,)`` losses before that iteration's update.
        encoded_texts: candidate texts CLIP embedded in this step (each distinct one once).
    """

    probs_before: Tensor
    probs: Tensor
    clip_losses: list[Tensor] = field(default_factory=list)
    fluency_losses: list[Tensor] = field(default_factory=list)
    encoded_texts: int = 0


class ZeroCapCaptioner(Captioner):
    """ZeroCap behind the :class:`Captioner` interface.

    Args:
        clip: a ``ClipModel`` (``.model``: open_clip CLIP, ``.tokenizer``).
        language: a ``LanguageModel`` (``.model``: GPT2LMHeadModel, ``.tokenizer``).
        settings: :class:`ZeroCapSettings`.
    """

    name = "zerocap"

    def __init__(self, clip: Any, language: Any, settings: ZeroCapSettings = ZeroCapSettings()) -> None:
        self.clip = clip
        self.language = language
        self.settings = settings
        self.text_encoder = ClipTextEncoder(clip.model, clip.tokenizer)
        if settings.use_prefix_cache and not self.text_encoder.supports_prefix_cache:
            raise ValueError("This CLIP text tower has custom attention blocks; set use_prefix_cache=False")
        tokenizer = language.tokenizer
        end_ids = tokenizer.encode(settings.end_token)
        if len(end_ids) != 1:
            raise ValueError(f"end_token {settings.end_token!r} must be one GPT-2 token, got {len(end_ids)}")
        self.end_id = end_ids[0]
        self.bos_id = tokenizer.bos_token_id
        self._token_texts: list[str] | None = None
        self._forbidden_ids: Tensor | None = None

    @classmethod
    def from_models(cls, models: Any, settings: ZeroCapSettings) -> ZeroCapCaptioner:
        """Built on ``models.clip`` and ``models.language`` (GPT-2)."""
        return cls(models.clip, models.language, settings)

    # ------------------------------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------------------------------
    def caption(self, embeddings: Tensor) -> list[Caption]:
        """Caption each row of ``embeddings`` ``(K, D)`` (one ZeroCap run per row)."""
        targets = check_embeddings(embeddings, self.text_encoder.embed_dim)
        return [self.caption_one(target) for target in targets]

    def caption_one(self, target: Tensor) -> Caption:
        """Run ZeroCap for one ``(D,)`` unit-norm target and keep the beam CLIP likes best."""
        beams = self.generate(target)
        scored_texts = [self.settings.prompt + beam.text for beam in beams]
        with torch.inference_mode(False):
            embeddings = self.text_encoder.encode(scored_texts)
            similarities = embeddings @ target.detach().clone().to(embeddings)
        order = similarities.argsort(descending=True).tolist()
        best = order[0]
        return Caption(
            text=clean_caption(beams[best].text),
            clip_score=float(similarities[best]),
            scored_text=scored_texts[best],
            alternatives=tuple((clean_caption(beams[i].text), float(similarities[i])) for i in order[1:]),
            embedding=embeddings[best].clone(),
        )

    def generate(self, target: Tensor) -> list[Beam]:
        """ZeroCap's beam search for one ``(D,)`` target; beams ordered by length-normalised score.

        Works under ``torch.inference_mode()`` too: steering needs autograd, so it leaves that mode.
        """
        with torch.inference_mode(False):
            return self._generate(target.detach().clone().float().to(self.text_encoder.device))

    def next_token_distribution(self, step: int, context: Tensor, target: Tensor) -> SteeringTrace:
        """One ZeroCap step: steer GPT-2 for every row of ``context`` ``(rows, L)`` (BOS + prompt + generated).

        Returns:
            the distributions and per-iteration losses (:class:`SteeringTrace`).
        """
        with torch.inference_mode(False):
            target = target.detach().clone().float().to(self.text_encoder.device)
            return self._next_token_distribution(step, context.detach().clone(), target)

    # ------------------------------------------------------------------------------------------
    # Beam search (reference: CLIPTextGenerator.generate_text)
    # ------------------------------------------------------------------------------------------
    def _generate(self, target: Tensor) -> list[Beam]:
        settings = self.settings
        tokenizer = self.language.tokenizer
        device = self.language.model.device
        beam_size = settings.beam_size
        context = torch.tensor([[self.bos_id, *tokenizer.encode(settings.prompt)]], device=device)
        generated: Tensor | None = None
        scores: Tensor | None = None
        lengths = torch.ones(beam_size, device=device)
        stopped = torch.zeros(beam_size, dtype=torch.bool, device=device)

        for step in range(settings.max_tokens):
            log_probs = self._next_token_distribution(step, context, target).probs.log()
            if scores is None:  # first token: the beams are the top tokens of the single context
                scores, next_tokens = log_probs.topk(beam_size, dim=-1)
                context = context.expand(beam_size, -1)
                next_tokens, scores = next_tokens.permute(1, 0), scores.squeeze(0)
                generated = next_tokens
            else:
                vocabulary = log_probs.shape[1]
                log_probs[stopped] = -float("inf")
                log_probs[stopped, 0] = 0  # a stopped beam continues for free (token 0, cut at the end)
                totals = scores[:, None] + log_probs
                lengths[~stopped] += 1
                averages, flat = (totals / lengths[:, None]).view(-1).topk(beam_size, dim=-1)
                source = flat // vocabulary
                lengths = lengths[source]
                next_tokens = (flat % vocabulary).unsqueeze(1)
                generated = torch.cat([generated[source], next_tokens], dim=1)
                context = context[source]
                scores = averages * lengths
                stopped = stopped[source]
            context = torch.cat([context, next_tokens], dim=1)
            stopped = stopped | next_tokens.eq(self.end_id).view(-1)
            if stopped.all():
                break

        averages = scores / lengths
        texts = [
            tokenizer.decode(row[: int(length)].tolist(), clean_up_tokenization_spaces=False)
            for row, length in zip(generated, lengths)
        ]
        return [Beam(texts[i], float(averages[i])) for i in averages.argsort(descending=True).tolist()]

    # ------------------------------------------------------------------------------------------
    # One step (reference: get_next_probs, shift_context, update_special_tokens_logits, clip_loss)
    # ------------------------------------------------------------------------------------------
    def _next_token_distribution(self, step: int, context: Tensor, target: Tensor) -> SteeringTrace:
        from transformers import DynamicCache

        settings = self.settings
        model = self.language.model
        last_token = context[:, -1:]
        with torch.no_grad():
            past = model(context[:, :-1], use_cache=True).past_key_values
            past = [(layer.keys, layer.values) for layer in past.layers]
            log_probs_before = F.log_softmax(
                model(last_token, past_key_values=DynamicCache(past)).logits[:, -1].float(), dim=-1
            )
        trace = SteeringTrace(probs_before=log_probs_before.exp(), probs=log_probs_before.exp())

        shifts = [(torch.zeros_like(keys), torch.zeros_like(values)) for keys, values in past]
        if settings.num_iterations > 0:
            shifts = self._steer(context, past, shifts, log_probs_before, target, trace)

        with torch.no_grad():
            shifted = [(keys + dk, values + dv) for (keys, values), (dk, dv) in zip(past, shifts)]
            logits = model(last_token, past_key_values=DynamicCache(shifted)).logits[:, -1].float()
            logits = self._tweak_logits(logits, context, step)
            probs = F.softmax(logits, dim=-1)
            # p = p_shift^λ · p_before^(1−λ), normalised
            probs = probs.pow(settings.fusion_factor) * trace.probs_before.pow(1 - settings.fusion_factor)
            if settings.joint_beam_normalisation:
                probs = probs / probs.sum()  # the reference normalises over all beams at once
            else:
                probs = probs / probs.sum(dim=-1, keepdim=True)
        trace.probs = probs
        return trace

    def _steer(
        self,
        context: Tensor,
        past: list[tuple[Tensor, Tensor]],
        shifts: list[tuple[Tensor, Tensor]],
        log_probs_before: Tensor,
        target: Tensor,
        trace: SteeringTrace,
    ) -> list[tuple[Tensor, Tensor]]:
        """Optimise the key/value shifts Δ for ``num_iterations`` steps; returns the final Δ."""
        from transformers import DynamicCache

        settings = self.settings
        model = self.language.model
        last_token = context[:, -1:]
        prefix_texts = [self._decode_context(row) for row in context]
        prefixes = (
            [self.text_encoder.prefix_state(text) for text in prefix_texts] if settings.use_prefix_cache else None
        )
        memo: dict[tuple[int, int], Tensor] = {}  # (row, token) -> CLIP embedding, valid within this step

        for _ in range(settings.num_iterations):
            leaves = [(dk.clone().requires_grad_(True), dv.clone().requires_grad_(True)) for dk, dv in shifts]
            with torch.enable_grad():
                shifted = [(keys + dk, values + dv) for (keys, values), (dk, dv) in zip(past, leaves)]
                logits = model(last_token, past_key_values=DynamicCache(shifted)).logits[:, -1].float()
                log_probs = F.log_softmax(logits, dim=-1)
                clip_loss = self._clip_loss(log_probs, prefix_texts, prefixes, memo, target)
                # fluency: ce_scale · KL(p ‖ p_before) = ce_scale · Σ p (log p − log p_before)
                fluency_loss = settings.fluency_scale * (log_probs.exp() * (log_probs - log_probs_before)).sum(-1)
                loss = settings.clip_loss_scale * clip_loss.sum() + fluency_loss.sum()
                gradients = torch.autograd.grad(loss, [tensor for pair in leaves for tensor in pair])
            trace.clip_losses.append(clip_loss.detach())
            trace.encoded_texts = len(memo)
            trace.fluency_losses.append(fluency_loss.detach())
            # Δ ← Δ − α · ∇ / (‖∇‖ + ε)^γ, the norm taken per beam, per layer, per keys/values
            updated = []
            for index, delta in enumerate(tensor for pair in shifts for tensor in pair):
                gradient = gradients[index]
                norms = gradient.flatten(1).norm(dim=1) + NORM_EPSILON
                scale = norms.pow(settings.grad_norm_factor).view(-1, *([1] * (gradient.ndim - 1)))
                updated.append(delta - settings.step_size * gradient / scale)
            shifts = [(updated[2 * layer], updated[2 * layer + 1]) for layer in range(len(shifts))]
        return shifts

    def _clip_loss(
        self,
        log_probs: Tensor,
        prefix_texts: list[str],
        prefixes: list[PrefixState] | None,
        memo: dict[tuple[int, int], Tensor],
        target: Tensor,
    ) -> Tensor:
        """Per-row CLIP loss −Σ_c q_c log p_c over the top-k candidate tokens c of each row.

        q = softmax(cos(target, CLIP(prefix + token_c)) / τ), a constant for the gradient.
        """
        settings = self.settings
        token_texts = self.token_texts
        top_k = min(settings.top_k_candidates, log_probs.shape[1])
        candidates = log_probs.detach().topk(top_k, dim=-1).indices  # (rows, k)
        missing = [
            (row, token)
            for row, tokens in enumerate(candidates.tolist())
            for token in tokens
            if (row, token) not in memo
        ]
        if missing:
            texts = [prefix_texts[row] + token_texts[token] for row, token in missing]
            if prefixes is not None:
                embedded = self.text_encoder.encode_continuations(
                    prefixes, [row for row, _ in missing], texts, batch_size=settings.clip_batch_size
                )
            else:
                embedded = self.text_encoder.encode(texts, batch_size=settings.clip_batch_size)
            memo.update(zip(missing, embedded))
        text_embeddings = torch.stack(
            [memo[(row, token)] for row, tokens in enumerate(candidates.tolist()) for token in tokens]
        ).view(
            *candidates.shape, -1
        )  # (rows, k, D)
        similarities = text_embeddings @ target  # (rows, k) cosine similarities
        target_probs = F.softmax(similarities / settings.clip_loss_temperature, dim=-1).to(log_probs)
        return -(target_probs * log_probs.gather(1, candidates.to(log_probs.device))).sum(-1)

    def _tweak_logits(self, logits: Tensor, context: Tensor, step: int) -> Tensor:
        """Reference ``update_special_tokens_logits``: repetition, end-token and forbidden-token factors.

        ``damp(x, f) = x / f if x > 0 else x · f`` lowers a logit whatever its sign.
        """
        settings = self.settings
        logits = logits.clone()
        if settings.repetition_penalty != 1.0:
            for row in range(logits.shape[0]):
                recent = context[row, -4:].unique()
                logits[row, recent] = _damp(logits[row, recent], settings.repetition_penalty)
        end = self.end_id
        if step >= 1:
            logits[:, end] = _damp(logits[:, end], 1 / settings.end_factor)  # boost the end token
        if step == 0:
            logits[:, end] = _damp(logits[:, end], START_END_DAMPING)
        forbidden = self.forbidden_ids.to(logits.device)
        if forbidden.numel():
            logits[:, forbidden] = _damp(logits[:, forbidden], settings.forbidden_factor)
        return logits

    # ------------------------------------------------------------------------------------------
    # Token tables
    # ------------------------------------------------------------------------------------------
    @property
    def token_texts(self) -> list[str]:
        """The text of every GPT-2 token on its own (as the reference decodes candidates)."""
        if self._token_texts is None:
            tokenizer = self.language.tokenizer
            size = self.language.model.config.vocab_size
            self._token_texts = tokenizer.batch_decode([[i] for i in range(size)], clean_up_tokenization_spaces=False)
        return self._token_texts

    @property
    def forbidden_ids(self) -> Tensor:
        """Token ids damped by ``forbidden_factor``: special tokens and tokens without a letter."""
        if self._forbidden_ids is None:
            ids: list[int] = []
            if self.settings.forbid_non_word_tokens:
                special = set(self.language.tokenizer.all_special_ids)
                ids = [
                    token
                    for token, text in enumerate(self.token_texts)
                    if token != self.end_id and (token in special or not any(ch.isalpha() for ch in text))
                ]
            self._forbidden_ids = torch.tensor(ids, dtype=torch.long)
        return self._forbidden_ids

    def _decode_context(self, row: Tensor) -> str:
        """The text of a context row without its BOS token (reference: ``decode(...).replace(bos, '')``)."""
        tokens = row.tolist()
        if tokens and tokens[0] == self.bos_id:
            tokens = tokens[1:]
        return self.language.tokenizer.decode(tokens, clean_up_tokenization_spaces=False)


def _damp(values: Tensor, factor: float) -> Tensor:
    """Reference factor rule: x / f for positive logits, x · f for the others (f > 1 lowers x)."""
    return torch.where(values > 0, values / factor, values * factor)


def clean_caption(text: str) -> str:
    """Label from a generated continuation: stripped, lower case, without the final period.

    The zero-guidance authors' script does ``caption[:-1].lower().replace('.', '').strip()``; this
    removes a trailing period only (their ``[:-1]`` cuts a letter from beams that did not end).
    """
    text = text.strip()
    while text.endswith("."):
        text = text[:-1].rstrip()
    return text.lower()
