"""Indirect Object Identification (Wang et al. 2022; APP; Edge Pruning; HAP).

The prompt ends before the indirect object; the answer is IO, the distractor S. Corruptions:
``abc`` (IO, S1, S2 -> three fresh distinct names; APP's path patching and means), ``all_names``
(Edge Pruning: all four name slots, including the final answer, get fresh names), ``s2_io`` (S2 ->
IO; APP's activation patching only).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from circuitbench.tasks.base import Prompt, Task, single_token_words
from circuitbench.tasks.words import FILLER_ADJECTIVES, FILLER_VERBS, IOI_OBJECTS, IOI_PLACES, NAMES
from circuitbench.tokenization import TextTokenizer

# BABA order: [B] (the subject S) is named first; [A] is the indirect object IO.
BABA_TEMPLATES = (
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to",
)
# ABBA: the same templates with the first clause's two names swapped.
ABBA_TEMPLATES = tuple(t.replace("[B] and [A]", "[A] and [B]", 1) for t in BABA_TEMPLATES)
TEMPLATES = BABA_TEMPLATES + ABBA_TEMPLATES  # ids 0-14 BABA, 15-29 ABBA


def _fill(template: str, io: str, s1: str, s2: str, place: str, obj: str) -> tuple[str, dict]:
    """Fill a template; returns the text and the character offsets of IO, S1 and S2."""
    first_a, first_b = template.index("[A]"), template.index("[B]")
    order = ["IO", "S1"] if first_a < first_b else ["S1", "IO"]
    parts = template.replace("[PLACE]", place).replace("[OBJECT]", obj)
    # Replace the three name slots left to right, recording where each lands.
    offsets: dict[str, int] = {}
    text = ""
    rest = parts
    for slot in [*order, "S2"]:
        marker = "[A]" if slot == "IO" else "[B]"
        cut = rest.index(marker)
        text += rest[:cut]
        offsets[slot] = len(text)
        text += {"IO": io, "S1": s1, "S2": s2}[slot]
        rest = rest[cut + len(marker) :]
    return text + rest, offsets


@dataclass(frozen=True)
class IOI(Task):
    prompt_type: str = "mixed"  # mixed | abba | baba
    corruption: str = "abc"  # the default corrupted stream for methods
    split: str = "ep"  # ep: 4 templates held out for test | app: all templates everywhere

    name: ClassVar[str] = "ioi"
    corruptions: ClassVar[tuple[str, ...]] = ("abc", "all_names", "s2_io")
    # Extra sentences that mention a name: IO (then IO is said twice), S (S three times) or a
    # third name C said once; "mentions" adds one to three of them. The answer stays IO.
    variants: ClassVar[tuple[str, ...]] = ("io_twice", "s_thrice", "third_name", "mentions")

    def __post_init__(self) -> None:
        if self.prompt_type not in ("mixed", "abba", "baba"):
            raise ValueError(
                f"tasks.ioi.prompt_type must be mixed|abba|baba, got {self.prompt_type!r}"
            )
        if self.corruption not in self.corruptions:
            raise ValueError(f"tasks.ioi.corruption must be one of {self.corruptions}")
        if self.split not in ("ep", "app"):
            raise ValueError(f"tasks.ioi.split must be ep|app, got {self.split!r}")

    @property
    def n_templates(self) -> int:
        return len(TEMPLATES)

    def _allowed(self) -> list[int]:
        baba, abba = list(range(15)), list(range(15, 30))
        return {"mixed": baba + abba, "baba": baba, "abba": abba}[self.prompt_type]

    def template_split(self, seed: int) -> dict[str, list[int]]:
        allowed = self._allowed()
        if self.split == "app":
            return {"train": allowed, "validation": allowed, "test": allowed}
        # Edge Pruning: 2 BABA + 2 ABBA templates (seeded) form the test split.
        rng = random.Random(seed)
        baba = [t for t in allowed if t < 15]
        abba = [t for t in allowed if t >= 15]
        held = set(rng.sample(baba, min(2, len(baba))) + rng.sample(abba, min(2, len(abba))))
        rest = [t for t in allowed if t not in held]
        return {"train": rest, "validation": rest, "test": sorted(held)}

    def sample(self, rng: random.Random, template: int, tokenizer: TextTokenizer | None) -> Prompt:
        names = single_token_words(NAMES, tokenizer, minimum=7)
        io, s, x, y, z = rng.sample(names, 5)
        # Edge Pruning's corruption draws its four names on its own (all distinct from IO and S).
        ex, ey, ez, ew = rng.sample([n for n in names if n not in (io, s)], 4)
        place, obj = rng.choice(IOI_PLACES), rng.choice(IOI_OBJECTS)
        tpl = TEMPLATES[template]
        clean, offsets = _fill(tpl, io, s, s, place, obj)
        positions = {
            "IO": offsets["IO"],
            "S1": offsets["S1"],
            "S1+1": offsets["S1"] + len(s),
            "S2": offsets["S2"],
        }
        corrupt = {
            "abc": _fill(tpl, x, y, z, place, obj)[0],
            # The fourth name (ew) is the corrupted sentence's answer, outside the prompt.
            "all_names": _fill(tpl, ex, ey, ez, place, obj)[0],
            "s2_io": _fill(tpl, io, s, io, place, obj)[0],
        }
        return Prompt(
            template=template,
            clean=clean,
            target=" " + io,
            answers=(" " + io,),
            distractors=(" " + s,),
            corrupt=corrupt,
            positions=positions,
            info={"IO": io, "S": s, "abc": [x, y, z], "all_names": [ex, ey, ez, ew]},
        )

    def sample_variant(
        self, rng: random.Random, variant: str, tokenizer: TextTokenizer | None = None
    ) -> Prompt:
        if variant not in self.variants:
            return super().sample_variant(rng, variant, tokenizer)
        names = single_token_words(NAMES, tokenizer, minimum=3)
        io, s, c = rng.sample(names, 3)
        template = rng.choice(self._allowed())
        clean, offsets = _fill(
            TEMPLATES[template], io, s, s, rng.choice(IOI_PLACES), rng.choice(IOI_OBJECTS)
        )
        mentioned = {"io_twice": [io], "s_thrice": [s], "third_name": [c]}.get(variant)
        if mentioned is None:  # "mentions"
            mentioned = rng.sample([io, s, c], rng.randint(1, 3))
        for name in mentioned:
            # Before the whole prompt, or just before S2 (the clause that names the giver).
            at = rng.choice([0, offsets["S2"]])
            sentence = _mention(rng, name)
            clean = clean[:at] + sentence + clean[at:]
            offsets = {k: v + len(sentence) if v >= at else v for k, v in offsets.items()}
        return Prompt(
            template=template,
            clean=clean,
            target=" " + io,
            answers=(" " + io,),
            distractors=(" " + s,),
            corrupt={},
            positions={
                "IO": offsets["IO"],
                "S1": offsets["S1"],
                "S1+1": offsets["S1"] + len(s),
                "S2": offsets["S2"],
            },
            info={"IO": io, "S": s, "variant": variant, "mentioned": mentioned},
        )

    def vocabulary_text(self) -> list[str]:
        return [*TEMPLATES, " ".join(NAMES), " ".join(IOI_PLACES), " ".join(IOI_OBJECTS)]


def _mention(rng: random.Random, name: str) -> str:
    """A short sentence about ``name`` (no giving, no second person)."""
    if rng.random() < 0.5:
        return f"{name} was {rng.choice(FILLER_ADJECTIVES)}. "
    return f"{name} {rng.choice(FILLER_VERBS)} the {rng.choice(FILLER_ADJECTIVES)} house. "
