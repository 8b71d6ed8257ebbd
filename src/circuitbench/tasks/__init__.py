"""Task registry: ``make_task(name, **options)``, task metrics of a split, and the toy
word-level vocabulary."""

from __future__ import annotations

from typing import Any

import torch

from circuitbench.tasks.base import (
    SPLITS,
    Prompt,
    SplitSizes,
    Task,
    TaskData,
    encode_prompts,
    make_splits,
    read_task_data,
)
from circuitbench.tasks.docstring import Docstring
from circuitbench.tasks.gendered_pronouns import GenderedPronouns
from circuitbench.tasks.greater_than import GreaterThan
from circuitbench.tasks.induction import Induction
from circuitbench.tasks.ioi import IOI
from circuitbench.tasks.words import FILLER_ADJECTIVES, FILLER_SUBJECTS, FILLER_VERBS
from circuitbench.tokenization import split_words

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (IOI, GreaterThan, GenderedPronouns, Induction, Docstring)
}

__all__ = [
    "SPLITS",
    "TASKS",
    "Prompt",
    "SplitSizes",
    "Task",
    "TaskData",
    "encode_prompts",
    "make_splits",
    "extra_metrics",
    "make_task",
    "read_task_data",
    "toy_vocabulary",
]


def make_task(name: str, **options: Any) -> Task:
    """A task by registry name with its options (unknown names and options are errors)."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    try:
        return TASKS[name](**options)
    except TypeError as err:
        raise ValueError(f"bad options for task {name!r}: {err}") from err


def extra_metrics(data: TaskData, logits_end: torch.Tensor) -> dict[str, torch.Tensor]:
    """The task's metrics beyond logit difference and accuracy, per example (``[n]`` each).
    A split of a task outside the registry (a planted model's) has none."""
    if data.task not in TASKS:
        return {}
    return make_task(data.task, **data.meta["task_options"]).extra_metrics(logits_end, data)


def toy_vocabulary() -> list[str]:
    """Every word any task (or the filler text) can produce, in a fixed order."""
    texts = [text for cls in TASKS.values() for text in cls().vocabulary_text()]
    texts += [" ".join(FILLER_SUBJECTS + FILLER_VERBS + FILLER_ADJECTIVES), "the . , and"]
    texts += [text for cls in TASKS.values() for text in cls().variant_vocabulary_text()]
    words: dict[str, None] = {}
    for text in texts:
        for word in split_words(text):
            words.setdefault(word, None)
    return list(words)
