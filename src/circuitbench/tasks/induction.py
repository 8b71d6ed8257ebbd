"""Name induction (APP's "Induction").

"Then, Alice Smith walked to the park. This time, Alice" -> " Smith": the model must complete a
repeated name by induction. APP uses names that are two GPT-2 tokens; in a word-level vocabulary we
use two-word names (``form = two_word_names``, first and last name each one token), which keeps
"predict the second token of a repeated name" intact and works for GPT-2 BPE as well.

Corruption ``random_names``: the first occurrence becomes another name N1 and the truncated second
occurrence the first token of a third name N2 (clean name, N1 and N2 pairwise distinct), so there is
nothing to induce. Metric: logit(clean last name) - logit(N2's last name).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from circuitbench.tasks.base import Prompt, Task, single_token_words
from circuitbench.tasks.words import (
    INDUCTION_OBJECTS,
    INDUCTION_PLACES,
    INDUCTION_TIMES,
    NAMES,
    SURNAMES,
)
from circuitbench.tokenization import TextTokenizer

# [NAME] is the full name at its first mention; the prompt ends with the repeated first name.
TEMPLATES = (
    "Then, [NAME] walked to the [PLACE]. This time, [FIRST]",
    "Later on, [NAME] bought a [OBJECT] from the store. Here, [FIRST]",
    "Once again, [NAME] wrote a letter at [TIME]. Then [FIRST]",
    "Yesterday, [NAME] went to the [PLACE]. Today, [FIRST]",
    "At [TIME], [NAME] found a [OBJECT] in the [PLACE]. Later, [FIRST]",
    "Every day, [NAME] visits the [PLACE]. Again, [FIRST]",
    "In the morning, [NAME] lost a [OBJECT]. By [TIME], [FIRST]",
    "After lunch, [NAME] left the [PLACE]. Soon, [FIRST]",
    "The [OBJECT] belongs to [NAME]. Of course, [FIRST]",
    "Last week, [NAME] cleaned the [PLACE]. This week, [FIRST]",
    "Before [TIME], [NAME] called from the [PLACE]. Afterwards, [FIRST]",
    "On Sunday, [NAME] painted the [OBJECT]. On Monday, [FIRST]",
    "Near the [PLACE], [NAME] saw a [OBJECT]. Then, [FIRST]",
    "Quietly, [NAME] opened the [OBJECT] at [TIME]. Suddenly, [FIRST]",
    "When [NAME] reached the [PLACE], it was [TIME]. There, [FIRST]",
    "Everyone knows that [NAME] likes the [PLACE]. Indeed, [FIRST]",
    "At the [PLACE], [NAME] sold a [OBJECT]. Later that day, [FIRST]",
    "For years, [NAME] worked at the [PLACE]. Now, [FIRST]",
)


@dataclass(frozen=True)
class Induction(Task):
    form: str = "two_word_names"
    corruption: str = "random_names"

    name: ClassVar[str] = "induction"
    corruptions: ClassVar[tuple[str, ...]] = ("random_names",)
    # two_names / three_names: that many full names in context, one of them repeated;
    # absent_query: the repeated first name is not in context, so the answer is any surname
    # *not* in context (the context's surnames are the distractors).
    variants: ClassVar[tuple[str, ...]] = ("two_names", "three_names", "absent_query")

    def __post_init__(self) -> None:
        if self.form != "two_word_names":
            raise ValueError(
                f"tasks.induction.form: only two_word_names is built, got {self.form!r}"
            )
        if self.corruption not in self.corruptions:
            raise ValueError(f"tasks.induction.corruption must be one of {self.corruptions}")

    @property
    def n_templates(self) -> int:
        return len(TEMPLATES)

    def sample(self, rng: random.Random, template: int, tokenizer: TextTokenizer | None) -> Prompt:
        firsts = single_token_words(NAMES, tokenizer, minimum=3)
        lasts = single_token_words(SURNAMES, tokenizer, minimum=3)
        f0, f1, f2 = rng.sample(firsts, 3)
        l0, l1, l2 = rng.sample(lasts, 3)
        tpl = (
            TEMPLATES[template]
            .replace("[PLACE]", rng.choice(INDUCTION_PLACES))
            .replace("[OBJECT]", rng.choice(INDUCTION_OBJECTS))
            .replace("[TIME]", rng.choice(INDUCTION_TIMES))
        )

        def fill(full: str, first: str) -> str:
            return tpl.replace("[NAME]", full).replace("[FIRST]", first)

        return Prompt(
            template=template,
            clean=fill(f"{f0} {l0}", f0),
            target=" " + l0,
            answers=(" " + l0,),
            distractors=(" " + l2,),
            corrupt={"random_names": fill(f"{f1} {l1}", f2)},
            info={"name": f"{f0} {l0}", "n1": f"{f1} {l1}", "n2": f"{f2} {l2}"},
        )

    def sample_variant(
        self, rng: random.Random, variant: str, tokenizer: TextTokenizer | None = None
    ) -> Prompt:
        if variant not in self.variants:
            return super().sample_variant(rng, variant, tokenizer)
        n_names = {"two_names": 2, "three_names": 3}.get(variant) or rng.randint(1, 2)
        firsts = rng.sample(single_token_words(NAMES, tokenizer, minimum=4), n_names + 1)
        lasts = single_token_words(SURNAMES, tokenizer, minimum=4)
        context = rng.sample(lasts, n_names)
        template = rng.randrange(len(TEMPLATES))
        tpl = (
            TEMPLATES[template]
            .replace("[PLACE]", rng.choice(INDUCTION_PLACES))
            .replace("[OBJECT]", rng.choice(INDUCTION_OBJECTS))
            .replace("[TIME]", rng.choice(INDUCTION_TIMES))
        )
        full = " and ".join(f"{f} {last}" for f, last in zip(firsts, context, strict=False))
        if variant == "absent_query":
            query = firsts[-1]
            others = [last for last in lasts if last not in context]
            target = rng.choice(others)
            answers, distractors = others, context
        else:
            pick = rng.randrange(n_names)
            query, target = firsts[pick], context[pick]
            answers, distractors = [target], [last for last in context if last != target]
        return Prompt(
            template=template,
            clean=tpl.replace("[NAME]", full).replace("[FIRST]", query),
            target=" " + target,
            answers=tuple(" " + a for a in answers),
            distractors=tuple(" " + d for d in distractors),
            corrupt={},
            info={"names": full, "query": query, "variant": variant},
        )

    def vocabulary_text(self) -> list[str]:
        slots = [*INDUCTION_PLACES, *INDUCTION_OBJECTS, *INDUCTION_TIMES, *NAMES, *SURNAMES]
        return [*TEMPLATES, " ".join(slots)]
