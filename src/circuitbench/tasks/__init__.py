"""Task registry: ``make_task(name, **options)`` and the toy word-level vocabulary."""

from __future__ import annotations

from typing import Any

from circuitbench.tasks.base import SPLITS, Prompt, Task, TaskData, encode_prompts, make_splits
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
    "Task",
    "TaskData",
    "encode_prompts",
    "make_splits",
    "make_task",
    "toy_vocabulary",
]


def make_task(name: str, **options: Any) -> Task:
    """A task by registry name with its options (unknown names and options are errors).

    ``planted`` (the hand-built models' task, :mod:`circuitbench.models.planted`) resolves too,
    but stays out of :data:`TASKS`: it is not one of the papers' tasks, and nothing that loops
    over them (the toy vocabulary, the workflow) should see it.
    """
    if name == "planted":
        from circuitbench.models.planted import PlantedTask

        cls: type[Task] = PlantedTask
    elif name in TASKS:
        cls = TASKS[name]
    else:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}, planted")
    try:
        return cls(**options)
    except TypeError as err:
        raise ValueError(f"bad options for task {name!r}: {err}") from err


def toy_vocabulary() -> list[str]:
    """Every word any task (or the filler text) can produce, in a fixed order."""
    texts = [text for cls in TASKS.values() for text in cls().vocabulary_text()]
    texts += [" ".join(FILLER_SUBJECTS + FILLER_VERBS + FILLER_ADJECTIVES), "the . , and"]
    words: dict[str, None] = {}
    for text in texts:
        for word in split_words(text):
            words.setdefault(word, None)
    return list(words)
