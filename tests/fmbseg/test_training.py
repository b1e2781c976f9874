"""Stage-2 training: pseudo labels on the patch grid, learning on synthetic features, resume,
checkpoints and their error cases."""

import dataclasses
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.fmbseg.alignment import AlignmentModuleConfig
from backend.fmbseg.checkpoints import (
    AlignmentCheckpoint,
    CheckpointError,
    load_alignment_checkpoint,
    save_alignment_checkpoint,
)
from backend.fmbseg.loss import LossSettings
from backend.fmbseg.training import (
    TrainingExample,
    TrainingSettings,
    patch_labels_from_masks,
    select_stage12_masks,
    train_alignment_module,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one intra-op thread is several times faster than two."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------
# Pseudo labels on the patch grid
# ---------------------------------------------------------------------------------------------


def _box(shape, rows, cols):
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def _hand_worked_masks():
    shape = (4, 6)  # image 4x6, grid 2x3: every patch covers 2x2 pixels
    masks = np.stack(
        [
            _box(shape, (0, 4), (1, 5)),  # Stage 1.2, class 5, 16 px
            _box(shape, (2, 4), (0, 1)),  # Stage 1.2, class 7, 2 px
            _box(shape, (0, 2), (0, 3)),  # Stage 1.1, class 3, 6 px
            _box(shape, (0, 2), (1, 3)),  # Stage 1.2, class 9, 4 px: smaller, but under Stage 1.1
        ]
    )
    return masks, [5, 7, 3, 9], ["1.2", "1.2", "1.1", "1.2"]


@pytest.mark.parametrize(
    "min_area_fraction, expected",
    [
        # pixel labels:  3 3 3 5 5 -    patches: (0,0) all 3; (0,1) 3|5 tie -> 3; (0,2) half 5 -> 5
        #                3 3 3 5 5 -             (1,0) 7|5 tie -> 5; (1,1) all 5; (1,2) half 5 -> 5
        #                7 5 5 5 5 -
        #                7 5 5 5 5 -
        (0.5, [[3, 3, 5], [5, 5, 5]]),
        (0.75, [[3, -1, -1], [-1, 5, -1]]),
    ],
)
def test_patch_labels_hand_worked(min_area_fraction, expected):
    masks, classes, sources = _hand_worked_masks()
    labels = patch_labels_from_masks(
        masks, classes, sources, (2, 3), stage12_keep_fraction=1.0, min_area_fraction=min_area_fraction
    )
    assert labels.dtype == torch.long
    assert labels.tolist() == expected


def test_patch_labels_without_masks_and_non_divisible_grid():
    assert patch_labels_from_masks(np.zeros((0, 5, 7), bool), [], [], (2, 3)).tolist() == [[-1] * 3] * 2
    full = np.ones((1, 5, 7), dtype=bool)
    assert patch_labels_from_masks(full, [2], ["1.1"], (2, 3)).tolist() == [[2] * 3] * 2
    torch_masks = torch.from_numpy(_hand_worked_masks()[0])
    labels = patch_labels_from_masks(torch_masks, *_hand_worked_masks()[1:], (2, 3), stage12_keep_fraction=1.0)
    assert labels.tolist() == [[3, 3, 5], [5, 5, 5]]


def test_stage12_subsampling_is_seeded_and_keeps_stage11():
    sources = ["1.2"] * 8 + ["1.1", "1.1"]
    kept = select_stage12_masks(sources, 0.75, np.random.default_rng((0, 3)))
    assert {8, 9} <= set(kept.tolist()) and len(kept) == 2 + 6
    again = select_stage12_masks(sources, 0.75, np.random.default_rng((0, 3)))
    assert kept.tolist() == again.tolist()
    others = {tuple(select_stage12_masks(sources, 0.75, np.random.default_rng((0, i))).tolist()) for i in range(10)}
    assert len(others) > 1  # the split depends on the seed
    assert select_stage12_masks(sources, 0.0, np.random.default_rng(0)).tolist() == [8, 9]
    assert len(select_stage12_masks(sources, 1.0, np.random.default_rng(0))) == 10
    # round half up: 1 -> 1 (0.75), 2 -> 2 (1.5), 3 -> 2 (2.25)
    for count, keep in [(1, 1), (2, 2), (3, 2)]:
        assert len(select_stage12_masks(["1.2"] * count, 0.75, np.random.default_rng(0))) == keep


def test_dropped_stage12_masks_leave_patches_unlabelled():
    shape = (4, 4)
    masks = np.stack([_box(shape, (0, 2), (0, 2)), _box(shape, (2, 4), (2, 4))])
    labels = patch_labels_from_masks(masks, [1, 2], ["1.2", "1.2"], (2, 2), seed=0, stage12_keep_fraction=0.5)
    flat = labels.flatten().tolist()
    assert sorted(flat) in ([-1, -1, -1, 1], [-1, -1, -1, 2])  # one of the two masks survives


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sources=["1.3"]), "sources"),
        (dict(classes=[1, 2]), "masks"),
        (dict(grid=(5, 1)), "grid_shape"),
        (dict(min_area_fraction=0.0), "min_area_fraction"),
        (dict(classes=[-2]), "mask_classes"),
    ],
)
def test_patch_label_input_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        patch_labels_from_masks(
            np.ones((1, 4, 4), bool),
            kwargs.get("classes", [0]),
            kwargs.get("sources", ["1.1"]),
            kwargs.get("grid", (2, 2)),
            min_area_fraction=kwargs.get("min_area_fraction", 0.5),
        )


