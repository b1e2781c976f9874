"""GPT-2 and its tokenizer, the language model of ZeroCap (zero-guidance paper, section 3.3).

Three builds behind one function:

- ``"gpt2-medium"``: the paper's language model (ZeroCap uses GPT-2 medium, 355M parameters);
- ``"gpt2"``: GPT-2 small (124M), the CPU preset;
- ``"tiny"``: a 2-layer, 64-wide GPT-2 with random weights and a real byte-level BPE tokenizer
  trained in milliseconds on a small built-in English corpus, so tests run the same code paths
  (``GPT2LMHeadModel``, ``GPT2TokenizerFast``) without any download.

Pretrained weights load the standard transformers way, from a local folder named by the
``GPT2_PATH`` environment variable (or the ``weights_path`` argument), else from the Hugging Face
cache with ``local_files_only=True``: nothing is ever downloaded. Missing weights raise
:class:`backend.models.weights.MissingWeightsError`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from backend.models.weights import MissingWeightsError, local_weights_path

if TYPE_CHECKING:  # transformers is imported lazily: importing it costs seconds
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast

__all__ = [
    "GPT2_PATH_ENV",
    "LANGUAGE_MODEL_NAMES",
    "LanguageModel",
    "build_language_model",
    "build_tiny_tokenizer",
]

GPT2_PATH_ENV = "GPT2_PATH"
LANGUAGE_MODEL_NAMES = ("gpt2-medium", "gpt2", "tiny")

END_OF_TEXT = "<|endoftext|>"  # GPT-2's single special token: BOS, EOS and UNK at once

# Tiny build: a GPT-2 with the real architecture at toy sizes.
TINY_LAYERS = 2
TINY_WIDTH = 64
TINY_HEADS = 2
TINY_POSITIONS = 128
TINY_VOCAB_SIZE = 1024  # upper bound; the corpus below yields fewer merges
TINY_SEED = 0

# A small English corpus for the tiny tokenizer: caption-like sentences about scenes,
# objects, stuff and parts, so that the BPE merges form real English sub-words.
TINY_CORPUS = (
    "Image of a dog running on a sandy beach near the sea.",
    "Image of a cat sleeping on a red sofa in the living room.",
    "Image of a crowd observing a football match in a large stadium.",
    "A man riding a bicycle along a busy city street at night.",
    "A woman holding an umbrella in the rain next to a yellow taxi.",
    "Two children playing with a ball on the green grass of a park.",
    "A bowl of fresh fruit on a wooden kitchen table.",
    "The snowy mountain rises above a forest of tall pine trees.",
    "A white boat floating on the calm water of a lake.",
    "A brick building with large windows and a grey roof.",
    "A plate of pasta with tomato sauce and a glass of wine.",
    "Image of a horse grazing in a field under a cloudy sky.",
    "A flock of birds flying over the river at sunset.",
    "A bedroom with a bed, a lamp and a wooden wardrobe.",
    "A train arriving at the station platform in the morning.",
    "The head, the ear and the tail of a brown dog.",
    "A bathroom with a white sink, a mirror and a towel.",
    "A pizza with cheese, olives and mushrooms on a table.",
    "People walking on the sidewalk past a row of shops.",
    "An airplane taking off from the runway of an airport.",
    "A close up photo of a flower with pink petals and green leaves.",
    "A kitchen with a stove, an oven, a sink and a refrigerator.",
    "A car parked on the road in front of a small house.",
    "Image of a rocky shore with waves breaking on the rocks.",
    "A painting of a landscape with hills, trees and a blue sky.",
    "A girl wearing a hat and a jacket standing in the snow.",
    "A desk with a laptop, a keyboard, a mouse and a cup of coffee.",
    "An elephant and a giraffe in the dry grass of the savanna.",
    "A bridge over the river connects the two parts of the town.",
    "Image of a stone wall covered with green moss and ivy.",
)


@dataclass(frozen=True)
class LanguageModel:
    """A causal language model and its tokenizer.

    Attributes:
        model: ``GPT2LMHeadModel`` in eval mode with frozen weights (``requires_grad=False``).
        tokenizer: ``GPT2TokenizerFast`` (byte-level BPE; ``bos_token`` is ``<|endoftext|>``).
        name: ``"gpt2-medium"``, ``"gpt2"`` or ``"tiny"``.
        is_tiny: random weights for tests; its text is meaningless.
    """

    model: GPT2LMHeadModel
    tokenizer: GPT2TokenizerFast
    name: str
    is_tiny: bool

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def build_language_model(
    name: str,
    weights_path: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> LanguageModel:
    """Build GPT-2 and its tokenizer.

    Args:
        name: one of ``LANGUAGE_MODEL_NAMES``.
        weights_path: a local transformers checkpoint folder (config.json, weights, tokenizer
            files); overrides ``$GPT2_PATH``. Ignored for ``"tiny"``.
        device: where the model lives.

    Raises:
        ValueError: unknown ``name``.
        MissingWeightsError: the pretrained checkpoint is in neither place.
    """
    if name not in LANGUAGE_MODEL_NAMES:
        raise ValueError(f"Unknown language model {name!r}; choose one of {', '.join(LANGUAGE_MODEL_NAMES)}.")
    if name == "tiny":
        model, tokenizer = _build_tiny()
    else:
        model, tokenizer = _load_pretrained(name, weights_path)
    model.eval()
    model.requires_grad_(False)
    model.to(device)
    return LanguageModel(model=model, tokenizer=tokenizer, name=name, is_tiny=name == "tiny")


def _load_pretrained(name: str, weights_path: str | Path | None):
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast

    model_label = f"GPT-2 ({name})"
    expected = f"the transformers checkpoint {name!r} (config.json, model weights, vocab.json, merges.txt)"
    if weights_path is not None:
        source: str | Path = Path(weights_path).expanduser()
        if not Path(source).exists():
            raise MissingWeightsError(model_label, f"{expected} at {source}", GPT2_PATH_ENV)
    else:
        source = local_weights_path(GPT2_PATH_ENV, model_label, expected) or name
    try:
        tokenizer = GPT2TokenizerFast.from_pretrained(str(source), local_files_only=True)
        model = GPT2LMHeadModel.from_pretrained(str(source), local_files_only=True)
    except OSError as error:  # transformers raises OSError for missing local files
        where = f"at {source}" if isinstance(source, Path) else "in the Hugging Face cache"
        raise MissingWeightsError(
            model_label, f"{expected} {where}", GPT2_PATH_ENV, cause=str(error).splitlines()[0]
        ) from error
    return model, tokenizer


def _build_tiny():
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_tiny_tokenizer()
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=TINY_POSITIONS,
        n_embd=TINY_WIDTH,
        n_layer=TINY_LAYERS,
        n_head=TINY_HEADS,
        bos_token_id=end_id,
        eos_token_id=end_id,
    )
    with torch.random.fork_rng(devices=[]):  # same random weights every time, global RNG untouched
        torch.manual_seed(TINY_SEED)
        model = GPT2LMHeadModel(config)
    return model, tokenizer


def build_tiny_tokenizer(corpus: tuple[str, ...] = TINY_CORPUS, vocab_size: int = TINY_VOCAB_SIZE):
    """Train GPT-2's kind of tokenizer (byte-level BPE) on ``corpus`` and wrap it for transformers.

    Any text round-trips, since the 256 byte symbols are in the vocabulary. The BPE merges are
    trained once per process and argument set (about 0.5 s), then reused.

    Returns:
        ``GPT2TokenizerFast`` whose id 0 is ``<|endoftext|>``.
    """
    from transformers import GPT2TokenizerFast

    vocab, merges = _train_byte_level_bpe(tuple(corpus), vocab_size)
    return GPT2TokenizerFast(
        vocab=dict(vocab),
        merges=list(merges),
        unk_token=END_OF_TEXT,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
    )


@functools.lru_cache(maxsize=4)
def _train_byte_level_bpe(corpus: tuple[str, ...], vocab_size: int) -> tuple[tuple, tuple]:
    """(vocab items, merges) of a byte-level BPE trained on ``corpus``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    trained = json.loads(bpe.to_str())["model"]
    return tuple(trained["vocab"].items()), tuple(tuple(merge) for merge in trained["merges"])
