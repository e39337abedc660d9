"""The SmolLM2 tokenizer alone (seconds once the model is cached), for exact character offsets."""

import pytest


@pytest.fixture(scope="session")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from moia.lm.loading import cache_dir, load_hf

    path = cache_dir() / "models" / "smollm2-135m-instruct"
    if (path / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(path)
    return load_hf("smollm2-135m-instruct")[1]  # converts and caches the model first (slow, once)
