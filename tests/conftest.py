"""Shared fixtures: the two tokenizers and a tiny trained toy model (seconds, CPU)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

# Tiny models: thread start-up costs more than it saves, and one thread keeps runs reproducible.
torch.set_num_threads(1)

from circuitbench.cli import main  # noqa: E402
from circuitbench.models.loading import load_model  # noqa: E402
from circuitbench.models.planted import SPECS  # noqa: E402
from circuitbench.patching import PatchedModel  # noqa: E402
from circuitbench.tasks import (  # noqa: E402
    TaskData,
    encode_prompts,
    make_splits,
    make_task,
    toy_vocabulary,
)
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


def task_data(tokenizer, name="ioi", n=12, split="train", seed=0) -> TaskData:
    """``n`` prompts of task ``name`` generated for ``split`` and tokenized."""
    task = make_task(name)
    sizes = {"train": 0, "validation": 0, "test": 0, split: n}
    prompts = make_splits(task, sizes, seed, tokenizer)[split]
    return encode_prompts(task, prompts, tokenizer, split)


def cli_data(
    root: Path, tasks, sizes: dict[str, int], seed: int, name: str = "tiny"
) -> tuple[Path, list[Path]]:
    """The ``tokenizer`` and ``data`` steps through the CLI, under ``root``: the tokenizer's
    directory and one split directory per task (``sizes``: n_train, n_validation, n_test)."""
    tokenizer = root / "tokenizer"
    assert main(["tokenizer", "--out", str(tokenizer)]) == 0
    data_dirs = []
    for task in tasks:
        out = root / "data" / task
        args = ["data", "--task", task, "--tokenizer", str(tokenizer), "--seed", str(seed)]
        args += ["--options", json.dumps({"task": sizes}), "--name", name, "--out", str(out)]
        assert main(args) == 0
        data_dirs.append(out)
    return tokenizer, data_dirs


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


@pytest.fixture(scope="module")
def model(random_model_dir) -> PatchedModel:
    """The random 3-layer model, patched, in float32."""
    return PatchedModel(load_model(str(random_model_dir), device="cpu"))


@pytest.fixture(scope="module")
def model64(random_model_dir) -> PatchedModel:
    """The same model in float64, for exactness checks."""
    return PatchedModel(load_model(str(random_model_dir), device="cpu", dtype="float64"))


PLANTED = sorted(SPECS)


@pytest.fixture(scope="session")
def builds(tmp_path_factory):
    """Every planted model built and verified by the ``planted-build`` step (40 / 40 / 64
    prompts)."""
    root = tmp_path_factory.mktemp("planted")
    out = {}
    for name in PLANTED:
        options = {"n_train": 40, "n_validation": 40, "n_test": 64, "truth": {"other_examples": 16}}
        args = ["planted-build", "--name", name, "--seed", "0", "--device", "cpu"]
        args += ["--options", json.dumps({"planted": options})]
        args += ["--threads", "1", "--out", str(root / name / "build")]
        assert main(args) == 0, name
        out[name] = root / name / "build"
    return out


@pytest.fixture(scope="session")
def planted_models(builds) -> dict[str, PatchedModel]:
    """The planted models, patched."""
    return {
        name: PatchedModel(load_model(str(path / "model" / "hf"), device="cpu"))
        for name, path in builds.items()
    }


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
