"""Gendered Pronouns (APP; Edge Pruning).

"So John is really nice, isn't" -> " he". Corruptions: ``neutral_person`` (APP: the name becomes
"Person" and "So" becomes "That") and ``opposite_gender`` (Edge Pruning: a random name of the
other gender with the same token length).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from circuitbench.tasks.base import Prompt, Task, single_token_words
from circuitbench.tasks.words import (
    FEMALE_NAMES,
    FEMALE_NAMES_EXTENDED,
    MALE_NAMES,
    MALE_NAMES_EXTENDED,
)
from circuitbench.tokenization import TextTokenizer

TEMPLATES = (
    "So [NAME] is a really great friend, isn't",
    "So [NAME] is such a good cook, isn't",
    "So [NAME] is a very good athlete, isn't",
    "So [NAME] is really nice, isn't",
    "So [NAME] is always full of energy, isn't",
    "So [NAME] is really thoughtful, isn't",
    "So [NAME] is quite the storyteller, isn't",
    "So [NAME] is a bit of a genius, isn't",
    "So [NAME] is always on time, isn't",
    "So [NAME] is great with kids, isn't",
    "So [NAME] is incredibly patient, isn't",
    "So [NAME] is a natural leader, isn't",
    "So [NAME] is really creative, isn't",
    "So [NAME] is a really good student, isn't",
    "So [NAME] is really clever, isnt't",  # sic: the typo is in APP's template list
)


@dataclass(frozen=True)
class GenderedPronouns(Task):
    corruption: str = "neutral_person"
    name_set: str = "extended"  # app: APP's 10 + 10 names | extended: 40 + 40

    name: ClassVar[str] = "gendered_pronouns"
    corruptions: ClassVar[tuple[str, ...]] = ("neutral_person", "opposite_gender")

    def __post_init__(self) -> None:
        if self.name_set not in ("app", "extended"):
            raise ValueError(
                f"tasks.gendered_pronouns.name_set must be app|extended: {self.name_set!r}"
            )
        if self.corruption not in self.corruptions:
            raise ValueError(
                f"tasks.gendered_pronouns.corruption must be one of {self.corruptions}"
            )

    @property
    def n_templates(self) -> int:
        return len(TEMPLATES)

    def _names(self) -> tuple[list[str], list[str]]:
        if self.name_set == "app":
            return MALE_NAMES, FEMALE_NAMES
        return MALE_NAMES_EXTENDED, FEMALE_NAMES_EXTENDED

    def sample(self, rng: random.Random, template: int, tokenizer: TextTokenizer | None) -> Prompt:
        male = rng.random() < 0.5
        males, females = self._names()
        own, other = (males, females) if male else (females, males)
        name = rng.choice(single_token_words(own, tokenizer))
        width = tokenizer.n_tokens(" " + name) if tokenizer else 1
        swap = rng.choice(
            [n for n in other if (tokenizer.n_tokens(" " + n) if tokenizer else 1) == width]
        )
        tpl = TEMPLATES[template]
        pronoun, wrong = (" he", " she") if male else (" she", " he")
        return Prompt(
            template=template,
            clean=tpl.replace("[NAME]", name),
            target=pronoun,
            answers=(pronoun,),
            distractors=(wrong,),
            corrupt={
                "neutral_person": "That" + tpl[2:].replace("[NAME]", "Person"),
                "opposite_gender": tpl.replace("[NAME]", swap),
            },
            info={"name": name, "gender": "male" if male else "female", "swap": swap},
        )

    def vocabulary_text(self) -> list[str]:
        names = MALE_NAMES_EXTENDED + FEMALE_NAMES_EXTENDED
        return [*TEMPLATES, "That Person he she", " ".join(names)]
