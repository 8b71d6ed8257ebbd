"""Shared fixtures: the two tokenizers and a tiny trained toy model (seconds, CPU)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

# Tiny models: thread start-up costs more than it saves, and one thread keeps runs reproducible.
torch.set_num_threads(1)

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


def save_random_gpt2(directory: Path, tokenizer: TextTokenizer, **shape) -> Path:
    """A randomly initialised GPT-2-architecture model (built locally, nothing downloaded),
    saved with its tokenizer so it loads through TransformerBridge like any model."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer.hf),
        n_positions=shape.get("n_positions", 64),
        n_embd=shape.get("n_embd", 32),
        n_layer=shape.get("n_layer", 2),
        n_head=shape.get("n_head", 4),
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.bos_id,
    )
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.hf.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory, toy_tokenizer) -> Path:
    return save_random_gpt2(tmp_path_factory.mktemp("random") / "m", toy_tokenizer, n_layer=3)


def snakemake_command(workdir: Path, profile: str, *extra: str) -> list[str]:
    """The repository's workflow run in ``workdir`` with ``profiles/<profile>``."""
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--workflow-profile",
        str(ROOT / "profiles" / profile),
        "--directory",
        str(workdir),
        *extra,
    ]
