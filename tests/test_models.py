"""Model training, saving and loading through TransformerBridge."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2LMHeadModel

from circuitbench.models.loading import ModelUnavailableError, check_available, load_model
from circuitbench.models.train import TrainSpec, save_model, train_toy_model
from circuitbench.tasks import encode_prompts, make_splits, make_task

TINY = {
    "n_layer": 2,
    "n_head": 2,
    "d_model": 32,
    "n_ctx": 64,
    "max_steps": 6,
    "batch_size": 8,
    "eval_every": 3,
    "tasks": ("ioi", "docstring"),
}


def tiny_eval(toy_tokenizer):
    data, exclude = {}, set()
    for name in TINY["tasks"]:
        task = make_task(name)
        splits = make_splits(task, {"train": 5, "validation": 5, "test": 8}, 0, toy_tokenizer)
        for prompts in splits.values():
            exclude.update(p.clean for p in prompts)
        data[name] = encode_prompts(task, splits["test"], toy_tokenizer, "test")
    return data, exclude


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, toy_tokenizer):
    data, exclude = tiny_eval(toy_tokenizer)
    model, report = train_toy_model(TrainSpec(**TINY), toy_tokenizer, data, exclude, progress=False)
    directory = tmp_path_factory.mktemp("tiny") / "hf"
    save_model(model, toy_tokenizer, directory)
    return directory, report, data


def test_training_report_has_held_out_accuracy_per_task(tiny_model_dir):
    _, report, data = tiny_model_dir
    assert set(report["tasks"]) == set(TINY["tasks"])
    for name, scores in report["tasks"].items():
        assert 0.0 <= scores["accuracy"] <= 1.0
        assert scores["n"] == len(data[name])
    assert report["steps"] == TINY["max_steps"]
    assert [h["step"] for h in report["history"]] == [3, 6]


def test_training_is_deterministic_by_seed(toy_tokenizer):
    data, exclude = tiny_eval(toy_tokenizer)
    spec = TrainSpec(**{**TINY, "max_steps": 3, "eval_every": 3})
    first, _ = train_toy_model(spec, toy_tokenizer, data, exclude, progress=False)
    again, _ = train_toy_model(spec, toy_tokenizer, data, exclude, progress=False)
    other, _ = train_toy_model(
        TrainSpec(**{**TINY, "max_steps": 3, "eval_every": 3, "seed": 1}),
        toy_tokenizer,
        data,
        exclude,
        progress=False,
    )
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert any(
        not torch.equal(a, c)
        for a, c in zip(first.state_dict().values(), other.state_dict().values(), strict=True)
    )


def test_corpus_never_contains_held_out_prompts(toy_tokenizer):
    from circuitbench.models.train import Corpus

    data, exclude = tiny_eval(toy_tokenizer)
    tasks = [make_task(name) for name in TINY["tasks"]]
    spec = TrainSpec(**{**TINY, "filler_fraction": 0.0, "batch_size": 64})
    corpus = Corpus(tasks, toy_tokenizer, exclude, spec)
    # Force collisions: the held-out prompts are the only ones the sampler may not return.
    seen = set()
    for _ in range(20):
        seen.add(corpus._prompt(tasks[0]).clean)
    assert not seen & exclude


def test_trained_model_loads_through_bridge_with_hf_logits(tiny_model_dir, toy_tokenizer):
    directory, _, data = tiny_model_dir
    bridge = load_model(str(directory), device="cpu", dtype="float32")
    hf = GPT2LMHeadModel.from_pretrained(directory, attn_implementation="eager").eval()
    tokens = data["docstring"].clean_tokens
    with torch.no_grad():
        bridge_logits = bridge(tokens)
        hf_logits = hf(tokens).logits
    assert bridge_logits.shape == hf_logits.shape
    assert (bridge_logits - hf_logits).abs().max().item() <= 1e-5
    # The tokenizer saved next to the weights is the one the bridge uses.
    text = data["docstring"].texts[0]["clean"]
    assert bridge.tokenizer(text, add_special_tokens=False)["input_ids"] == toy_tokenizer.ids(text)
    assert bridge.cfg.n_layers == TINY["n_layer"] and bridge.cfg.n_heads == TINY["n_head"]


def test_unavailable_models_name_the_model_and_the_remedy(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelUnavailableError, match="openai-community/gpt2.*HF_HUB_OFFLINE=1"):
        check_available("openai-community/gpt2")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(ModelUnavailableError, match="no weights"):
        load_model(str(tmp_path / "half"), device="cpu")


def test_bad_train_spec_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        TrainSpec(d_model=30, n_head=4)
    with pytest.raises(ValueError, match="max_steps"):
        TrainSpec(max_steps=0)


def test_corpus_refuses_when_everything_is_held_out(toy_tokenizer):
    from circuitbench.models.train import Corpus

    task = make_task("gendered_pronouns", name_set="app")
    every_prompt = {p.clean for p in task.generate(300, 0, range(15), toy_tokenizer)}
    corpus = Corpus([task], toy_tokenizer, every_prompt, TrainSpec(**TINY))
    with pytest.raises(RuntimeError, match="nothing is left to train on"):
        corpus._prompt(task, max_attempts=500)
