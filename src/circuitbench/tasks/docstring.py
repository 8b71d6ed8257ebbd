"""Docstring (ACDC's prompts, used by APP).

A reST docstring documents the matching arguments of a ``def`` in order; the model must name the
next one. Generator settings as ACDC's ``docstring_induction_prompt_generator("rest",
n_matching_args=3, n_def_prefix_args=1, n_def_suffix_args=2, n_doc_prefix_args=0, met_desc_len=3,
arg_desc_len=2)``; prompt ``i`` is seeded by the split seed's stream. Corruption ``random_random``:
the matching arguments of the definition and of the docstring become fresh random names.
Metric: logit(correct) - max logit over every other argument name used in any variant (the
un-negated difference; APP negates it, see ``docs/tasks.md``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from circuitbench.tasks.base import Prompt, Task, single_token_words
from circuitbench.tasks.words import CODE_METHODS, CODE_VARIABLES, CODE_WORDS
from circuitbench.tokenization import TextTokenizer

N_MATCHING, N_DEF_PREFIX, N_DEF_SUFFIX, MET_DESC_LEN, ARG_DESC_LEN = 3, 1, 2, 3, 2


def render(
    method: str,
    def_args: list[str],
    doc_args: list[str],
    desc: list[str],
    arg_desc: list[list[str]],
) -> str:
    lines = [f"def {method}(self, {', '.join(def_args)}):", f'    """{" ".join(desc)}', ""]
    lines += [f"    :param {a}: {' '.join(d)}" for a, d in zip(doc_args, arg_desc, strict=True)]
    lines.append("    :param")
    return "\n".join(lines)


@dataclass(frozen=True)
class Docstring(Task):
    corruption: str = "random_random"

    name: ClassVar[str] = "docstring"
    corruptions: ClassVar[tuple[str, ...]] = ("random_random",)
    metric_reduce: ClassVar[str] = "max"
    # varied_args: 0-2 leading and 0-2 trailing arguments, 2-4 documented ones, descriptions of
    # 1-5 and 1-3 words, so the answer is not at one fixed position.
    variants: ClassVar[tuple[str, ...]] = ("varied_args",)

    def __post_init__(self) -> None:
        if self.corruption not in self.corruptions:
            raise ValueError(f"tasks.docstring.corruption must be one of {self.corruptions}")

    @property
    def n_templates(self) -> int:
        return 1

    def facts(self) -> dict[str, Any]:
        return {"apply_app_sign": False, "style": "rest"}

    def sample(self, rng: random.Random, template: int, tokenizer: TextTokenizer | None) -> Prompt:
        counts = (N_DEF_PREFIX, N_MATCHING, N_DEF_SUFFIX, MET_DESC_LEN, ARG_DESC_LEN)
        return self._sample(rng, tokenizer, *counts)

    def sample_variant(
        self, rng: random.Random, variant: str, tokenizer: TextTokenizer | None = None
    ) -> Prompt:
        if variant not in self.variants:
            return super().sample_variant(rng, variant, tokenizer)
        prompt = self._sample(
            rng,
            tokenizer,
            n_def_prefix=rng.randint(0, 2),
            n_matching=rng.randint(2, 4),
            n_def_suffix=rng.randint(0, 2),
            met_desc_len=rng.randint(1, 5),
            arg_desc_len=rng.randint(1, 3),
        )
        return replace(prompt, corrupt={}, info={**prompt.info, "variant": variant})

    def _sample(
        self,
        rng: random.Random,
        tokenizer: TextTokenizer | None,
        n_def_prefix: int,
        n_matching: int,
        n_def_suffix: int,
        met_desc_len: int,
        arg_desc_len: int,
    ) -> Prompt:
        variables = single_token_words(CODE_VARIABLES, tokenizer, minimum=16)
        words = single_token_words(CODE_WORDS, tokenizer)
        n_args = n_def_prefix + n_matching + n_def_suffix
        # Clean args plus fresh names for the corrupted definition and docstring, all distinct.
        names = rng.sample(variables, n_args + n_matching + (n_matching - 1))
        def_args = names[:n_args]
        matching = def_args[n_def_prefix : n_def_prefix + n_matching]
        fresh_def = names[n_args : n_args + n_matching]
        fresh_doc = names[n_args + n_matching :]
        method = rng.choice(CODE_METHODS)
        desc = [rng.choice(words) for _ in range(met_desc_len)]
        arg_desc = [[rng.choice(words) for _ in range(arg_desc_len)] for _ in range(n_matching - 1)]
        corrupt_def = def_args[:n_def_prefix] + fresh_def + def_args[n_def_prefix + n_matching :]
        answer = matching[-1]
        used = set(def_args) | set(fresh_def) | set(fresh_doc)
        wrong = tuple(" " + a for a in sorted(used - {answer}))
        return Prompt(
            template=0,
            clean=render(method, def_args, matching[:-1], desc, arg_desc),
            target=" " + answer,
            answers=(" " + answer,),
            distractors=wrong,
            corrupt={"random_random": render(method, corrupt_def, fresh_doc, desc, arg_desc)},
            info={"def_args": def_args, "answer": answer},
        )

    def vocabulary_text(self) -> list[str]:
        skeleton = render("get", ["a"], ["a"], ["a"], [["a"]])
        return [skeleton, " ".join(CODE_VARIABLES + CODE_WORDS + CODE_METHODS)]
