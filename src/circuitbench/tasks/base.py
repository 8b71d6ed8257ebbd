"""What every task yields: prompts as text, then encoded clean/corrupted token batches.

A task samples :class:`Prompt` objects (natural text, tokenizer-independent), and
:func:`encode_prompts` turns them into a :class:`TaskData` for one tokenizer: clean tokens, one
corrupted tensor per corruption variant (same length and positions as the clean prompt), answer,
target and distractor ids, template ids and named positions. Examples that a tokenizer cannot
represent as the task requires (a completion that is not one token, a corruption that changes the
length) are dropped and counted, never silently altered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from circuitbench import metrics
from circuitbench.tasks.words import PREFIX_WORDS
from circuitbench.tokenization import TextTokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Prompt:
    """One example as text.

    ``target`` is the completion a model is trained to produce and scored on for accuracy;
    ``answers`` is the set of correct completions (Greater-Than: every later year) and
    ``distractors`` the wrong ones the metric subtracts. ``positions`` maps a named position (IOI's
    IO, S1, S1+1, S2) to the character offset where that word starts in ``clean``.
    """

    template: int
    clean: str
    target: str
    answers: tuple[str, ...]
    distractors: tuple[str, ...]
    corrupt: dict[str, str]
    positions: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    # True where completions are tokens in their own right, read off the vocabulary rather than
    # off the joined text (Greater-Than's "00".."99": GPT-2 merges some " XXYY" years).
    standalone_completions: bool = False


def shifted(prompt: Prompt, prefix: str) -> Prompt:
    """``prompt`` with ``prefix`` before its clean and corrupted texts (named positions move
    with it): the same example at other absolute positions."""
    if not prefix:
        return prompt
    return replace(
        prompt,
        clean=prefix + prompt.clean,
        corrupt={k: prefix + v for k, v in prompt.corrupt.items()},
        positions={k: v + len(prefix) for k, v in prompt.positions.items()},
        info={**prompt.info, "prefix": prefix},
    )


def random_prefix(rng: random.Random, max_words: int, min_words: int = 0) -> str:
    """``k`` unrelated words and a full stop (``min_words <= k <= max_words``), or ``""``."""
    k = rng.randint(min_words, max_words)
    if k == 0:
        return ""
    return " ".join(rng.choice(PREFIX_WORDS) for _ in range(k)) + ". "


class Task(ABC):
    """A task: templates, slot pools, a sampler, corruptions and its metric.

    Besides the papers' prompts (:meth:`sample`), a task names *variants*
    (:meth:`sample_variant`): harder forms of the same problem that a shortcut cannot solve
    (IOI with the indirect object named twice, induction with two names in context, ...). The
    toy suite's training corpus mixes them in, and the mechanism stage measures accuracy on
    them (see ``docs/tasks.md``). Variant prompts carry no corrupted texts.
    """

    name: ClassVar[str]
    corruptions: ClassVar[tuple[str, ...]]
    metric_reduce: ClassVar[str] = "mean"  # how distractor logits combine (see metrics.logit_diff)
    # Task-specific variants beyond "standard" (a papers' prompt), each a string key.
    variants: ClassVar[tuple[str, ...]] = ()

    @property
    @abstractmethod
    def n_templates(self) -> int: ...

    @abstractmethod
    def sample(self, rng: random.Random, template: int, tokenizer: TextTokenizer | None) -> Prompt:
        """One prompt from ``template``; ``tokenizer`` (if given) filters slot values to the ones
        it can represent as the task requires."""

    def sample_variant(
        self, rng: random.Random, variant: str, tokenizer: TextTokenizer | None = None
    ) -> Prompt:
        """One prompt of ``variant`` (``standard``: a papers' prompt from any template)."""
        if variant == "standard":
            return self.sample(rng, rng.randrange(self.n_templates), tokenizer)
        known = ", ".join(("standard", *self.variants))
        raise KeyError(f"{self.name}: unknown variant {variant!r}; known: {known}")

    @abstractmethod
    def vocabulary_text(self) -> list[str]:
        """Texts that together contain every word of this task's papers' prompts."""

    def variant_vocabulary_text(self) -> list[str]:
        """Texts with the words only its variants use (they join the toy vocabulary after
        every task's own words, so adding a variant never renumbers existing tokens)."""
        return []

    def options(self) -> dict[str, Any]:
        """The task's settings (its constructor arguments), recorded in every artifact."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def facts(self) -> dict[str, Any]:
        """Fixed choices of this implementation, recorded beside the options."""
        return {}

    def template_split(self, seed: int) -> dict[str, list[int]]:
        """Templates per split; overridden where a paper holds templates out (Edge Pruning's
        IOI)."""
        everything = list(range(self.n_templates))
        return dict.fromkeys(SPLITS, everything)

    def extra_metrics(self, logits_end: torch.Tensor, data: TaskData) -> dict[str, torch.Tensor]:
        """Task-specific metrics beyond logit difference and accuracy (per example)."""
        return {}

    def encode_extra(
        self, prompts: Sequence[Prompt], tokenizer: TextTokenizer
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-example tensors and shared constants a task's extra metrics need."""
        return {}, {}

    # -- generation ---------------------------------------------------------------------------

    def generate(
        self,
        n: int,
        seed: int,
        templates: Sequence[int],
        tokenizer: TextTokenizer | None = None,
        exclude: set[str] | None = None,
    ) -> list[Prompt]:
        """``n`` distinct prompts, deterministic in ``seed``; none whose clean text is in
        ``exclude`` (used to keep splits and the training corpus disjoint)."""
        if n < 0:
            raise ValueError(f"number of examples must be >= 0, got {n}")
        rng = random.Random(seed)
        exclude = exclude or set()
        seen: set[str] = set()
        prompts: list[Prompt] = []
        templates = list(templates)
        attempts = 0
        while len(prompts) < n:
            attempts += 1
            if attempts > 50 * n + 1000:
                raise RuntimeError(
                    f"{self.name}: only {len(prompts)} distinct prompts out of {n} requested "
                    f"could be generated from templates {list(templates)}; ask for fewer"
                )
            prompt = self.sample(rng, rng.choice(templates), tokenizer)
            key = prompt.clean
            if key in seen or key in exclude:
                continue
            seen.add(key)
            prompts.append(prompt)
        return prompts


@dataclass(frozen=True)
class SplitSizes:
    """How many prompts each split gets (config ``tasks.<name>.n_train`` ...)."""

    n_train: int = 200
    n_validation: int = 200
    n_test: int = 400

    def __post_init__(self) -> None:
        for split, n in self.by_split().items():
            if n < 0:
                raise ValueError(f"n_{split} must be >= 0, got {n}")

    def by_split(self) -> dict[str, int]:
        return {"train": self.n_train, "validation": self.n_validation, "test": self.n_test}


def split_seed(seed: int, task: str, split: str) -> int:
    """Independent, stable seed per (task, split)."""
    digest = hashlib.sha256(f"{seed}/{task}/{split}".encode()).hexdigest()
    return int(digest[:12], 16)


def make_splits(
    task: Task,
    sizes: dict[str, int],
    seed: int,
    tokenizer: TextTokenizer | None = None,
) -> dict[str, list[Prompt]]:
    """Train/validation/test prompts with no clean prompt shared between splits (and no template
    shared with the test split where the task splits by template)."""
    templates = task.template_split(seed)
    taken: set[str] = set()
    out: dict[str, list[Prompt]] = {}
    for split in SPLITS:
        prompts = task.generate(
            sizes[split], split_seed(seed, task.name, split), templates[split], tokenizer, taken
        )
        taken.update(p.clean for p in prompts)
        out[split] = prompts
    return out


def single_token_words(
    words: Sequence[str], tokenizer: TextTokenizer | None, minimum: int = 1
) -> list[str]:
    """The words that are one token with a leading space (all of them without a tokenizer)."""
    kept = (
        list(words) if tokenizer is None else [w for w in words if tokenizer.n_tokens(" " + w) == 1]
    )
    if len(kept) < minimum:
        name = tokenizer.name if tokenizer else "word-level"
        raise ValueError(f"tokenizer {name} keeps {len(kept)} single-token words, need {minimum}")
    return kept


# -- encoding -----------------------------------------------------------------------------------


@dataclass
class TaskData:
    """A tokenized split. Shapes: ``clean_tokens`` and each ``corrupt_tokens[variant]``
    ``[n, pos]`` (right-padded with ``pad_id``), ``end_pos`` ``[n]``, ``answer_ids`` and
    ``distractor_ids`` ``[n, k]`` padded with -1, ``target_ids`` ``[n]``, ``template`` ``[n]``,
    each ``positions[name]`` ``[n]``."""

    task: str
    split: str
    clean_tokens: torch.Tensor
    corrupt_tokens: dict[str, torch.Tensor]
    end_pos: torch.Tensor
    target_ids: torch.Tensor
    answer_ids: torch.Tensor
    distractor_ids: torch.Tensor
    template: torch.Tensor
    positions: dict[str, torch.Tensor]
    metric_reduce: str
    pad_id: int
    texts: list[dict[str, Any]]
    meta: dict[str, Any]
    # Per-example task data (``[n, ...]``, e.g. Greater-Than's start year) and shared constants
    # (e.g. the ids of "00".."99").
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    constants: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.clean_tokens.shape[0]

    def logits_at_end(self, logits: torch.Tensor) -> torch.Tensor:
        """``[n, pos, vocab]`` -> ``[n, vocab]`` at each example's prediction position."""
        index = self.end_pos.to(logits.device)
        return logits[torch.arange(logits.shape[0], device=logits.device), index]

    def metric(self, logits_end: torch.Tensor) -> torch.Tensor:
        """The task's logit-difference metric per example. ``[n]``"""
        return metrics.logit_diff(
            logits_end,
            self.answer_ids.to(logits_end.device),
            self.distractor_ids.to(logits_end.device),
            reduce=self.metric_reduce,
        )

    def accuracy(self, logits_end: torch.Tensor) -> torch.Tensor:
        """1 where the full-vocabulary argmax is a correct answer. ``[n]``"""
        return metrics.top1_in_set(logits_end, self.answer_ids.to(logits_end.device))

    def select(self, index: slice | torch.Tensor) -> TaskData:
        """A sub-batch (same fields, rows picked by ``index``)."""
        rows = torch.arange(len(self))[index]
        return TaskData(
            task=self.task,
            split=self.split,
            clean_tokens=self.clean_tokens[rows],
            corrupt_tokens={k: v[rows] for k, v in self.corrupt_tokens.items()},
            end_pos=self.end_pos[rows],
            target_ids=self.target_ids[rows],
            answer_ids=self.answer_ids[rows],
            distractor_ids=self.distractor_ids[rows],
            template=self.template[rows],
            positions={k: v[rows] for k, v in self.positions.items()},
            metric_reduce=self.metric_reduce,
            pad_id=self.pad_id,
            texts=[self.texts[i] for i in rows.tolist()],
            meta=self.meta,
            extra={k: v[rows] for k, v in self.extra.items()},
            constants=self.constants,
        )

    # -- JSON artifact (no pickles: readable, diffable, loadable without torch.load) -----------

    def to_json(self) -> dict[str, Any]:
        def strip(row: list[int]) -> list[int]:
            return [i for i in row if i != metrics.PAD_ID]

        return {
            "meta": self.meta,
            "metric_reduce": self.metric_reduce,
            "pad_id": self.pad_id,
            "extra": {k: v.tolist() for k, v in self.extra.items()},
            "constants": {k: v.tolist() for k, v in self.constants.items()},
            "examples": [
                {
                    **self.texts[i],
                    "template": int(self.template[i]),
                    "end_pos": int(self.end_pos[i]),
                    "clean_ids": self.clean_tokens[i, : self.end_pos[i] + 1].tolist(),
                    "corrupt_ids": {
                        k: v[i, : self.end_pos[i] + 1].tolist()
                        for k, v in self.corrupt_tokens.items()
                    },
                    "target_id": int(self.target_ids[i]),
                    "answer_ids": strip(self.answer_ids[i].tolist()),
                    "distractor_ids": strip(self.distractor_ids[i].tolist()),
                    "positions": {k: int(v[i]) for k, v in self.positions.items()},
                }
                for i in range(len(self))
            ],
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> TaskData:
        missing = [k for k in ("meta", "examples", "pad_id", "metric_reduce") if k not in payload]
        if missing:
            raise ValueError(f"not a task data file: no {', '.join(missing)}")
        meta = payload["meta"]
        rows = payload["examples"]
        if not rows:
            raise ValueError(f"dataset {meta.get('task')}/{meta.get('split')} has no examples")
        pad_id = int(payload["pad_id"])
        variants = list(rows[0]["corrupt_ids"])
        position_names = list(rows[0]["positions"])
        texts = [{k: r[k] for k in ("clean", "target", "corrupt", "info")} for r in rows]
        return cls(
            task=meta["task"],
            split=meta["split"],
            clean_tokens=_pad([r["clean_ids"] for r in rows], pad_id),
            corrupt_tokens={v: _pad([r["corrupt_ids"][v] for r in rows], pad_id) for v in variants},
            end_pos=torch.tensor([r["end_pos"] for r in rows]),
            target_ids=torch.tensor([r["target_id"] for r in rows]),
            answer_ids=_pad([r["answer_ids"] for r in rows], metrics.PAD_ID),
            distractor_ids=_pad([r["distractor_ids"] for r in rows], metrics.PAD_ID),
            template=torch.tensor([r["template"] for r in rows]),
            positions={p: torch.tensor([r["positions"][p] for r in rows]) for p in position_names},
            metric_reduce=payload["metric_reduce"],
            pad_id=pad_id,
            texts=texts,
            meta=meta,
            extra={k: torch.tensor(v) for k, v in payload.get("extra", {}).items()},
            constants={k: torch.tensor(v) for k, v in payload.get("constants", {}).items()},
        )

    def dumps(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)


def read_task_data(path: str | Path) -> TaskData:
    """A split written by the ``data`` step (or a planted build)."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read task data {path}: {err}") from err
    return TaskData.from_json(payload)


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), max(width, 1)), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def encode_prompts(
    task: Task,
    prompts: Sequence[Prompt],
    tokenizer: TextTokenizer,
    split: str,
    meta: dict[str, Any] | None = None,
) -> TaskData:
    """Tokenize prompts for one tokenizer, checking the invariants every method relies on."""
    kept: list[tuple[Prompt, dict[str, Any]]] = []
    dropped: dict[str, int] = {}

    def drop(reason: str) -> None:
        dropped[reason] = dropped.get(reason, 0) + 1

    for prompt in prompts:
        clean_ids = tokenizer.encode(prompt.clean)
        corrupt_ids = {v: tokenizer.encode(t) for v, t in prompt.corrupt.items()}
        if any(len(ids) != len(clean_ids) for ids in corrupt_ids.values()):
            drop("corruption changes the length")
            continue

        def single(completion: str, prompt: Prompt = prompt) -> int | None:
            ids: list[int] | None
            if prompt.standalone_completions:
                ids = tokenizer.ids(completion)
            else:
                ids = tokenizer.completion_ids(prompt.clean, completion)
            return ids[0] if ids is not None and len(ids) == 1 else None

        target = single(prompt.target)
        answers = [single(a) for a in prompt.answers]
        distractors = [single(d) for d in prompt.distractors]
        if target is None or None in answers or None in distractors:
            drop("a completion is not exactly one token")
            continue
        if not tokenizer.is_known(prompt.clean) or not all(
            tokenizer.is_known(t) for t in prompt.corrupt.values()
        ):
            drop("out-of-vocabulary word")
            continue
        offset = 1 if tokenizer.prepend_bos else 0
        positions = {
            name: offset + tokenizer.n_tokens(prompt.clean[:char].rstrip())
            for name, char in prompt.positions.items()
        }
        kept.append(
            (
                prompt,
                {
                    "clean_ids": clean_ids,
                    "corrupt_ids": corrupt_ids,
                    "target": target,
                    "answers": answers,
                    "distractors": distractors,
                    "positions": positions,
                },
            )
        )
    if dropped:
        log.warning("%s/%s: dropped %s", task.name, split, dropped)
    if not kept:
        raise ValueError(f"{task.name}/{split}: no prompt survives tokenization ({dropped})")

    variants = list(kept[0][0].corrupt)
    data = TaskData(
        task=task.name,
        split=split,
        clean_tokens=_pad([e["clean_ids"] for _, e in kept], tokenizer.pad_id),
        corrupt_tokens={
            v: _pad([e["corrupt_ids"][v] for _, e in kept], tokenizer.pad_id) for v in variants
        },
        end_pos=torch.tensor([len(e["clean_ids"]) - 1 for _, e in kept]),
        target_ids=torch.tensor([e["target"] for _, e in kept]),
        answer_ids=_pad([e["answers"] for _, e in kept], metrics.PAD_ID),
        distractor_ids=_pad([e["distractors"] for _, e in kept], metrics.PAD_ID),
        template=torch.tensor([p.template for p, _ in kept]),
        positions={
            name: torch.tensor([e["positions"][name] for _, e in kept])
            for name in kept[0][0].positions
        },
        metric_reduce=task.metric_reduce,
        pad_id=tokenizer.pad_id,
        texts=[
            {"clean": p.clean, "target": p.target, "corrupt": p.corrupt, "info": p.info}
            for p, _ in kept
        ],
        meta={
            **(meta or {}),
            "task": task.name,
            "split": split,
            "task_options": task.options(),
            "task_facts": task.facts(),
            "tokenizer": tokenizer.name,
            "prepend_bos": tokenizer.prepend_bos,
            "n_requested": len(prompts),
            "n": len(kept),
            "dropped": dropped,
        },
    )
    extra, constants = task.encode_extra([p for p, _ in kept], tokenizer)
    data.extra.update(extra)
    data.constants.update(constants)
    return data
