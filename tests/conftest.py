"""Shared test set-up: no model hub, few threads, the tiny preset."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The models compute in float32 unless a test asks for bfloat16 (DTYPE=auto would pick bfloat16 on
# CPUs with AVX-512-BF16 or AMX): the tolerances of the tests are float32's.
os.environ.setdefault("DTYPE", "float32")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_models():
    """The ``tiny`` preset (seeded random weights), shared by the whole session."""
    from backend.models import load_models

    return load_models("tiny", device="cpu")