# ---------------------------------------------------------------------------------------------
# Learning on synthetic features
# ---------------------------------------------------------------------------------------------

NUM_CLASSES, IN_DIM, OUT_DIM, GRID = 6, 32, 16, 6


def _synthetic_world(seed, num_train=20, num_test=20, wrong_fraction=0.2):
    """Class prototypes + unit Gaussian noise as 'DINOv2' features on a 6x6 grid; each image holds
    3 classes in Voronoi regions; a fraction of the training labels is replaced by a wrong class.
    Text features are random unit vectors. Returns (train examples, test features, test labels, texts)."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(NUM_CLASSES, IN_DIM, generator=generator)
    texts = F.normalize(torch.randn(NUM_CLASSES, OUT_DIM, generator=generator), dim=-1)
    rows, cols = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")

    def image():
        classes = torch.randperm(NUM_CLASSES, generator=generator)[:3]
        centres = torch.rand(3, 2, generator=generator) * GRID
        distances = (rows[None] - centres[:, 0, None, None]) ** 2 + (cols[None] - centres[:, 1, None, None]) ** 2
        clean = classes[distances.argmin(0)].flatten()
        features = prototypes[clean] + torch.randn(GRID * GRID, IN_DIM, generator=generator)
        return features, clean

    train = []
    for _ in range(num_train):
        features, clean = image()
        noisy = clean.clone()
        wrong = torch.rand(clean.shape, generator=generator) < wrong_fraction
        shift = torch.randint(1, NUM_CLASSES, clean.shape, generator=generator)
        noisy[wrong] = (clean[wrong] + shift[wrong]) % NUM_CLASSES
        train.append(TrainingExample(features, noisy))
    test = [image() for _ in range(num_test)]
    return train, torch.stack([f for f, _ in test]), torch.stack([c for _, c in test]), texts


def _clean_accuracy(checkpoint, features, labels, texts):
    with torch.no_grad():
        predicted = (checkpoint.module(features) @ texts.T).argmax(dim=-1)
    return (predicted == labels).float().mean().item()


def _train_synthetic(seed, loss, **settings):
    train, test_features, test_labels, texts = _synthetic_world(seed)
    config = AlignmentModuleConfig("transformer", IN_DIM, OUT_DIM, num_heads=2)
    result = train_alignment_module(
        train,
        [f"class{k}" for k in range(NUM_CLASSES)],
        texts,
        config,
        TrainingSettings(seed=seed, loss=loss, **settings),
        progress_bar=False,
    )
    return _clean_accuracy(result, test_features, test_labels, texts)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_tsupcon_learns_through_noisy_labels_and_beats_supcon(seed):
    """Paper's budget (10 epochs, 5 images a batch, SGD + cosine), 20% wrong pseudo labels,
    accuracy on clean held-out images. Chance is 1/6."""
    balanced = _train_synthetic(seed, LossSettings(variant="tsupcon", balance_terms=True))
    supcon = _train_synthetic(seed, LossSettings(variant="supcon"))
    assert balanced > 0.9
    assert balanced > supcon + 0.3


def test_prototype_loss_learns_through_noisy_labels():
    assert _train_synthetic(0, LossSettings(variant="prototype")) > 0.9


# ---------------------------------------------------------------------------------------------
# Progress, resume, checkpoints
# ---------------------------------------------------------------------------------------------

CLASSES = ["sky", "tree", "road"]


def _tiny_data(seed=0, images=7, patches=9):
    generator = torch.Generator().manual_seed(seed)
    examples = [
        TrainingExample(
            torch.randn(patches, 8, generator=generator),
            torch.randint(-1, len(CLASSES), (patches,), generator=generator),
        )
        for _ in range(images)
    ]
    return examples, torch.randn(len(CLASSES), 4, generator=generator)


TINY_CONFIG = AlignmentModuleConfig("transformer", 8, 4, num_heads=2)
TINY_SETTINGS = TrainingSettings(batch_size=3, epochs=3, learning_rate=0.05)


class _Stop(Exception):
    pass


def test_progress_callback_and_checkpoint_round_trip(tmp_path):
    examples, texts = _tiny_data()
    events = []
    path = tmp_path / "alignment.safetensors"
    result = train_alignment_module(
        examples,
        CLASSES,
        texts,
        TINY_CONFIG,
        TINY_SETTINGS,
        checkpoint_path=path,
        callback=events.append,
        progress_bar=False,
    )
    steps = [e for e in events if not e.epoch_finished]
    ends = [e for e in events if e.epoch_finished]
    assert [e.step for e in steps] == list(range(1, 3 * 3 + 1))  # ceil(7 / 3) = 3 steps an epoch
    assert [e.epoch for e in ends] == [1, 2, 3] and all(e.checkpoint_path == path for e in ends)
    assert steps[0].learning_rate == pytest.approx(0.05)
    # cosine annealing over the 9 steps: lr_s = 0.05 (1 + cos(pi s / 9)) / 2
    assert steps[4].learning_rate == pytest.approx(0.05 * (1 + np.cos(np.pi * 4 / 9)) / 2)
    assert [e.loss for e in ends] == pytest.approx(list(result.loss_history))

    loaded = load_alignment_checkpoint(path, expected_classes=CLASSES)
    assert loaded.classes == tuple(CLASSES)
    assert loaded.module_config == TINY_CONFIG and loaded.settings == TINY_SETTINGS
    assert loaded.epochs_completed == 3 and loaded.loss_history == result.loss_history
    assert loaded.version == result.version and len(loaded.version.split("-")) == 2
    for (name, a), (_, b) in zip(result.module.state_dict().items(), loaded.module.state_dict().items()):
        assert torch.equal(a, b), name
    torch.testing.assert_close(loaded.text_embeddings, F.normalize(texts, dim=-1))
    assert not loaded.module.training
    assert os.listdir(tmp_path) == ["alignment.safetensors"]  # no temporary file left behind

    assert loaded.method_settings == {} == result.method_settings  # none given

    # save_alignment_checkpoint (no training state) round trip
    recorded = {"dinov2_image_size": 518, "prompt_template": "a photo of a {}", "refine": True}
    other = save_alignment_checkpoint(
        dataclasses.replace(loaded, version="abc-1", method_settings=recorded), tmp_path / "final.safetensors"
    )
    again = load_alignment_checkpoint(other)
    assert again.version == "abc-1" and again.classes == tuple(CLASSES) and again.method_settings == recorded


def test_resume_matches_an_uninterrupted_run(tmp_path):
    examples, texts = _tiny_data()
    full = train_alignment_module(examples, CLASSES, texts, TINY_CONFIG, TINY_SETTINGS, progress_bar=False)

    path = tmp_path / "run.safetensors"

    def crash_in_epoch_two(progress):
        if progress.epoch == 2 and progress.step == 5:  # mid-epoch, after one epoch was saved
            raise _Stop()

    with pytest.raises(_Stop):
        train_alignment_module(
            examples,
            CLASSES,
            texts,
            TINY_CONFIG,
            TINY_SETTINGS,
            checkpoint_path=path,
            callback=crash_in_epoch_two,
            progress_bar=False,
        )
    assert load_alignment_checkpoint(path).epochs_completed == 1  # the last good checkpoint
    steps_after_resume = []
    resumed = train_alignment_module(
        examples,
        CLASSES,
        texts,
        TINY_CONFIG,
        TINY_SETTINGS,
        checkpoint_path=path,
        callback=lambda p: steps_after_resume.append(p.step),
        progress_bar=False,
    )
    assert steps_after_resume[0] == 4  # continues with epoch 2
    assert resumed.loss_history == full.loss_history
    for (name, a), (_, b) in zip(full.module.state_dict().items(), resumed.module.state_dict().items()):
        assert torch.equal(a, b), name
    # a finished run resumes to nothing and returns the stored module
    again_steps = []
    again = train_alignment_module(
        examples,
        CLASSES,
        texts,
        TINY_CONFIG,
        TINY_SETTINGS,
        checkpoint_path=path,
        callback=again_steps.append,
        progress_bar=False,
    )
    assert again_steps == [] and again.version == resumed.version
    for (name, a), (_, b) in zip(full.module.state_dict().items(), again.module.state_dict().items()):
        assert torch.equal(a, b), name


def test_resume_refuses_other_classes_settings_or_data(tmp_path):
    examples, texts = _tiny_data()
    path = tmp_path / "run.safetensors"
    short = dataclasses.replace(TINY_SETTINGS, epochs=1)
    train_alignment_module(examples, CLASSES, texts, TINY_CONFIG, short, checkpoint_path=path, progress_bar=False)
    with pytest.raises(CheckpointError, match="Class list differs") as error:
        train_alignment_module(
            examples, ["sky", "tree", "car"], texts, TINY_CONFIG, short, checkpoint_path=path, progress_bar=False
        )
    assert "car" in str(error.value) and "road" in str(error.value)
    with pytest.raises(CheckpointError, match="learning_rate"):
        train_alignment_module(
            examples,
            CLASSES,
            texts,
            TINY_CONFIG,
            dataclasses.replace(short, learning_rate=0.2),
            checkpoint_path=path,
            progress_bar=False,
        )
    with pytest.raises(CheckpointError, match="labels differ"):
        train_alignment_module(
            examples[:-1], CLASSES, texts, TINY_CONFIG, short, checkpoint_path=path, progress_bar=False
        )
    with pytest.raises(CheckpointError, match="text embeddings"):
        train_alignment_module(examples, CLASSES, -texts, TINY_CONFIG, short, checkpoint_path=path, progress_bar=False)
    # resume=False starts again and overwrites
    fresh = train_alignment_module(
        examples,
        CLASSES,
        texts,
        TINY_CONFIG,
        dataclasses.replace(short, learning_rate=0.2),
        checkpoint_path=path,
        resume=False,
        progress_bar=False,
    )
    assert load_alignment_checkpoint(path).settings.learning_rate == 0.2 == fresh.settings.learning_rate


def test_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No FMbSeg alignment checkpoint"):
        load_alignment_checkpoint(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_alignment_checkpoint(garbage)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, str(foreign), {"format": "pt"})
    with pytest.raises(CheckpointError, match="not an FMbSeg alignment checkpoint"):
        load_alignment_checkpoint(foreign)

    examples, texts = _tiny_data()
    path = tmp_path / "ok.safetensors"
    train_alignment_module(
        examples,
        CLASSES,
        texts,
        TINY_CONFIG,
        dataclasses.replace(TINY_SETTINGS, epochs=1),
        checkpoint_path=path,
        progress_bar=False,
    )
    with pytest.raises(CheckpointError) as error:
        load_alignment_checkpoint(path, expected_classes=["sky", "road", "tree"])
    message = str(error.value)
    assert (
        "different order" in message and "['sky', 'road', 'tree']" in message and "['sky', 'tree', 'road']" in message
    )
    with pytest.raises(CheckpointError, match="only in the checkpoint: \\['road'\\]"):
        load_alignment_checkpoint(path, expected_classes=["sky", "tree"])


def test_crash_while_writing_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    examples, texts = _tiny_data()
    path = tmp_path / "run.safetensors"
    settings = dataclasses.replace(TINY_SETTINGS, epochs=1)
    train_alignment_module(examples, CLASSES, texts, TINY_CONFIG, settings, checkpoint_path=path, progress_bar=False)
    good = path.read_bytes()

    import safetensors.torch

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        train_alignment_module(
            examples, CLASSES, texts, TINY_CONFIG, settings, checkpoint_path=path, resume=False, progress_bar=False
        )
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["run.safetensors"]
    monkeypatch.undo()
    assert load_alignment_checkpoint(path).epochs_completed == 1


def test_variable_grids_in_one_batch_and_bad_inputs():
    generator = torch.Generator().manual_seed(0)
    examples = [
        TrainingExample(torch.randn(n, 8, generator=generator), torch.randint(0, 3, (n,), generator=generator))
        for n in (9, 12, 6)
    ]
    texts = torch.randn(3, 4, generator=generator)
    result = train_alignment_module(
        examples, CLASSES, texts, TINY_CONFIG, dataclasses.replace(TINY_SETTINGS, epochs=1), progress_bar=False
    )
    assert isinstance(result, AlignmentCheckpoint) and len(result.loss_history) == 1
    with pytest.raises(ValueError, match="text_embeddings"):
        train_alignment_module(examples, CLASSES, texts[:2], TINY_CONFIG, progress_bar=False)
    with pytest.raises(ValueError, match="in_dim"):
        train_alignment_module(
            examples, CLASSES, texts, dataclasses.replace(TINY_CONFIG, in_dim=6, num_heads=1), progress_bar=False
        )
    with pytest.raises(ValueError, match="expected -1"):
        bad = [TrainingExample(torch.zeros(2, 8), torch.tensor([0, 3]))]
        train_alignment_module(bad, CLASSES, texts, TINY_CONFIG, progress_bar=False)
    with pytest.raises(ValueError, match="unique"):
        train_alignment_module(examples, ["a", "a", "b"], texts, TINY_CONFIG, progress_bar=False)
    with pytest.raises(ValueError, match="patch_labels"):
        TrainingExample(torch.zeros(4, 8), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs",
    [dict(batch_size=0), dict(epochs=1.5), dict(learning_rate=0.0), dict(momentum=1.0), dict(weight_decay=-1.0)],
)
def test_settings_validation(kwargs):
    with pytest.raises(ValueError):
        TrainingSettings(**kwargs)


def test_settings_defaults_are_the_papers():
    settings = TrainingSettings()
    assert (settings.batch_size, settings.epochs) == (5, 10)
    assert settings.loss == LossSettings() and settings.loss.variant == "tsupcon"
    assert TrainingSettings.from_dict(settings.to_dict()) == settings
