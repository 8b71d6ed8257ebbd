"""Greater-Than (Hanna et al. 2023; APP; Edge Pruning).

"The war lasted from the year 1352 to the year 13" -> a two-digit year greater than 52.
Correct answers are YY+1..99; APP's LD_GT subtracts the mean logit over 01..YY-1 (00 and YY
excluded). Corruptions: ``01`` (YY -> 01; Hanna, APP) and ``random_year`` (a different random
century and year; Edge Pruning). Years are kept only where the tokenizer splits " XXYY" into the
century token and the two-digit token (GPT-2: " 13" + "52"; the toy vocabulary always does, with
the century sharing the 00-99 tokens: ``century_tokens = shared``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from circuitbench import metrics
from circuitbench.tasks.base import Prompt, Task, TaskData
from circuitbench.tasks.words import GT_NOUNS
from circuitbench.tokenization import TextTokenizer

TEMPLATE = "The [NOUN] lasted from the year [XX][YY] to the year [XX]"
CENTURIES = tuple(range(11, 19))  # years 1100-1899
YY_RANGE = tuple(range(2, 99))  # first/last year of a century excluded, as in Hanna et al.


def _year_ok(tokenizer: TextTokenizer | None, century: int, yy: int) -> bool:
    if tokenizer is None:
        return True
    return (
        tokenizer.ids(f" {century}{yy:02d}")
        == tokenizer.ids(f" {century}") + tokenizer.ids(f"{yy:02d}")
        and tokenizer.n_tokens(f" {century}") == 1
    )


@dataclass(frozen=True)
class GreaterThan(Task):
    corruption: str = "01"

    name: ClassVar[str] = "greater_than"
    corruptions: ClassVar[tuple[str, ...]] = ("01", "random_year")
    # another year, of another century, earlier in the prompt: the start year is the one whose
    # century the prompt ends with, not "the two-digit token at that place".
    variants: ClassVar[tuple[str, ...]] = ("distractor_year",)

    def __post_init__(self) -> None:
        if self.corruption not in self.corruptions:
            raise ValueError(f"tasks.greater_than.corruption must be one of {self.corruptions}")

    @property
    def n_templates(self) -> int:
        return 1

    def facts(self) -> dict[str, Any]:
        return {"century_tokens": "shared"}

    def sample(self, rng: random.Random, template: int, tokenizer: TextTokenizer | None) -> Prompt:
        for _ in range(1000):
            century, yy = rng.choice(CENTURIES), rng.choice(YY_RANGE)
            other_century, other_yy = rng.choice(CENTURIES), rng.choice(YY_RANGE)
            if other_century == century or not all(
                _year_ok(tokenizer, c, y)
                for c, y in ((century, yy), (century, 1), (other_century, other_yy))
            ):
                continue
            break
        else:
            raise ValueError("no year tokenizes as century + two digits")
        noun = rng.choice(GT_NOUNS)

        def fill(c: int, y: int, end_c: int) -> str:
            return (
                TEMPLATE.replace("[NOUN]", noun)
                .replace("[XX][YY]", f"{c}{y:02d}")
                .replace("[XX]", str(end_c))
            )

        later = tuple(f"{y:02d}" for y in range(yy + 1, 100))
        earlier = tuple(f"{y:02d}" for y in range(1, yy))
        return Prompt(
            template=0,
            clean=fill(century, yy, century),
            target=rng.choice(later),
            answers=later,
            distractors=earlier,
            corrupt={
                "01": fill(century, 1, century),
                "random_year": fill(other_century, other_yy, other_century),
            },
            info={"century": century, "yy": yy, "noun": noun},
            standalone_completions=True,
        )

    def sample_variant(
        self, rng: random.Random, variant: str, tokenizer: TextTokenizer | None = None
    ) -> Prompt:
        if variant not in self.variants:
            return super().sample_variant(rng, variant, tokenizer)
        prompt = self.sample(rng, 0, tokenizer)
        century = prompt.info["century"]
        other = rng.choice([c for c in CENTURIES if c != century])
        year = f"{other}{rng.choice(YY_RANGE):02d}"
        noun = prompt.info["noun"]
        if rng.random() < 0.5:
            clean = f"In {year}. " + prompt.clean
        else:
            clean = prompt.clean.replace(f"The {noun} ", f"The {noun} of {year} ", 1)
        return replace(
            prompt, clean=clean, corrupt={}, info={**prompt.info, "variant": variant, "other": year}
        )

    def vocabulary_text(self) -> list[str]:
        years = " ".join(f"{y:02d}" for y in range(100))
        return [TEMPLATE.replace("[XX][YY]", "").replace("[XX]", ""), " ".join(GT_NOUNS), years]

    def variant_vocabulary_text(self) -> list[str]:
        return ["In of"]

    def encode_extra(
        self, prompts: Sequence[Prompt], tokenizer: TextTokenizer
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        year_ids = []
        for y in range(100):
            ids = tokenizer.ids(f"{y:02d}")
            if ids is None or len(ids) != 1:
                raise ValueError(f"tokenizer {tokenizer.name} does not give '{y:02d}' one token")
            year_ids.append(ids[0])
        yy = torch.tensor([p.info["yy"] for p in prompts])
        return {"yy": yy}, {"year_ids": torch.tensor(year_ids)}

    def extra_metrics(self, logits_end: torch.Tensor, data: TaskData) -> dict[str, torch.Tensor]:
        year_ids = data.constants["year_ids"].to(logits_end.device)
        yy = data.extra["yy"].to(logits_end.device)
        return {
            "prob_diff": metrics.prob_diff_full_softmax(logits_end, year_ids, yy),
            "prob_diff_restricted": metrics.prob_diff_restricted(logits_end, year_ids, yy),
        }
