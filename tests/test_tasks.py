"""Task generators: determinism, corruption invariants, answer ids, splits, GPT-2 tokenization."""

from __future__ import annotations

import json

import pytest
import torch

from circuitbench.tasks import TASKS, TaskData, encode_prompts, make_splits, make_task
from circuitbench.tasks.ioi import BABA_TEMPLATES

SIZES = {"train": 40, "validation": 40, "test": 40}


def encoded(task_name, tokenizer, seed=0, split="test", **options):
    task = make_task(task_name, **options)
    prompts = make_splits(task, SIZES, seed, tokenizer)[split]
    return encode_prompts(task, prompts, tokenizer, split)


@pytest.mark.parametrize("task_name", list(TASKS))
def test_generation_is_deterministic_by_seed(task_name, toy_tokenizer):
    task = make_task(task_name)
    first = make_splits(task, SIZES, 7, toy_tokenizer)
    again = make_splits(task, SIZES, 7, toy_tokenizer)
    other = make_splits(task, SIZES, 8, toy_tokenizer)
    assert first == again
    assert [p.clean for p in first["test"]] != [p.clean for p in other["test"]]


@pytest.mark.parametrize("task_name", list(TASKS))
def test_corruptions_keep_length_and_positions(task_name, any_tokenizer):
    data = encoded(task_name, any_tokenizer)
    assert data.meta["dropped"] == {}, "every generated prompt must be representable"
    assert set(data.corrupt_tokens) == set(make_task(task_name).corruptions)
    for i, text in enumerate(data.texts):
        clean_ids = any_tokenizer.encode(text["clean"])
        assert len(clean_ids) == data.end_pos[i] + 1
        for variant, corrupt_text in text["corrupt"].items():
            corrupt_ids = any_tokenizer.encode(corrupt_text)
            assert len(corrupt_ids) == len(clean_ids), (variant, corrupt_text)
            assert data.corrupt_tokens[variant][i, : len(clean_ids)].tolist() == corrupt_ids
        # Padding only after the prediction position.
        assert (data.clean_tokens[i, data.end_pos[i] + 1 :] == data.pad_id).all()


@pytest.mark.parametrize("task_name", list(TASKS))
def test_target_is_the_next_token_of_the_full_sentence(task_name, any_tokenizer):
    data = encoded(task_name, any_tokenizer)
    for i, text in enumerate(data.texts):
        target = int(data.target_ids[i])
        assert target in data.answer_ids[i].tolist()
        assert target not in data.distractor_ids[i].tolist()
        assert any_tokenizer.hf.decode([target]).strip() == text["target"].strip()


def test_ioi_answer_ids_and_named_positions(any_tokenizer):
    data = encoded("ioi", any_tokenizer)
    rows = torch.arange(len(data))
    io_token = data.clean_tokens[rows, data.positions["IO"]]
    s1_token = data.clean_tokens[rows, data.positions["S1"]]
    s2_token = data.clean_tokens[rows, data.positions["S2"]]
    assert torch.equal(io_token, data.answer_ids[:, 0])
    assert torch.equal(s1_token, data.distractor_ids[:, 0])
    assert torch.equal(s2_token, s1_token)
    assert (data.positions["S1+1"] == data.positions["S1"] + 1).all()
    # ABC: all three name slots change, the rest of the prompt is the clean one.
    abc = data.corrupt_tokens["abc"]
    for name in ("IO", "S1", "S2"):
        assert (
            abc[rows, data.positions[name]] != data.clean_tokens[rows, data.positions[name]]
        ).all()
    changed = (abc != data.clean_tokens).sum(1)
    assert (changed == 3).all()
    # S2 -> IO flips only S2.
    assert ((data.corrupt_tokens["s2_io"] != data.clean_tokens).sum(1) == 1).all()


def test_gpt2_ioi_names_are_single_tokens(gpt2):
    data = encoded("ioi", gpt2)
    for i, text in enumerate(data.texts):
        io_name = text["info"]["IO"]
        assert gpt2.hf.decode([int(data.answer_ids[i, 0])]) == " " + io_name
        assert gpt2.ids(" " + io_name) == [int(data.answer_ids[i, 0])]


