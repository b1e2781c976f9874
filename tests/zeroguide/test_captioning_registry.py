"""The captioner registry: names, settings from options, errors that list the valid choices, building."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from backend.zeroguide.captioning import Caption, Captioner
from backend.zeroguide.captioning.registry import (
    CAPTIONERS,
    CaptionerEntry,
    build_captioner,
    captioner_class,
    captioner_names,
    captioner_settings,
    settings_class,
)
from backend.zeroguide.captioning.retrieval import RetrievalCaptioner
from backend.zeroguide.captioning.settings import CaptionerSettings, RetrievalSettings, ZeroCapSettings
from backend.zeroguide.captioning.zerocap import ZeroCapCaptioner


@dataclass(frozen=True)
class EchoSettings(CaptionerSettings):
    word: str = "thing"


class EchoCaptioner(Captioner):
    """A captioner added the way a new one would be: one class and one registry entry."""

    name = "echo"

    def __init__(self, clip, settings):
        self.clip = clip
        self.settings = settings

    @classmethod
    def from_models(cls, models, settings):
        return cls(models.clip, settings)

    def caption(self, embeddings):
        return [Caption(text=self.settings.word, clip_score=0.0, scored_text=self.settings.word) for _ in embeddings]


class NotACaptioner:
    pass


@pytest.fixture
def echo_registered(monkeypatch):
    monkeypatch.setitem(CAPTIONERS, "echo", CaptionerEntry(EchoSettings, f"{__name__}:EchoCaptioner"))


def test_names_and_settings_classes():
    assert captioner_names() == ("retrieval", "zerocap")
    assert settings_class("retrieval") is RetrievalSettings
    assert settings_class("zerocap") is ZeroCapSettings
    for name, entry in CAPTIONERS.items():
        assert issubclass(entry.settings, CaptionerSettings)
        assert captioner_class(name).name == name
    assert captioner_class("retrieval") is RetrievalCaptioner and captioner_class("zerocap") is ZeroCapCaptioner


def test_settings_moved_but_still_importable_from_their_captioner_modules():
    from backend.zeroguide.captioning import retrieval, zerocap

    assert retrieval.RetrievalSettings is RetrievalSettings and zerocap.ZeroCapSettings is ZeroCapSettings


@pytest.mark.parametrize("call", [settings_class, captioner_settings, lambda name: build_captioner(name, None)])
def test_unknown_captioner_lists_the_valid_ones(call):
    with pytest.raises(ValueError, match=r"Unknown captioner 'gpt4'.*retrieval, zerocap"):
        call("gpt4")


def test_captioner_settings_from_options():
    assert captioner_settings("zerocap", None) == ZeroCapSettings()
    assert captioner_settings("zerocap", {}) == ZeroCapSettings()
    assert captioner_settings("zerocap", {"beam_size": 3}) == ZeroCapSettings(beam_size=3)
    ready = RetrievalSettings(alternatives=2)
    assert captioner_settings("retrieval", ready) is ready
    from_json = captioner_settings("retrieval", {"prompt_templates": ["a photo of a {}.", "the {}."]})
    assert from_json.prompt_templates == ("a photo of a {}.", "the {}.")
    hash(from_json)  # frozen and hashable, even from a JSON list


def test_unknown_field_lists_the_valid_ones():
    with pytest.raises(ValueError, match="beam_size") as error:
        captioner_settings("retrieval", {"beam_size": 3, "alternatives": 1})
    message = str(error.value)
    assert "valid fields" in message
    for field in dataclasses.fields(RetrievalSettings):
        assert field.name in message
    with pytest.raises(ValueError, match="cache_dir"):
        captioner_settings("zerocap", {"cache_dir": "/tmp/x"})


def test_settings_of_another_captioner_or_of_no_kind_are_refused():
    with pytest.raises(ValueError, match="takes ZeroCapSettings, got RetrievalSettings"):
        captioner_settings("zerocap", RetrievalSettings())
    with pytest.raises(ValueError, match="mapping or RetrievalSettings"):
        captioner_settings("retrieval", ["alternatives", 1])
    with pytest.raises(ValueError, match="alternatives must be >= 0"):
        captioner_settings("retrieval", {"alternatives": -1})


def test_with_cache_dir():
    retrieval = RetrievalSettings(alternatives=2)
    cached = retrieval.with_cache_dir("/tmp/cache")
    assert cached == RetrievalSettings(alternatives=2, cache_dir="/tmp/cache")
    assert retrieval.cache_dir is None, "settings are frozen: a new object, the old one unchanged"
    assert RetrievalSettings().with_cache_dir(Path("/tmp/cache")).cache_dir == "/tmp/cache"  # JSON-friendly
    zerocap = ZeroCapSettings(beam_size=2)
    assert zerocap.with_cache_dir("/tmp/cache") is zerocap, "a captioner that caches nothing ignores it"
    assert EchoSettings().with_cache_dir("/tmp/cache") == EchoSettings()


def test_build_through_from_models(tiny_models):
    retrieval = build_captioner("retrieval", tiny_models, {"alternatives": 1})
    assert isinstance(retrieval, RetrievalCaptioner)
    assert retrieval.clip is tiny_models.clip and retrieval.settings == RetrievalSettings(alternatives=1)
    zerocap = build_captioner("zerocap", tiny_models, ZeroCapSettings(beam_size=2))
    assert isinstance(zerocap, ZeroCapCaptioner)
    assert zerocap.clip is tiny_models.clip and zerocap.language is tiny_models.language
    assert zerocap.settings.beam_size == 2
    assert build_captioner("zerocap", tiny_models).settings == ZeroCapSettings()
    # retrieval reads only models.clip
    assert isinstance(build_captioner("retrieval", SimpleNamespace(clip=tiny_models.clip)), RetrievalCaptioner)
    with pytest.raises(ValueError, match="takes RetrievalSettings"):
        build_captioner("retrieval", tiny_models, ZeroCapSettings())


def test_a_new_captioner_is_one_class_and_one_entry(echo_registered, tiny_models):
    assert captioner_names() == ("retrieval", "zerocap", "echo")
    assert captioner_settings("echo", {"word": "blob"}) == EchoSettings(word="blob")
    captioner = build_captioner("echo", tiny_models, {"word": "blob"})
    assert isinstance(captioner, EchoCaptioner) and captioner.clip is tiny_models.clip
    assert [c.text for c in captioner.caption(torch.zeros(2, 4))] == ["blob", "blob"]
    with pytest.raises(ValueError, match="valid fields: word"):
        captioner_settings("echo", {"colour": "red"})

    from backend.zeroguide.__main__ import build_parser

    args = build_parser().parse_args(["image.png", "--out", "out", "--captioner", "echo"])
    assert args.captioner == "echo", "the command line's choices come from the registry"


def test_registry_entries_are_checked(monkeypatch):
    with pytest.raises(ValueError, match="package.module:ClassName"):
        CaptionerEntry(EchoSettings, f"{__name__}.EchoCaptioner")
    with pytest.raises(TypeError, match="CaptionerSettings subclass"):
        CaptionerEntry(dict, f"{__name__}:EchoCaptioner")
    monkeypatch.setitem(CAPTIONERS, "odd", CaptionerEntry(EchoSettings, f"{__name__}:NotACaptioner"))
    with pytest.raises(TypeError, match="not a Captioner subclass"):
        build_captioner("odd", None)


def test_command_line_caches_through_with_cache_dir(tmp_path):
    from backend.zeroguide.__main__ import build_parser, settings_from_args

    parser = build_parser()
    for name in captioner_names():
        args = parser.parse_args(["image.png", "--out", "out", "--captioner", name, "--cache-dir", str(tmp_path)])
        settings = settings_from_args(args, {})
        assert settings.captioner == name
        options = captioner_settings(name, settings.captioner_options)
        assert options == settings_class(name)().with_cache_dir(str(tmp_path))
    args = parser.parse_args(["image.png", "--out", "out", "--captioner", "zerocap", "--cache-dir", str(tmp_path)])
    preset = {"captioner": "retrieval", "captioner_options": {"alternatives": 1}}
    settings = settings_from_args(args, preset)
    assert (
        captioner_settings("zerocap", settings.captioner_options) == ZeroCapSettings()
    ), "switching captioner drops the other captioner's options"


def test_captioning_package_exports_lazily():
    import backend.zeroguide.captioning as captioning

    assert captioning.build_captioner is build_captioner and captioning.RetrievalSettings is RetrievalSettings
    assert {"Caption", "ZeroCapCaptioner", "captioner_settings", "CaptionerSettings"} <= set(captioning.__all__)
    assert set(captioning.__all__) <= set(dir(captioning))
    with pytest.raises(AttributeError, match="CAPTIONER_NAMES"):
        captioning.CAPTIONER_NAMES  # noqa: B018  (replaced by registry.captioner_names())
