"""Train the self-trained toy suite: small GPT-2-architecture models on a synthetic corpus.

The corpus can be made harder to solve by a positional or lexical shortcut; what each part did
in our runs is in ``docs/models.md`` (the default configuration uses none of the optional parts):

- every task's prompts, papers' templates and optionally harder variants
  (:meth:`Task.sample_variant`), each followed by its target, optionally after a prefix of
  unrelated words (so no answer sits at a fixed position);
- optionally, generic induction sequences: random tokens in which a random segment repeats,
  with loss at every position (meant to reward induction heads);
- a little filler text.

Prompts of the evaluation splits and of the shortcut probes are never trained on, so every
reported accuracy is held out. Training is deterministic by seed on CPU (for one thread count).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import GPT2Config, GPT2LMHeadModel

from circuitbench import __version__
from circuitbench.tasks import TaskData, make_task
from circuitbench.tasks.base import Prompt, Task, random_prefix, shifted
from circuitbench.tasks.words import FILLER_ADJECTIVES, FILLER_SUBJECTS, FILLER_VERBS
from circuitbench.tokenization import TextTokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSpec:
    """Architecture and optimisation of one toy model (config ``models.<name>``)."""

    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    n_ctx: int = 64
    # GPT-2 ties the unembedding to the token embedding; false unties them (docs/models.md says
    # what that changed in our runs).
    tie_embeddings: bool = True
    max_steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    filler_fraction: float = 0.05
    # Generic induction: random-token sequences with a repeated segment (loss at every position):
    # every sequence of the first induction_warmup steps (a block repeated back to back), and
    # induction_fraction of them after.
    induction_fraction: float = 0.0
    induction_segment: tuple[int, int] = (4, 24)  # repeated segment length, inclusive
    induction_warmup: int = 0
    # Task prompts: the fraction drawn from the task's variants (else a papers' template), and
    # the fraction preceded by a prefix of up to prefix_max_words unrelated words.
    variant_fraction: float = 0.0
    prefix_fraction: float = 0.0
    prefix_max_words: int = 12
    answer_loss_weight: float = 8.0
    eval_every: int = 200
    # Stop once every held-out accuracy (tasks and probes) reaches this, from min_steps on;
    # null: never stop early.
    stop_accuracy: float | None = 0.97
    min_steps: int = 0
    seed: int = 0
    # The tasks trained on and their options: set by the train step from the task data it is
    # given, not config keys.
    tasks: tuple[str, ...] = field(
        default=("ioi", "greater_than", "gendered_pronouns", "induction", "docstring"),
        metadata={"config": False},
    )
    # Relative sampling weight per task in the corpus (1 where not given). IOI is the slowest
    # task to learn (its accuracy jumps late), so it gets more of the corpus.
    task_weights: dict[str, float] = field(default_factory=lambda: {"ioi": 4.0})
    # Sub-batches of similar length per optimiser step (less padding, same gradient).
    length_buckets: int = 2
    task_options: dict[str, dict[str, Any]] = field(
        default_factory=dict, metadata={"config": False}
    )

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})"
            )
        for key in ("n_layer", "n_head", "d_model", "n_ctx", "max_steps", "batch_size"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")
        low, high = self.induction_segment
        if not 1 <= low <= high or 2 * high + 2 > self.n_ctx:
            raise ValueError(
                f"induction_segment {self.induction_segment} must satisfy 1 <= low <= high and "
                f"2 * high + 2 <= n_ctx ({self.n_ctx})"
            )
        for key in ("filler_fraction", "induction_fraction", "variant_fraction", "prefix_fraction"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"{key} must lie in [0, 1], got {getattr(self, key)}")


def filler_sentence(rng: random.Random) -> str:
    """A task-free sentence so the model sees ordinary text too."""
    sentences = []
    for _ in range(rng.randint(2, 4)):
        subject, verb = rng.choice(FILLER_SUBJECTS), rng.choice(FILLER_VERBS)
        sentences.append(f"{subject} {verb} the {rng.choice(FILLER_ADJECTIVES)} house.")
    return " ".join(sentences).capitalize()


class Corpus:
    """Draws training sequences: ``[BOS] prompt target`` with a weight on the target token, and
    random-token induction sequences."""

    def __init__(
        self,
        tasks: list[Task],
        tokenizer: TextTokenizer,
        exclude: set[str],
        spec: TrainSpec,
    ) -> None:
        self.tasks, self.tokenizer, self.exclude, self.spec = tasks, tokenizer, exclude, spec
        self.rng = random.Random(spec.seed)
        self.weights = [spec.task_weights.get(task.name, 1.0) for task in tasks]
        specials = set(tokenizer.hf.all_special_ids)
        self.word_ids = [i for i in range(len(tokenizer.hf)) if i not in specials]
        self.batches = 0

    def _prompt(self, task: Task, max_attempts: int = 10_000) -> Prompt:
        spec = self.spec
        for _ in range(max_attempts):
            # (no draw when a fraction is 0: a corpus without these parts keeps its stream)
            if (
                task.variants
                and spec.variant_fraction
                and self.rng.random() < spec.variant_fraction
            ):
                prompt = task.sample_variant(self.rng, self.rng.choice(task.variants))
            else:
                prompt = task.sample(self.rng, self.rng.randrange(task.n_templates), None)
            if spec.prefix_fraction and self.rng.random() < spec.prefix_fraction:
                prompt = shifted(prompt, random_prefix(self.rng, spec.prefix_max_words, 1))
            if prompt.clean not in self.exclude:
                return prompt
        raise RuntimeError(
            f"{task.name}: {max_attempts} sampled prompts were all held out; the evaluation "
            "splits cover (almost) every prompt, so nothing is left to train on: ask for fewer"
        )

    def induction_sequence(self, block: bool = False) -> list[int]:
        """Random tokens with a repeated segment, at most ``n_ctx - 1`` ids: the block repeated
        back to back (``seg seg``, Olsson et al.'s probe: always with ``block``, else half the
        time after a few random tokens), or two copies a few tokens apart (``a seg b seg c``);
        ``a``, ``b``, ``c`` are random and short (at most half a segment), so that about half
        of the tokens can be predicted by induction and nothing else."""
        low, high = self.spec.induction_segment
        length = self.rng.randint(low, high)
        draw = self.rng.choices
        segment = draw(self.word_ids, k=length)
        if block:
            return segment + segment
        short = max(1, length // 2)
        room = self.spec.n_ctx - 1 - 2 * length
        a, b, c = (self.rng.randint(0, min(short, room // 3)) for _ in range(3))
        if self.rng.random() < 0.5:
            return draw(self.word_ids, k=a) + segment + segment
        parts = [draw(self.word_ids, k=a), segment, draw(self.word_ids, k=b), segment]
        return [token for part in [*parts, draw(self.word_ids, k=c)] for token in part]

    def batch(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One optimiser step's sequences as length buckets: each ``tokens [rows, pos]`` with
        per-position loss ``weights [rows, pos]`` for predicting token ``t+1`` at ``t``."""
        texts: list[str] = []
        targets: list[int | None] = []  # character length of the prompt, None for filler
        sequences: list[list[int]] = []
        warming_up = self.batches < self.spec.induction_warmup
        self.batches += 1
        for _ in range(self.spec.batch_size):
            if warming_up:
                sequences.append(self.induction_sequence(block=True))
            elif self.spec.induction_fraction and self.rng.random() < self.spec.induction_fraction:
                sequences.append(self.induction_sequence())
            elif self.rng.random() < self.spec.filler_fraction:
                texts.append(filler_sentence(self.rng))
                targets.append(None)
            else:
                prompt = self._prompt(self.rng.choices(self.tasks, self.weights)[0])
                texts.append(prompt.clean + prompt.target)
                targets.append(len(prompt.clean))
        encoded = self.tokenizer.hf(texts, add_special_tokens=False)["input_ids"] if texts else []
        prefix = [self.tokenizer.bos_id] if self.tokenizer.prepend_bos else []
        rows = [
            (prefix + ids, target is not None) for ids, target in zip(encoded, targets, strict=True)
        ] + [(prefix + ids, False) for ids in sequences]
        longest = max(len(r) for r, _ in rows)
        if longest > self.spec.n_ctx:
            raise ValueError(f"a training sequence has {longest} tokens > n_ctx {self.spec.n_ctx}")
        rows.sort(key=lambda row: len(row[0]))
        size = math.ceil(len(rows) / self.spec.length_buckets)
        return [self._pad(rows[i : i + size]) for i in range(0, len(rows), size)]

    def _pad(self, rows: list[tuple[list[int], bool]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r, _ in rows)
        tokens = torch.full((len(rows), width), self.tokenizer.pad_id, dtype=torch.long)
        weights = torch.zeros(len(rows), width)
        for i, (row, has_target) in enumerate(rows):
            tokens[i, : len(row)] = torch.tensor(row)
            weights[i, : len(row) - 1] = 1.0  # position t predicts token t+1
            if has_target:
                # The target is the last token: predicted at position len(row) - 2.
                weights[i, len(row) - 2] = self.spec.answer_loss_weight
        return tokens, weights


@torch.no_grad()
def evaluate_hf(model: GPT2LMHeadModel, data: TaskData, batch_size: int = 256) -> dict[str, float]:
    """Accuracy (full-vocabulary argmax is a correct answer) and mean task metric on clean
    prompts, with a plain HF forward."""
    model.eval()
    accuracy, metric = [], []
    for start in range(0, len(data), batch_size):
        batch = data.select(slice(start, start + batch_size))
        logits = model(batch.clean_tokens).logits
        end = batch.logits_at_end(logits)
        accuracy.append(batch.accuracy(end))
        metric.append(batch.metric(end))
    return {
        "accuracy": torch.cat(accuracy).mean().item(),
        "metric": torch.cat(metric).mean().item(),
        "n": len(data),
    }


def train_toy_model(
    spec: TrainSpec,
    tokenizer: TextTokenizer,
    eval_data: dict[str, TaskData],
    exclude: set[str],
    threads: int | None = None,
    progress: bool = True,
    monitor: Callable[[GPT2LMHeadModel], dict[str, Any]] | None = None,
) -> tuple[GPT2LMHeadModel, dict[str, Any]]:
    """Train one model; returns it with a JSON-ready training report.

    ``eval_data``: held-out split per task (accuracy is measured on it); ``exclude``: clean prompt
    texts that must never be trained on (every evaluation split of every task).
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(spec.seed)
    hf = tokenizer.hf
    config = GPT2Config(
        vocab_size=len(hf),
        n_positions=spec.n_ctx,
        n_embd=spec.d_model,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=hf.eos_token_id,
        pad_token_id=tokenizer.pad_id,
        attn_implementation="eager",  # type: ignore[call-arg]  # (a PretrainedConfig kwarg)
        tie_word_embeddings=spec.tie_embeddings,
    )
    model = GPT2LMHeadModel(config)
    tasks = [make_task(name, **spec.task_options.get(name, {})) for name in spec.tasks]
    corpus = Corpus(tasks, tokenizer, exclude, spec)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": spec.weight_decay},
            {"params": no_decay, "weight_decay": 0},
        ],
        lr=spec.learning_rate,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        if step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        progress_frac = (step - spec.warmup_steps) / max(1, spec.max_steps - spec.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_frac)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    history: list[dict[str, Any]] = []
    started = time.perf_counter()
    step = 0
    bar = tqdm(total=spec.max_steps, desc="train", disable=not progress, mininterval=2)
    loss_value = float("nan")
    while step < spec.max_steps:
        model.train()
        buckets = corpus.batch()
        total_weight = sum(weights[:, :-1].sum() for _, weights in buckets)
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for tokens, weights in buckets:
            logits = model(tokens).logits[:, :-1]
            losses = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
            )
            loss = (losses * weights[:, :-1].reshape(-1)).sum() / total_weight
            loss.backward()  # gradients accumulate over buckets: one step on the whole batch
            loss_sum += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        loss_value = loss_sum
        if step % spec.eval_every == 0 or step == spec.max_steps:
            scores = {name: evaluate_hf(model, data) for name, data in eval_data.items()}
            history.append(
                {
                    "step": step,
                    "loss": loss_value,
                    "seconds": time.perf_counter() - started,
                    "accuracy": {k: v["accuracy"] for k, v in scores.items()},
                    **(monitor(model) if monitor else {}),
                }
            )
            bar.set_postfix(
                loss=f"{loss_value:.3f}", min_acc=f"{min(history[-1]['accuracy'].values()):.3f}"
            )
            log.info("step %d loss %.4f accuracy %s", step, loss_value, history[-1]["accuracy"])
            if (
                spec.stop_accuracy is not None
                and step >= spec.min_steps
                and min(history[-1]["accuracy"].values()) >= spec.stop_accuracy
            ):
                break
    bar.close()
    model.eval()
    final = {name: evaluate_hf(model, data) for name, data in eval_data.items()}
    report = {
        "spec": asdict(spec),
        "steps": step,
        "stopped_early": step < spec.max_steps,
        "final_loss": loss_value,
        "train_seconds": time.perf_counter() - started,
        "threads": torch.get_num_threads(),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(hf),
        "tasks": final,
        "history": history,
        "package_version": __version__,
        "torch_version": torch.__version__,
    }
    return model, report


def save_model(model: GPT2LMHeadModel, tokenizer: TextTokenizer, directory: Path) -> None:
    """``save_pretrained`` model and tokenizer (a bridged model cannot be saved: save before)."""
    model.save_pretrained(directory)
    tokenizer.hf.save_pretrained(directory)
