"""GPT-2 builds: the tiny model and tokenizer, the pretrained loading path, missing weights."""

import pytest
import torch

from backend.models.language import (
    GPT2_PATH_ENV,
    LANGUAGE_MODEL_NAMES,
    TINY_CORPUS,
    LanguageModel,
    build_language_model,
    build_tiny_tokenizer,
)
from backend.models.weights import MissingWeightsError


@pytest.fixture(scope="module")
def tiny() -> LanguageModel:
    return build_language_model("tiny")


def test_tiny_tokenizer_round_trips_any_text():
    tokenizer = build_tiny_tokenizer()
    texts = [
        "Image of a dog running on a sandy beach.",
        "Zebras, 42 giraffes & an éléphant!",
        "  leading spaces, tabs\tand\nnew lines ",
        "emoji 🦒 and CJK 長颈鹿",
    ]
    for text in texts:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text


def test_tiny_tokenizer_is_a_trained_bpe():
    tokenizer = build_tiny_tokenizer()
    # Merges were learnt: a frequent corpus word is one token, far fewer tokens than bytes.
    sentence = TINY_CORPUS[0]
    assert len(tokenizer.encode(sentence)) < len(sentence.encode("utf-8")) / 2
    assert len(tokenizer.encode(" beach")) == 1
    # GPT-2's single special token, at id 0, is BOS, EOS and UNK.
    assert tokenizer.bos_token == tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.bos_token_id == 0
    assert 256 < len(tokenizer) <= 1024


def test_tiny_model_is_a_small_gpt2(tiny):
    from transformers import GPT2LMHeadModel

    assert isinstance(tiny.model, GPT2LMHeadModel)
    assert tiny.is_tiny and tiny.name == "tiny"
    config = tiny.model.config
    assert (config.n_layer, config.n_embd, config.n_head) == (2, 64, 2)
    assert config.vocab_size == len(tiny.tokenizer)
    assert not tiny.model.training
    assert not any(parameter.requires_grad for parameter in tiny.model.parameters())
    ids = torch.tensor([tiny.tokenizer.encode("Image of a")])
    assert tiny.model(ids).logits.shape == (1, ids.shape[1], len(tiny.tokenizer))


def test_tiny_model_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = build_language_model("tiny")
    assert torch.equal(torch.rand(1), expected_next)
    second = build_language_model("tiny")
    for a, b in zip(first.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="gpt2-medium"):
        build_language_model("gpt3")
    assert LANGUAGE_MODEL_NAMES == ("gpt2-medium", "gpt2", "tiny")


def test_missing_pretrained_weights_name_model_and_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(GPT2_PATH_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    with pytest.raises(MissingWeightsError) as raised:
        build_language_model("gpt2-medium")
    message = str(raised.value)
    assert "gpt2-medium" in message and GPT2_PATH_ENV in message
    assert raised.value.env_var == GPT2_PATH_ENV

    monkeypatch.setenv(GPT2_PATH_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(MissingWeightsError, match="nowhere"):
        build_language_model("gpt2")
    with pytest.raises(MissingWeightsError, match="elsewhere"):
        build_language_model("gpt2", weights_path=tmp_path / "elsewhere")


def test_pretrained_path_loads_a_saved_checkpoint(monkeypatch, tmp_path, tiny):
    # The loading path of the real models, fed with the tiny model saved the transformers way.
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    monkeypatch.setenv(GPT2_PATH_ENV, str(tmp_path))
    loaded = build_language_model("gpt2")
    assert loaded.name == "gpt2" and not loaded.is_tiny
    ids = torch.tensor([tiny.tokenizer.encode("Image of a dog")])
    assert loaded.tokenizer.encode("Image of a dog") == ids[0].tolist()
    torch.testing.assert_close(loaded.model(ids).logits, tiny.model(ids).logits)
