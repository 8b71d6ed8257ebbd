"""Shared fixtures: the two tokenizers and a tiny trained toy model (seconds, CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from circuitbench.tasks import toy_vocabulary  # noqa: E402
from circuitbench.tokenization import (  # noqa: E402
    TextTokenizer,
    build_word_level_tokenizer,
    gpt2_tokenizer,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def toy_tokenizer() -> TextTokenizer:
    return TextTokenizer(build_word_level_tokenizer(toy_vocabulary()), prepend_bos=True)


@pytest.fixture(scope="session")
def gpt2() -> TextTokenizer:
    return TextTokenizer(gpt2_tokenizer(), prepend_bos=False)


@pytest.fixture(params=["toy", "gpt2"])
def any_tokenizer(request, toy_tokenizer, gpt2) -> TextTokenizer:
    return toy_tokenizer if request.param == "toy" else gpt2
