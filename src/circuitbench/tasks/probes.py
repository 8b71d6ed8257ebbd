"""Shortcut probes: prompt sets that a model solving a task by its algorithm answers as well as
the papers' prompts, and a shortcut (a fixed answer position, "the name said once", "any surname
in context") does not. See ``docs/tasks.md`` for what each probe defeats.

- ``position_shifted`` (every task): a papers' prompt after a prefix of 1-8 unrelated words;
- every other probe is one of the task's variants (:meth:`Task.sample_variant`).
"""

from __future__ import annotations

import random

from circuitbench.tasks.base import Prompt, Task, random_prefix, shifted, split_seed
from circuitbench.tokenization import TextTokenizer

POSITION_SHIFTED = "position_shifted"
SHIFT_WORDS = (1, 8)

# The probes the mechanism stage reports, per task.
PROBES: dict[str, tuple[str, ...]] = {
    "ioi": (POSITION_SHIFTED, "io_twice", "s_thrice", "third_name"),
    "greater_than": (POSITION_SHIFTED, "distractor_year"),
    "gendered_pronouns": (POSITION_SHIFTED,),
    "induction": (POSITION_SHIFTED, "two_names", "three_names", "absent_query"),
    "docstring": (POSITION_SHIFTED, "varied_args"),
}


def probes_of(task: Task) -> tuple[str, ...]:
    """The probes of ``task`` (a task without an entry gets the position shift only)."""
    return PROBES.get(task.name, (POSITION_SHIFTED,))


def probe_prompts(
    task: Task,
    probe: str,
    n: int,
    seed: int,
    tokenizer: TextTokenizer | None = None,
    templates: list[int] | None = None,
) -> list[Prompt]:
    """``n`` distinct prompts of ``probe``, deterministic in ``seed``. ``templates``: the papers'
    templates the position shift draws from (default: the task's test templates)."""
    rng = random.Random(split_seed(seed, task.name, f"probe/{probe}"))
    if templates is None:
        templates = task.template_split(seed)["test"]
    seen: set[str] = set()
    out: list[Prompt] = []
    for _ in range(50 * n + 1000):
        if len(out) == n:
            break
        if probe == POSITION_SHIFTED:
            prompt = task.sample(rng, rng.choice(templates), tokenizer)
            prompt = shifted(prompt, random_prefix(rng, SHIFT_WORDS[1], SHIFT_WORDS[0]))
        else:
            prompt = task.sample_variant(rng, probe, tokenizer)
        if prompt.clean not in seen:
            seen.add(prompt.clean)
            out.append(prompt)
    if len(out) < n:
        raise RuntimeError(f"{task.name}/{probe}: only {len(out)} distinct prompts of {n}")
    return out