def test_gpt2_greater_than_years_split_into_century_and_two_digits(gpt2):
    data = encoded("greater_than", gpt2)
    for i, text in enumerate(data.texts):
        century, yy = text["info"]["century"], text["info"]["yy"]
        ids = data.clean_tokens[i, : data.end_pos[i] + 1].tolist()
        pieces = [gpt2.hf.decode([t]) for t in ids]
        start = pieces.index(f" {century}")
        assert pieces[start + 1] == f"{yy:02d}"
        assert pieces[-1] == f" {century}"  # prediction position: the end century
        # The "01" corruption keeps the split too.
        corrupt = [gpt2.hf.decode([t]) for t in data.corrupt_tokens["01"][i, : len(ids)].tolist()]
        assert corrupt[start : start + 2] == [f" {century}", "01"]
    year_ids = data.constants["year_ids"]
    assert [gpt2.hf.decode([int(t)]) for t in year_ids] == [f"{y:02d}" for y in range(100)]


def test_greater_than_answer_sets_follow_the_start_year(toy_tokenizer):
    data = encoded("greater_than", toy_tokenizer)
    year_of = {int(t): y for y, t in enumerate(data.constants["year_ids"])}
    for i in range(len(data)):
        yy = int(data.extra["yy"][i])
        answers = {year_of[int(t)] for t in data.answer_ids[i] if t >= 0}
        wrong = {year_of[int(t)] for t in data.distractor_ids[i] if t >= 0}
        assert answers == set(range(yy + 1, 100))
        assert wrong == set(range(1, yy))  # APP's LD_GT: 00 and YY excluded


def test_induction_predicts_the_second_word_of_the_repeated_name(any_tokenizer):
    data = encoded("induction", any_tokenizer)
    for text in data.texts:
        first, last = text["info"]["name"].split()
        assert text["clean"].endswith(" " + first)
        assert text["target"] == " " + last
        n1, n2 = text["info"]["n1"].split(), text["info"]["n2"].split()
        assert len({first, n1[0], n2[0]}) == 3
        assert text["corrupt"]["random_names"].endswith(" " + n2[0])


def test_docstring_distractors_are_the_other_argument_names(toy_tokenizer):
    data = encoded("docstring", toy_tokenizer)
    text = data.texts[0]
    answer = text["info"]["answer"]
    assert text["target"] == " " + answer
    wrong = {toy_tokenizer.hf.decode([int(t)]) for t in data.distractor_ids[0] if t >= 0}
    assert answer not in wrong
    assert set(text["info"]["def_args"]) - {answer} <= wrong


@pytest.mark.parametrize("task_name", list(TASKS))
def test_splits_are_disjoint(task_name, toy_tokenizer):
    task = make_task(task_name)
    splits = make_splits(task, SIZES, 3, toy_tokenizer)
    texts = {name: {p.clean for p in prompts} for name, prompts in splits.items()}
    assert not texts["train"] & texts["validation"]
    assert not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]


def test_ioi_ep_split_holds_out_two_baba_and_two_abba_templates(toy_tokenizer):
    task = make_task("ioi", split="ep")
    templates = task.template_split(seed=11)
    held = set(templates["test"])
    assert len(held) == 4
    assert len([t for t in held if t < len(BABA_TEMPLATES)]) == 2
    assert not held & set(templates["train"])
    splits = make_splits(task, SIZES, 11, toy_tokenizer)
    assert {p.template for p in splits["test"]} <= held
    assert not {p.template for p in splits["train"]} & held


@pytest.mark.parametrize("task_name", list(TASKS))
def test_task_data_json_round_trip(task_name, toy_tokenizer):
    data = encoded(task_name, toy_tokenizer)
    back = TaskData.from_json(json.loads(data.dumps()))
    assert back.dumps() == data.dumps()
    assert torch.equal(back.clean_tokens, data.clean_tokens)
    for variant in data.corrupt_tokens:
        assert torch.equal(back.corrupt_tokens[variant], data.corrupt_tokens[variant])


def test_bad_task_requests_are_clear_errors(toy_tokenizer):
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        make_task("nope")
    with pytest.raises(ValueError, match="tasks.ioi.corruption"):
        make_task("ioi", corruption="xyz")
    with pytest.raises(ValueError, match="bad options"):
        make_task("docstring", colour="red")
    with pytest.raises(ValueError, match=">= 0"):
        make_task("ioi").generate(-1, 0, [0], toy_tokenizer)
    with pytest.raises(RuntimeError, match="distinct prompts"):
        # 20 names x 15 templates: 300 prompts exist, not 1000.
        make_task("gendered_pronouns", name_set="app").generate(1000, 0, range(15), toy_tokenizer)
