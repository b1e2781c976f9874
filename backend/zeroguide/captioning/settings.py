"""Settings of the captioners (zero-guidance paper, section 3.3): plain frozen dataclasses, no torch.

The service's HTTP process imports these (to validate and show a captioner's settings) without
importing torch; the captioners themselves live in ``retrieval.py`` and ``zerocap.py`` and are
built through ``registry.py``.

Fields marked ``tunable`` may be set by a project's ``model_settings`` (as
``{"captioner_options": {...}}``) within their bounds; the others (paths, prompts, free text) only
by the operator (docs/service.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from ...settings import tunable

__all__ = ["CaptionerSettings", "RetrievalSettings", "ZeroCapSettings"]


@dataclass(frozen=True)
class CaptionerSettings:
    """Base of every captioner's settings (a frozen dataclass; subclasses add the fields)."""

    def with_cache_dir(self, path: str | Path) -> Self:
        """These settings told that the captioner may cache on disk under ``path``.

        The caller (e.g. the service) does not need to know which captioner it has: a captioner
        that caches nothing keeps the default, which returns ``self`` unchanged.
        """
        return self


@dataclass(frozen=True)
class RetrievalSettings(CaptionerSettings):
    """Settings of the retrieval captioner (not a paper method; no paper values).

    Attributes:
        prompt_templates: templates with one ``{}`` for the phrase; the embeddings of all
            templates are averaged (CLIP's prompt ensembling). Default: CLIP's standard
            single template "a photo of a {}.".
        vocabulary_file: a text file, one phrase a line, ``#`` comments; None: the built-in one.
        cache_dir: where vocabulary embeddings are cached on disk; None: memory only.
        batch_size: texts per text-tower call while embedding the vocabulary.
        alternatives: how many runner-up phrases each caption reports.
    """

    prompt_templates: tuple[str, ...] = ("a photo of a {}.",)
    vocabulary_file: str | Path | None = None
    cache_dir: str | Path | None = None
    batch_size: int = tunable(256, minimum=1, maximum=1024)
    alternatives: int = tunable(5, minimum=0, maximum=20)

    def __post_init__(self) -> None:
        if isinstance(self.prompt_templates, list):  # e.g. from JSON; a tuple keeps the settings hashable
            object.__setattr__(self, "prompt_templates", tuple(self.prompt_templates))
        if isinstance(self.prompt_templates, str) or not self.prompt_templates:
            raise ValueError("prompt_templates must be a non-empty tuple of strings such as ('a photo of a {}.',)")
        for template in self.prompt_templates:
            if not isinstance(template, str) or template.count("{}") != 1:
                raise ValueError(f"Each prompt template needs exactly one '{{}}', got {template!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.alternatives < 0:
            raise ValueError(f"alternatives must be >= 0, got {self.alternatives}")

    def with_cache_dir(self, path: str | Path) -> Self:
        """These settings with the vocabulary embeddings cached under ``path`` (stored as a string)."""
        return dataclasses.replace(self, cache_dir=str(path))


@dataclass(frozen=True)
class ZeroCapSettings(CaptionerSettings):
    """ZeroCap hyper-parameters; defaults are the reference implementation's, as the paper ran it.

    Attributes:
        prompt: the text GPT-2 completes; zero-guidance §3.3: "Image of a".
        beam_size: beams of the search (ZeroCap: 5).
        max_tokens: most generated tokens (ZeroCap ``target_seq_length``: 15).
        num_iterations: steering updates per token (ZeroCap: 5).
        step_size: α of the shift update Δ ← Δ − α ∇/‖∇‖^γ (ZeroCap ``stepsize``: 0.3).
        grad_norm_factor: γ of that update (ZeroCap: 0.9).
        clip_loss_scale: weight of the CLIP loss (ZeroCap ``clip_scale``: 1.0).
        clip_loss_temperature: τ of the CLIP target softmax(cos / τ) (ZeroCap: 0.01).
        fluency_scale: weight of KL(p ‖ p_before) (ZeroCap ``ce_scale``: 0.2).
        top_k_candidates: tokens of p scored by CLIP per beam and iteration (ZeroCap: 512;
            clipped to the vocabulary size).
        fusion_factor: λ of p_shift^λ · p_before^(1−λ) (ZeroCap: 0.99).
        end_token: the token that ends a caption (ZeroCap: ".").
        end_factor: boost of the end token's logit after the first token (ZeroCap: 1.01; the
            zero-guidance authors' script passes 1.1).
        forbidden_factor: damping of forbidden tokens' logits (ZeroCap: 20).
        repetition_penalty: damping of the last 4 tokens' logits (ZeroCap: 1.0, i.e. off).
        forbid_non_word_tokens: forbid tokens with no letter (digits, punctuation, whitespace;
            the end token excepted) and special tokens. ZeroCap ships its list as an opaque
            ``forbidden_tokens.npy``; this rule stands in for it.
        joint_beam_normalisation: normalise the fused distribution over all beams at once,
            as the reference does (``probs / probs.sum()``); False normalises each beam.
        use_prefix_cache: CLIP prefix key/value cache (exact speed-up); False: plain encoding.
        clip_batch_size: candidate texts per CLIP text-tower call.
    """

    prompt: str = "Image of a"
    beam_size: int = tunable(5, minimum=1, maximum=16)
    max_tokens: int = tunable(15, minimum=1, maximum=40)
    num_iterations: int = tunable(5, minimum=0, maximum=20)
    step_size: float = tunable(0.3, minimum=0.0, maximum=10.0)
    grad_norm_factor: float = tunable(0.9, minimum=0.0, maximum=10.0)
    clip_loss_scale: float = tunable(1.0, minimum=0.0, maximum=100.0)
    clip_loss_temperature: float = tunable(0.01, minimum=0.0001, maximum=10.0)
    fluency_scale: float = tunable(0.2, minimum=0.0, maximum=100.0)
    top_k_candidates: int = tunable(512, minimum=1, maximum=4096)
    fusion_factor: float = tunable(0.99, minimum=0.0, maximum=1.0)
    end_token: str = "."
    end_factor: float = tunable(1.01, minimum=0.01, maximum=100.0)
    forbidden_factor: float = tunable(20.0, minimum=0.01, maximum=1000.0)
    repetition_penalty: float = tunable(1.0, minimum=0.01, maximum=100.0)
    forbid_non_word_tokens: bool = tunable(True)
    joint_beam_normalisation: bool = tunable(True)
    use_prefix_cache: bool = tunable(True)
    clip_batch_size: int = tunable(2048, minimum=1, maximum=8192)

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise ValueError("prompt must not be empty (ZeroCap completes it; the paper uses 'Image of a')")
        for name in ("beam_size", "max_tokens", "top_k_candidates", "clip_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_iterations < 0:
            raise ValueError(f"num_iterations must be >= 0, got {self.num_iterations}")
        for name in ("clip_loss_temperature", "end_factor", "forbidden_factor", "repetition_penalty"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("step_size", "grad_norm_factor", "clip_loss_scale", "fluency_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.fusion_factor <= 1.0:
            raise ValueError(f"fusion_factor must be in [0, 1], got {self.fusion_factor}")
        if not self.end_token:
            raise ValueError("end_token must not be empty")
