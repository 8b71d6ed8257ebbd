"""Planted ground-truth circuits: GPT-2-architecture models whose weights are set by hand.

Each planted model solves one small task with a circuit we wrote, surrounded by distractors that
compute real, input-dependent things the answer does not depend on. The weights are not trained.

**How the weights are laid out.** Every residual-stream signal has its own dimensions (one-hot
tokens, one-hot positions, feature flags, the answer, a "previous token" subspace, junk):

- dims 0 and 1 hold a constant ``+C`` and ``-C`` (from the position embeddings) and dim 2 is a
  *sink*: every vector any writer adds (embedding rows, head output rows, MLP output rows) gets
  minus its sum in the sink, so the residual always sums to zero and LayerNorm's centring does
  nothing;
- every LayerNorm weight is ``sqrt(2 C^2 / d_model)`` on the signal dims and 0 on dims 0-2, so
  ``LN(x) = x * (1 - O(|signal|^2 / C^2))`` on the signal dims: with ``C = 1000`` a fixed scaling
  to about 1e-5. That residue is the only way a distractor reaches the logits;
- attention logits are sharp (a margin of :data:`ATTENTION_MARGIN`), MLP lookups are GELU
  neurons with thresholds well clear of zero.

**Distractors** write only to ``junk`` dimensions, which the unembedding and every circuit
component ignore, while reading anything (tokens, positions, the circuit's own subspaces, other
junk). Some are designed (a head with the circuit head's attention on the wrong family, a
duplicate-token head, an MLP that reads the answer subspace); every other head and MLP neuron is
seeded random junk.

**The truth** is the set of edges that carry the task's clean-vs-corrupted signal. An edge whose
receiver reads the same value on clean and corrupted prompts (a previous-token head's positional
query and key; a mover head's query reading a flag that both the clean and the corrupted final
token carry) is invisible to interchange ablation and not part of the truth. :func:`verify_truth`
checks with the patched forward that the truth alone reproduces the model and that removing any
true edge degrades it, and measures the largest effect of any single other edge.

The planted task is the task ``planted`` (options ``model`` and ``corruption``); its data files
are ordinary :class:`~circuitbench.tasks.TaskData` JSON.
"""

from __future__ import annotations

import logging
import math
import random
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from circuitbench.graph import Graph, GraphShape
from circuitbench.io import atomic_directory, atomic_write_json, atomic_write_text, provenance
from circuitbench.metrics import normalized_faithfulness
from circuitbench.models.loading import MANIFEST
from circuitbench.models.train import save_model
from circuitbench.patching import Ablation
from circuitbench.tasks.base import SPLITS, Prompt, Task, TaskData, encode_prompts, make_splits
from circuitbench.tokenization import TextTokenizer, build_word_level_tokenizer

log = logging.getLogger(__name__)

NORM_CONSTANT = 1000.0  # C: the constant residual component that pins every LayerNorm's scale
ATTENTION_MARGIN = 20.0  # attention-logit gap between the attended position and every other
ANSWER_GAIN = 10.0  # logit of the answer token (every other token's logit is 0)
NEURON_GAIN = 20.0  # MLP lookup pre-activation per matched feature (threshold at half a feature)
CONST_POS, CONST_NEG, SINK = 0, 1, 2
TASK_NAME = "planted"
CORRUPTIONS = ("resample",)


@dataclass(frozen=True)
class TruthCriteria:
    """What "the truth is verified" means (``config.yaml`` ``planted.truth``).

    - ``min_faithfulness``: the true circuit alone (every other edge interchange-ablated) reaches
      at least this normalized faithfulness;
    - ``min_degradation``: removing any one true edge from the true circuit lowers normalized
      faithfulness by at least this much;
    - ``max_other_effect``: removing any one edge outside the truth from the full model changes
      normalized faithfulness by at most this much;
    - ``min_accuracy``: the model's clean accuracy.
    """

    min_faithfulness: float = 0.95
    min_degradation: float = 0.05
    max_other_effect: float = 0.01
    min_accuracy: float = 0.99


@dataclass(frozen=True)
class TruthOptions:
    """Config ``planted.truth``: the criteria, and how edges outside the truth are checked
    (``receiver``: each receiver's other edges at once; ``edge``: one at a time), on how many
    test examples."""

    min_faithfulness: float = 0.95
    min_degradation: float = 0.05
    max_other_effect: float = 0.01
    min_accuracy: float = 0.99
    other_edges: str = "receiver"
    other_examples: int = 32

    def criteria(self) -> TruthCriteria:
        return TruthCriteria(
            self.min_faithfulness, self.min_degradation, self.max_other_effect, self.min_accuracy
        )


@dataclass(frozen=True)
class PlantedOptions:
    """Config section ``planted`` (without the keys that plan runs: ``models``, ``methods``,
    ``overrides``)."""

    # Circuit size of EAP, EAP-IG, Edge Pruning and HAP: "truth" (the number of true edges,
    # an oracle budget) or a number of edges.
    circuit_edges: int | str = "truth"
    n_train: int = 100
    n_validation: int = 100
    n_test: int = 200
    truth: TruthOptions = field(default_factory=TruthOptions)

    def __post_init__(self) -> None:
        if self.circuit_edges != "truth" and not (
            isinstance(self.circuit_edges, int) and self.circuit_edges >= 1
        ):
            raise ValueError(f"circuit_edges must be 'truth' or >= 1, got {self.circuit_edges!r}")

    def sizes(self) -> dict[str, int]:
        return {"train": self.n_train, "validation": self.n_validation, "test": self.n_test}


# -- the weight builder -------------------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    n_layers: int
    n_heads: int
    d_model: int
    d_mlp: int
    n_ctx: int

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


class WeightBuilder:
    """Hand-set weights of a GPT-2-architecture model, built in float64.

    Shapes: ``wte [V, D]``, ``wpe [n_ctx, D]``, ``W_Q/W_K/W_V [L, H, D, d_head]``,
    ``W_O [L, H, d_head, D]``, ``W_in [L, D, d_mlp]``, ``b_in [L, d_mlp]``,
    ``W_out [L, d_mlp, D]``, ``W_U [V, D]``. Attention scores are ``q.k`` (the builder folds in
    GPT-2's ``1/sqrt(d_head)``).
    """

    def __init__(self, arch: Architecture, vocab_size: int) -> None:
        if arch.d_model % arch.n_heads:
            raise ValueError(f"d_model {arch.d_model} is not divisible by {arch.n_heads} heads")
        self.arch = arch
        L, H, D, dh, M = arch.n_layers, arch.n_heads, arch.d_model, arch.d_head, arch.d_mlp
        self.vocab_size = vocab_size
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
        self.wte, self.wpe = zeros(vocab_size, D), zeros(arch.n_ctx, D)
        self.W_Q, self.W_K, self.W_V = zeros(L, H, D, dh), zeros(L, H, D, dh), zeros(L, H, D, dh)
        self.W_O = zeros(L, H, dh, D)
        self.W_in, self.b_in, self.W_out = zeros(L, D, M), zeros(L, M), zeros(L, M, D)
        self.W_U = zeros(vocab_size, D)
        self.wpe[:, CONST_POS], self.wpe[:, CONST_NEG] = NORM_CONSTANT, -NORM_CONSTANT
        self.subspaces: dict[str, list[int]] = {}
        self._next_dim = 3
        self.used_heads: set[tuple[int, int]] = set()
        self.used_neurons = [0] * L

    # -- residual subspaces ----------------------------------------------------------------

    def subspace(self, name: str, size: int) -> list[int]:
        """Reserve ``size`` fresh residual dimensions under ``name``."""
        if name in self.subspaces:
            raise ValueError(f"subspace {name!r} already exists")
        if self._next_dim + size > self.arch.d_model:
            raise ValueError(f"d_model {self.arch.d_model} is too small for subspace {name!r}")
        dims = list(range(self._next_dim, self._next_dim + size))
        self._next_dim += size
        self.subspaces[name] = dims
        return dims

    @property
    def signal_dims(self) -> list[int]:
        return list(range(3, self.arch.d_model))

    # -- heads -----------------------------------------------------------------------------

    def _claim_head(self, layer: int, head: int) -> None:
        if (layer, head) in self.used_heads:
            raise ValueError(f"head {layer}.{head} is already wired")
        self.used_heads.add((layer, head))

    def head(
        self,
        layer: int,
        head: int,
        qk_pairs: list[tuple[int, int]],
        ov_pairs: list[tuple[int, int]],
        margin: float = ATTENTION_MARGIN,
        gain: float = 1.0,
    ) -> None:
        """Wire a head. Score of query position ``i`` on key position ``j``:
        ``margin * sum_(a, b) x_i[a] * x_j[b]`` over ``qk_pairs``; the output adds
        ``gain * x_attended[s]`` to dim ``d`` for each ``(s, d)`` in ``ov_pairs``."""
        self._claim_head(layer, head)
        dh = self.arch.d_head
        if len(qk_pairs) > dh or len(ov_pairs) > dh:
            raise ValueError(f"head {layer}.{head}: more pairs than d_head {dh}")
        for i, (q_dim, k_dim) in enumerate(qk_pairs):
            self.W_Q[layer, head, q_dim, i] = margin * math.sqrt(dh)
            self.W_K[layer, head, k_dim, i] = 1.0
        for i, (src, dst) in enumerate(ov_pairs):
            self.W_V[layer, head, src, i] = 1.0
            self.W_O[layer, head, i, dst] = gain

    # -- MLP neurons -----------------------------------------------------------------------

    def neuron(
        self, layer: int, reads: dict[int, float], bias: float, writes: dict[int, float]
    ) -> None:
        """One MLP neuron: ``GELU(sum_d reads[d] * x[d] + bias)`` added to dims ``writes``."""
        index = self.used_neurons[layer]
        if index >= self.arch.d_mlp:
            raise ValueError(f"layer {layer} has only {self.arch.d_mlp} MLP neurons")
        self.used_neurons[layer] += 1
        for dim, weight in reads.items():
            self.W_in[layer, dim, index] = weight
        self.b_in[layer, index] = bias
        for dim, weight in writes.items():
            self.W_out[layer, index, dim] = weight

    # -- distractor junk -------------------------------------------------------------------

    def fill_junk(self, generator: torch.Generator, junk: list[int]) -> None:
        """Every head and MLP neuron not wired yet becomes a random distractor: it reads any
        signal dimension and writes only to ``junk``."""
        L, H, dh = self.arch.n_layers, self.arch.n_heads, self.arch.d_head
        readable = torch.tensor(self.signal_dims)
        junk_index = torch.tensor(junk)

        def randn(*shape: int, std: float) -> torch.Tensor:
            return torch.randn(*shape, generator=generator, dtype=torch.float64) * std

        for layer in range(L):
            for head in range(H):
                if (layer, head) in self.used_heads:
                    continue
                self._claim_head(layer, head)
                # Scores of order a few units: some heads sharp, some diffuse.
                self.W_Q[layer, head, readable] = randn(len(readable), dh, std=0.5)
                self.W_K[layer, head, readable] = randn(len(readable), dh, std=0.5)
                self.W_V[layer, head, readable] = randn(len(readable), dh, std=0.5)
                self.W_O[layer, head][:, junk_index] = randn(dh, len(junk), std=0.3 / dh**0.5)
            free = range(self.used_neurons[layer], self.arch.d_mlp)
            for index in free:
                self.W_in[layer, readable, index] = randn(len(readable), std=0.5)
                self.b_in[layer, index] = randn(1, std=0.5).item()
                self.W_out[layer, index, junk_index] = randn(len(junk), std=0.1)
            self.used_neurons[layer] = self.arch.d_mlp

    # -- export ----------------------------------------------------------------------------

    def gpt2(self, tokenizer: TextTokenizer):
        """The ``GPT2LMHeadModel`` (float32, untied unembedding) carrying these weights."""
        arch = self.arch
        L, H, D, dh = arch.n_layers, arch.n_heads, arch.d_model, arch.d_head
        config = GPT2Config(
            vocab_size=self.vocab_size,
            n_positions=arch.n_ctx,
            n_embd=D,
            n_layer=L,
            n_head=H,
            n_inner=arch.d_mlp,
            activation_function="gelu_new",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=False,
            bos_token_id=tokenizer.bos_id,
            eos_token_id=tokenizer.hf.eos_token_id,
            pad_token_id=tokenizer.pad_id,
            attn_implementation="eager",  # type: ignore[call-arg]  # (a PretrainedConfig kwarg)
        )
        model = GPT2LMHeadModel(config)
        ln_weight = torch.zeros(D, dtype=torch.float64)
        ln_weight[3:] = math.sqrt(2 * NORM_CONSTANT**2 / D)
        state: dict[str, torch.Tensor] = {
            "transformer.wte.weight": _zero_sum(self.wte),
            "transformer.wpe.weight": _zero_sum(self.wpe),
            "transformer.ln_f.weight": ln_weight,
            "lm_head.weight": self.W_U,
        }
        for layer in range(L):
            prefix = f"transformer.h.{layer}."
            # Conv1D: x @ weight. c_attn columns are [q heads | k heads | v heads].
            qkv = [w[layer].permute(1, 0, 2).reshape(D, H * dh) for w in (self.W_Q, self.W_K)]
            qkv.append(self.W_V[layer].permute(1, 0, 2).reshape(D, H * dh))
            state |= {
                prefix + "ln_1.weight": ln_weight,
                prefix + "ln_2.weight": ln_weight,
                prefix + "attn.c_attn.weight": torch.cat(qkv, dim=1),
                prefix + "attn.c_proj.weight": _zero_sum(self.W_O[layer].reshape(H * dh, D)),
                prefix + "mlp.c_fc.weight": self.W_in[layer],
                prefix + "mlp.c_fc.bias": self.b_in[layer],
                prefix + "mlp.c_proj.weight": _zero_sum(self.W_out[layer]),
            }
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, parameter in params.items():
                value = state.get(name)
                parameter.copy_(value if value is not None else torch.zeros_like(parameter))
        model.eval()
        return model


def _zero_sum(rows: torch.Tensor) -> torch.Tensor:
    """``rows [..., D]`` with the sink set to minus the sum of the other dims: each row sums to 0,
    so LayerNorm's mean is 0 for every residual."""
    out = rows.clone()
    out[..., SINK] = 0.0
    out[..., SINK] = -out.sum(-1)
    return out


# -- the planted models -------------------------------------------------------------------------


@dataclass
class Wiring:
    """What :meth:`PlantedSpec.wire` reports: a role for every designed component."""

    roles: dict[str, str] = field(default_factory=dict)
    distractors: dict[str, str] = field(default_factory=dict)


class PlantedSpec(ABC):
    """One planted model: architecture, vocabulary, task sampler, weights and true edge set."""

    name: ClassVar[str]
    structure: ClassVar[str]
    arch: ClassVar[Architecture]
    n_junk: ClassVar[int] = 24
    truth_edges: ClassVar[tuple[str, ...]]
    invisible: ClassVar[dict[str, str]] = {}  # edges the circuit uses that carry no signal

    @property
    @abstractmethod
    def words(self) -> list[str]:
        """The vocabulary (besides the special tokens), in id order."""

    @abstractmethod
    def sample(self, rng: random.Random) -> Prompt:
        """One clean prompt with its ``resample`` corruption."""

    @abstractmethod
    def wire(self, builder: WeightBuilder, ids: dict[str, int]) -> Wiring:
        """Set the circuit's and the designed distractors' weights (``ids``: word -> token id)."""

    def token_subspaces(self, builder: WeightBuilder, ids: dict[str, int]) -> dict[str, int]:
        """One-hot token dims (every word) and one-hot position dims; returns word -> dim."""
        dims = builder.subspace("token", len(self.words))
        positions = builder.subspace("position", self.arch.n_ctx)
        for pos, dim in enumerate(positions):
            builder.wpe[pos, dim] = 1.0
        token_dim = {}
        for word, dim in zip(self.words, dims, strict=True):
            builder.wte[ids[word], dim] = 1.0
            token_dim[word] = dim
        return token_dim


def _text(words: list[str]) -> str:
    return " ".join(words)


def _positions_of(words: list[str], index: int) -> int:
    """Character offset of ``words[index]`` in ``_text(words)``."""
    return len(_text(words[:index])) + (1 if index else 0)


class CopySpec(PlantedSpec):
    """A single copying head: the final token asks for a family (``color`` or ``animal``), the
    head in layer 1 attends to the one token of that family and copies it to the logits."""

    name = "copy"
    structure = "direct copying head (family query -> matching token -> logits)"
    arch = Architecture(n_layers=2, n_heads=8, d_model=128, d_mlp=64, n_ctx=16)
    COLORS = ("red", "blue", "green", "yellow", "purple", "orange")
    ANIMALS = ("cat", "dog", "fox", "owl", "bee", "cow")
    FILLERS = ("the", "a", "and", "so", "then", "of", "in", "to")
    QUERIES = ("color", "animal")
    LENGTH = 8  # tokens between BOS and the query
    COPY_HEAD = (1, 2)
    truth_edges = (
        "input->a1.h2<q>",
        "input->a1.h2<k>",
        "input->a1.h2<v>",
        "a1.h2->logits",
    )

    @property
    def words(self) -> list[str]:
        return [*self.COLORS, *self.ANIMALS, *self.FILLERS, *self.QUERIES]

    def _draw(self, rng: random.Random, avoid: dict[str, Any] | None = None) -> dict[str, Any]:
        while True:
            color, animal = rng.choice(self.COLORS), rng.choice(self.ANIMALS)
            color_at, animal_at = rng.sample(range(self.LENGTH), 2)
            query = rng.choice(self.QUERIES)
            if avoid is None:
                break
            if (
                color != avoid["color"]
                and animal != avoid["animal"]
                and query != avoid["query"]
                and color_at != avoid["color_at"]
                and animal_at != avoid["animal_at"]
            ):
                break
        words = [rng.choice(self.FILLERS) for _ in range(self.LENGTH)]
        words[color_at], words[animal_at] = color, animal
        answer = color if query == "color" else animal
        return {
            "color": color,
            "animal": animal,
            "color_at": color_at,
            "animal_at": animal_at,
            "query": query,
            "words": [*words, query],
            "answer": answer,
            "answer_at": color_at if query == "color" else animal_at,
        }

    def sample(self, rng: random.Random) -> Prompt:
        clean = self._draw(rng)
        corrupt = self._draw(rng, avoid=clean)
        return Prompt(
            template=0,
            clean=_text(clean["words"]),
            target=" " + clean["answer"],
            answers=(" " + clean["answer"],),
            distractors=(" " + corrupt["answer"],),
            corrupt={"resample": _text(corrupt["words"])},
            positions={"answer": _positions_of(clean["words"], clean["answer_at"])},
            info={"query": clean["query"], "corrupt_answer": corrupt["answer"]},
        )

    def wire(self, builder: WeightBuilder, ids: dict[str, int]) -> Wiring:
        token = self.token_subspaces(builder, ids)
        flags = dict(
            zip(
                ("is_color", "is_animal", "ask_color", "ask_animal"),
                builder.subspace("flags", 4),
                strict=True,
            )
        )
        items = [*self.COLORS, *self.ANIMALS]
        answer = dict(zip(items, builder.subspace("answer", len(items)), strict=True))
        junk = builder.subspace("junk", self.n_junk)
        for word in self.COLORS:
            builder.wte[ids[word], flags["is_color"]] = 1.0
        for word in self.ANIMALS:
            builder.wte[ids[word], flags["is_animal"]] = 1.0
        builder.wte[ids["color"], flags["ask_color"]] = 1.0
        builder.wte[ids["animal"], flags["ask_animal"]] = 1.0
        for word in items:
            builder.W_U[ids[word], answer[word]] = ANSWER_GAIN
        layer, head = self.COPY_HEAD
        builder.head(
            layer,
            head,
            qk_pairs=[
                (flags["ask_color"], flags["is_color"]),
                (flags["ask_animal"], flags["is_animal"]),
            ],
            ov_pairs=[(token[w], answer[w]) for w in items],
        )
        # Designed distractors: the same attention on the *other* family, a previous-token
        # head, an induction-like head reading it, and an MLP that reads the answer subspace.
        builder.head(
            1,
            5,
            qk_pairs=[
                (flags["ask_color"], flags["is_animal"]),
                (flags["ask_animal"], flags["is_color"]),
            ],
            ov_pairs=[(token[w], junk[i % 12]) for i, w in enumerate(items)],
        )
        positions = builder.subspaces["position"]
        prev = junk[12:24]
        builder.head(
            0,
            0,
            qk_pairs=[(positions[p], positions[p - 1]) for p in range(1, len(positions))],
            ov_pairs=[(token[w], prev[i]) for i, w in enumerate(items)],
        )
        builder.head(
            1,
            1,
            qk_pairs=[(token[w], prev[i]) for i, w in enumerate(items)],
            ov_pairs=[(token[w], junk[(i + 3) % 12]) for i, w in enumerate(self.FILLERS)],
        )
        for i, word in enumerate(items):
            builder.neuron(1, {answer[word]: NEURON_GAIN}, -NEURON_GAIN / 2, {junk[i]: 0.1})
        return Wiring(
            roles={"a1.h2": "copy head: query flag -> token of that family -> logits"},
            distractors={
                "a1.h5": "wrong-family mover: the copy head's attention on the other family",
                "a0.h0": "previous-token head (positions), into junk",
                "a1.h1": "induction-like head reading a0.h0's output, into junk",
                "m1": "lookup neurons reading the answer subspace, into junk",
                "others": "seeded random heads and MLP neurons, into junk",
            },
        )


class InductionSpec(PlantedSpec):
    """Induction: a previous-token head in layer 0 writes each position's previous token; the
    induction head in layer 1 matches the final token against it (K-composition) and copies the
    token after the earlier occurrence to the logits."""

    name = "induction"
    structure = "induction (previous-token head -K-> induction head -> logits)"
    arch = Architecture(n_layers=3, n_heads=4, d_model=128, d_mlp=48, n_ctx=16)
    ITEMS = tuple("ABCDEFGHJKLMNPRS")
    LENGTH = 9  # distinct tokens after BOS; then the repeat of one of them
    PREV_HEAD, INDUCTION_HEAD = (0, 1), (1, 2)
    truth_edges = (
        "input->a0.h1<v>",
        "a0.h1->a1.h2<k>",
        "input->a1.h2<q>",
        "input->a1.h2<v>",
        "a1.h2->logits",
    )
    invisible = {
        "input->a0.h1<q>": "positions only: identical on clean and corrupted prompts",
        "input->a0.h1<k>": "positions only: identical on clean and corrupted prompts",
    }

    @property
    def words(self) -> list[str]:
        return list(self.ITEMS)

    def _draw(self, rng: random.Random, avoid: dict[str, Any] | None = None) -> dict[str, Any]:
        while True:
            words = rng.sample(self.ITEMS, self.LENGTH)
            repeat_at = rng.randrange(self.LENGTH - 1)  # the token after it is a real token
            answer = words[repeat_at + 1]
            if avoid is None or (
                repeat_at != avoid["repeat_at"]
                and words[repeat_at] != avoid["words"][avoid["repeat_at"]]
                and answer != avoid["answer"]
            ):
                break
        return {
            "words": [*words, words[repeat_at]],
            "repeat_at": repeat_at,
            "answer": answer,
        }

    def sample(self, rng: random.Random) -> Prompt:
        clean = self._draw(rng)
        corrupt = self._draw(rng, avoid=clean)
        return Prompt(
            template=0,
            clean=_text(clean["words"]),
            target=" " + clean["answer"],
            answers=(" " + clean["answer"],),
            distractors=(" " + corrupt["answer"],),
            corrupt={"resample": _text(corrupt["words"])},
            positions={"answer": _positions_of(clean["words"], clean["repeat_at"] + 1)},
            info={"corrupt_answer": corrupt["answer"]},
        )

    def wire(self, builder: WeightBuilder, ids: dict[str, int]) -> Wiring:
        token = self.token_subspaces(builder, ids)
        positions = builder.subspaces["position"]
        prev = dict(zip(self.ITEMS, builder.subspace("previous", len(self.ITEMS)), strict=True))
        answer = dict(zip(self.ITEMS, builder.subspace("answer", len(self.ITEMS)), strict=True))
        junk = builder.subspace("junk", self.n_junk)
        for word in self.ITEMS:
            builder.W_U[ids[word], answer[word]] = ANSWER_GAIN
        builder.head(
            *self.PREV_HEAD,
            qk_pairs=[(positions[p], positions[p - 1]) for p in range(1, len(positions))],
            ov_pairs=[(token[w], prev[w]) for w in self.ITEMS],
        )
        builder.head(
            *self.INDUCTION_HEAD,
            qk_pairs=[(token[w], prev[w]) for w in self.ITEMS],
            ov_pairs=[(token[w], answer[w]) for w in self.ITEMS],
        )
        # Designed distractors: a duplicate-token head (attends to an earlier copy of the
        # current token), a head two positions back, and layer-2 readers of the answer.
        builder.head(
            1,
            0,
            qk_pairs=[(token[w], token[w]) for w in self.ITEMS],
            ov_pairs=[(positions[p], junk[p]) for p in range(len(positions))],
        )
        builder.head(
            0,
            3,
            qk_pairs=[(positions[p], positions[p - 2]) for p in range(2, len(positions))],
            ov_pairs=[(token[w], junk[i % self.n_junk]) for i, w in enumerate(self.ITEMS)],
        )
        builder.head(
            2,
            1,
            qk_pairs=[(token[w], token[w]) for w in self.ITEMS],
            ov_pairs=[(answer[w], junk[(i + 5) % self.n_junk]) for i, w in enumerate(self.ITEMS)],
        )
        for i, word in enumerate(self.ITEMS):
            builder.neuron(2, {answer[word]: NEURON_GAIN}, -NEURON_GAIN / 2, {junk[i]: 0.1})
        return Wiring(
            roles={
                "a0.h1": "previous-token head: writes the previous token at every position",
                "a1.h2": "induction head: query = current token, key = previous token -> logits",
            },
            distractors={
                "a1.h0": "duplicate-token head, into junk",
                "a0.h3": "two-back positional head, into junk",
                "a2.h1": "reads the answer subspace, into junk",
                "m2": "lookup neurons reading the answer subspace, into junk",
                "others": "seeded random heads and MLP neurons, into junk",
            },
        )


class LookupSpec(PlantedSpec):
    """An MLP lookup: two mover heads in layer 0 bring an X operand and a Y operand to the final
    position; MLP 1 reads them and the operator (the final token) and writes
    ``(x + y) mod 5`` or ``(x - y) mod 5`` to the logits."""

    name = "lookup"
    structure = "two mover heads -> MLP lookup (with the operator from the input) -> logits"
    arch = Architecture(n_layers=3, n_heads=8, d_model=128, d_mlp=64, n_ctx=16)
    XS = ("ka", "ke", "ki", "ko", "ku")  # x = 0..4
    YS = ("ma", "me", "mi", "mo")  # y = 1..4: y = 0 would make plus and minus agree
    OPS = ("plus", "minus")
    RESULTS = ("zero", "one", "two", "three", "four")
    FILLERS = ("the", "and", "so", "of", "in", "to")
    LENGTH = 7
    X_HEAD, Y_HEAD, LOOKUP_MLP = (0, 3), (0, 6), 1
    truth_edges = (
        "input->a0.h3<k>",
        "input->a0.h3<v>",
        "input->a0.h6<k>",
        "input->a0.h6<v>",
        "a0.h3->m1",
        "a0.h6->m1",
        "input->m1",
        "m1->logits",
    )
    invisible = {
        "input->a0.h3<q>": "reads the 'operator' flag, which both operators carry",
        "input->a0.h6<q>": "reads the 'operator' flag, which both operators carry",
    }

    @property
    def words(self) -> list[str]:
        return [*self.XS, *self.YS, *self.OPS, *self.RESULTS, *self.FILLERS]

    @staticmethod
    def result(op: str, x: int, y: int) -> int:
        return (x + y) % 5 if op == "plus" else (x - y) % 5

    def _draw(self, rng: random.Random, avoid: dict[str, Any] | None = None) -> dict[str, Any]:
        while True:
            x, y, op = rng.randrange(5), rng.randrange(1, 5), rng.choice(self.OPS)
            x_at, y_at = rng.sample(range(self.LENGTH), 2)
            answer = self.result(op, x, y)
            if avoid is None or (
                x != avoid["x"]
                and y != avoid["y"]
                and op != avoid["op"]
                and x_at != avoid["x_at"]
                and y_at != avoid["y_at"]
                and answer != avoid["answer"]
            ):
                break
        words = [rng.choice(self.FILLERS) for _ in range(self.LENGTH)]
        words[x_at], words[y_at] = self.XS[x], self.YS[y - 1]
        return {
            "x": x,
            "y": y,
            "op": op,
            "x_at": x_at,
            "y_at": y_at,
            "answer": answer,
            "words": [*words, op],
        }

    def sample(self, rng: random.Random) -> Prompt:
        clean = self._draw(rng)
        corrupt = self._draw(rng, avoid=clean)
        return Prompt(
            template=0,
            clean=_text(clean["words"]),
            target=" " + self.RESULTS[clean["answer"]],
            answers=(" " + self.RESULTS[clean["answer"]],),
            distractors=(" " + self.RESULTS[corrupt["answer"]],),
            corrupt={"resample": _text(corrupt["words"])},
            positions={
                "x": _positions_of(clean["words"], clean["x_at"]),
                "y": _positions_of(clean["words"], clean["y_at"]),
            },
            info={"x": clean["x"], "y": clean["y"], "op": clean["op"]},
        )

    def wire(self, builder: WeightBuilder, ids: dict[str, int]) -> Wiring:
        token = self.token_subspaces(builder, ids)
        flags = dict(zip(("is_x", "is_y", "is_op"), builder.subspace("flags", 3), strict=True))
        moved_x = builder.subspace("moved_x", len(self.XS))
        moved_y = builder.subspace("moved_y", len(self.YS))
        answer = builder.subspace("answer", len(self.RESULTS))
        junk = builder.subspace("junk", self.n_junk)
        for word in self.XS:
            builder.wte[ids[word], flags["is_x"]] = 1.0
        for word in self.YS:
            builder.wte[ids[word], flags["is_y"]] = 1.0
        for word in self.OPS:
            builder.wte[ids[word], flags["is_op"]] = 1.0
        for r, word in enumerate(self.RESULTS):
            builder.W_U[ids[word], answer[r]] = ANSWER_GAIN
        builder.head(
            *self.X_HEAD,
            qk_pairs=[(flags["is_op"], flags["is_x"])],
            ov_pairs=[(token[w], moved_x[i]) for i, w in enumerate(self.XS)],
        )
        builder.head(
            *self.Y_HEAD,
            qk_pairs=[(flags["is_op"], flags["is_y"])],
            ov_pairs=[(token[w], moved_y[i]) for i, w in enumerate(self.YS)],
        )
        # The lookup: one neuron per (operator, x, y), firing only when all three are present.
        for op in self.OPS:
            for x in range(5):
                for y in range(1, 5):
                    reads = {token[op]: NEURON_GAIN, moved_x[x]: NEURON_GAIN}
                    reads[moved_y[y - 1]] = NEURON_GAIN
                    out = {answer[self.result(op, x, y)]: 2.0 / NEURON_GAIN}
                    builder.neuron(self.LOOKUP_MLP, reads, -2.5 * NEURON_GAIN, out)
        # Designed distractors: the X mover's attention with the Y operand's value, a head that
        # reads the moved operands, and an MLP that reads the answer.
        builder.head(
            0,
            1,
            qk_pairs=[(flags["is_op"], flags["is_x"])],
            ov_pairs=[(token[w], junk[i]) for i, w in enumerate(self.FILLERS)],
        )
        builder.head(
            1,
            4,
            qk_pairs=[(flags["is_op"], flags["is_op"])],
            ov_pairs=[(d, junk[8 + i]) for i, d in enumerate(moved_x + moved_y)],
        )
        for r in range(len(self.RESULTS)):
            builder.neuron(2, {answer[r]: NEURON_GAIN}, -NEURON_GAIN / 2, {junk[r]: 0.1})
        return Wiring(
            roles={
                "a0.h3": "X mover: operator flag -> X operand -> moved_x",
                "a0.h6": "Y mover: operator flag -> Y operand -> moved_y",
                "m1": "lookup: (operator, x, y) -> result -> logits",
            },
            distractors={
                "a0.h1": "attends like the X mover, copies filler identity into junk",
                "a1.h4": "reads the moved operands, into junk",
                "m2": "neurons reading the answer subspace, into junk",
                "others": "seeded random heads and MLP neurons (also inside m1), into junk",
            },
        )


SPECS: dict[str, type[PlantedSpec]] = {
    cls.name: cls for cls in (CopySpec, InductionSpec, LookupSpec)
}


def planted_spec(name: str) -> PlantedSpec:
    if name not in SPECS:
        raise KeyError(f"unknown planted model {name!r}; known: {', '.join(SPECS)}")
    return SPECS[name]()


# -- the planted task ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PlantedTask(Task):
    """The task of a planted model (``model``): prompts, ``resample`` corruption, and the metric
    logit(clean answer) - logit(the corrupted prompt's answer)."""

    model: str = "copy"
    corruption: str = "resample"

    name: ClassVar[str] = TASK_NAME
    corruptions: ClassVar[tuple[str, ...]] = CORRUPTIONS

    def __post_init__(self) -> None:
        planted_spec(self.model)
        if self.corruption not in self.corruptions:
            raise ValueError(f"planted corruption must be one of {self.corruptions}")

    @property
    def n_templates(self) -> int:
        return 1

    def sample(self, rng: random.Random, template: int, tokenizer: TextTokenizer | None) -> Prompt:
        return planted_spec(self.model).sample(rng)

    def vocabulary_text(self) -> list[str]:
        return [" ".join(planted_spec(self.model).words)]

    def facts(self) -> dict[str, Any]:
        return {"structure": planted_spec(self.model).structure}


# -- building and saving ------------------------------------------------------------------------


def planted_tokenizer(spec: PlantedSpec) -> TextTokenizer:
    return TextTokenizer(build_word_level_tokenizer(spec.words), prepend_bos=True)


def build_planted(name: str, seed: int = 0):
    """The planted model ``name``: ``(GPT2LMHeadModel, TextTokenizer, Wiring)``. ``seed`` draws
    the random distractors."""
    spec = planted_spec(name)
    tokenizer = planted_tokenizer(spec)
    ids = {word: cast(int, tokenizer.hf.convert_tokens_to_ids(word)) for word in spec.words}
    builder = WeightBuilder(spec.arch, len(tokenizer.hf))
    wiring = spec.wire(builder, ids)
    generator = torch.Generator().manual_seed(seed)
    builder.fill_junk(generator, builder.subspaces["junk"])
    return builder.gpt2(tokenizer), tokenizer, wiring


def truth_graph(name: str, meta: dict[str, Any] | None = None) -> Graph:
    """The true edge set of planted model ``name`` as a MIB graph (``in_graph`` = truth, score 1
    for true edges)."""
    spec = planted_spec(name)
    shape = GraphShape(spec.arch.n_layers, spec.arch.n_heads)
    graph = Graph(shape, d_model=spec.arch.d_model, meta=meta)
    for edge in spec.truth_edges:
        if edge not in shape.edge_index:
            raise ValueError(f"{name}: true edge {edge!r} is not in a {shape} graph")
        graph.edge_in_graph[shape.edge_index[edge]] = True
    graph.edge_scores = graph.edge_in_graph.double()
    graph.node_in_graph = graph.edge_in_graph.any(1)
    return graph


def make_planted_data(
    name: str, sizes: dict[str, int], seed: int, tokenizer: TextTokenizer, meta: dict[str, Any]
) -> dict[str, TaskData]:
    """Train/validation/test :class:`TaskData` of planted model ``name`` (disjoint splits)."""
    task = PlantedTask(model=name)
    splits = make_splits(task, sizes, seed, tokenizer)
    return {split: encode_prompts(task, splits[split], tokenizer, split, meta) for split in SPLITS}


def write_planted(name: str, directory: Path, sizes: dict[str, int], seed: int) -> dict[str, Any]:
    """Write ``directory/model/{hf/, model.json}``, ``directory/data/<split>.json``,
    ``directory/truth.json`` and ``directory/card.json`` (the model card, also returned). The
    caller makes the directory atomic (:func:`save_planted` does)."""
    spec = planted_spec(name)
    model, tokenizer, wiring = build_planted(name, seed)
    card = {
        "name": name,
        "structure": spec.structure,
        "architecture": asdict(spec.arch),
        "vocabulary": spec.words,
        "roles": wiring.roles,
        "distractors": wiring.distractors,
        "truth_edges": list(spec.truth_edges),
        "invisible_edges": spec.invisible,
        "truth_definition": (
            "edges that carry the task's clean-vs-corrupted signal under interchange ablation"
        ),
        "seed": seed,
    }
    meta = provenance(model=f"planted-{name}", seed=seed, planted=name, tokenizer_source="own")
    data = make_planted_data(name, sizes, seed, tokenizer, meta)
    truth = truth_graph(name, meta=provenance(model=f"planted-{name}", method="truth", **card))
    directory = Path(directory)
    save_model(model, tokenizer, directory / "model" / "hf")
    atomic_write_json(
        directory / "model" / MANIFEST,
        provenance(
            name=f"planted-{name}",
            kind="local",
            source="hf",
            prepend_bos=True,
            trained=False,
            planted=name,
            seed=seed,
        ),
    )
    for split, task_data in data.items():
        atomic_write_text(directory / "data" / f"{split}.json", task_data.dumps())
    truth.save(directory / "truth.json")
    atomic_write_json(directory / "card.json", provenance(**card))
    log.info("planted model %s (%s) written to %s", name, spec.structure, directory)
    return card


def save_planted(name: str, out: Path, sizes: dict[str, int], seed: int) -> dict[str, Any]:
    """:func:`write_planted` into ``out`` as one atomic directory."""
    with atomic_directory(out) as tmp:
        return write_planted(name, tmp, sizes, seed)


# -- verifying the truth ------------------------------------------------------------------------


def _faithfulness(model, cache, mask: torch.Tensor) -> float:
    """Normalized faithfulness of the circuit ``mask`` over the cached batches (means)."""
    circuit, full, empty = [], [], []
    with torch.no_grad():
        for batch in cache:
            logits = model.patched_forward(batch.data.clean_tokens, mask, batch.ablated)
            circuit.append(batch.data.metric(batch.data.logits_at_end(logits).float()))
            full.append(batch.data.metric(batch.clean_logits_end.float()))
            empty.append(batch.data.metric(batch.empty_logits_end.float()))
    mean = lambda values: torch.cat(values).mean().item()  # noqa: E731
    return normalized_faithfulness(mean(circuit), mean(empty), mean(full))


def verify_truth(
    model,
    data: TaskData,
    truth: Graph,
    criteria: TruthCriteria,
    other_edges: str = "receiver",
    other_examples: int = 32,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Check ``truth`` on ``model`` (a :class:`~circuitbench.patching.PatchedModel`) with the
    interchange-ablated patched forward on ``data``.

    Returns the model's accuracy and metric and the corrupted run's metric; the truth's
    faithfulness; for every true edge the faithfulness drop when it alone is removed from the
    truth (``drop_from_truth``) and from the full model (``drop_from_full``); and the largest
    change of faithfulness when edges outside the truth are removed from the full model, on the
    first ``other_examples`` examples: one edge at a time (``other_edges="edge"``, one pass per
    edge) or, per receiver, all its edges outside the truth at once (``"receiver"``, one pass per
    receiver: every edge is in exactly one group). ``passed`` says whether ``criteria`` hold.
    """
    if other_edges not in ("edge", "receiver"):
        raise ValueError(f"other_edges must be edge|receiver, got {other_edges!r}")
    shape = model.shape
    truth.check_shape(shape.n_layers, shape.n_heads)
    cache = model.build_cache(data, Ablation.INTERCHANGE, batch_size=batch_size)
    valid = shape.valid
    truth_mask = truth.edge_mask().bool() & valid
    with torch.no_grad():
        accuracy = torch.cat([b.data.accuracy(b.clean_logits_end.float()) for b in cache])
        full_metric = torch.cat([b.data.metric(b.clean_logits_end.float()) for b in cache])
        corrupt_metric = torch.cat([b.data.metric(b.corrupt_logits_end.float()) for b in cache])
    truth_faithfulness = _faithfulness(model, cache, truth_mask.float())
    edges = []
    for name, (w, r) in shape.edge_index.items():
        if not truth_mask[w, r]:
            continue
        without, full_without = truth_mask.clone(), valid.clone()
        without[w, r] = full_without[w, r] = False
        edges.append(
            {
                "edge": name,
                "drop_from_truth": truth_faithfulness
                - _faithfulness(model, cache, without.float()),
                "drop_from_full": 1.0 - _faithfulness(model, cache, full_without.float()),
            }
        )
    subset = data.select(slice(0, other_examples))
    other_cache = model.build_cache(subset, Ablation.INTERCHANGE, batch_size=batch_size)
    groups: list[tuple[str, torch.Tensor]] = []
    if other_edges == "edge":
        for name, (w, r) in shape.edge_index.items():
            if not truth_mask[w, r]:
                removed = torch.zeros_like(valid)
                removed[w, r] = True
                groups.append((name, removed))
    else:
        for r, name in enumerate(shape.receiver_names):
            removed = torch.zeros_like(valid)
            removed[:, r] = valid[:, r] & ~truth_mask[:, r]
            if removed.any():
                groups.append((f"* -> {name}", removed))
    other_effect, other_item = 0.0, ""
    for name, removed in groups:
        effect = abs(1.0 - _faithfulness(model, other_cache, (valid & ~removed).float()))
        if effect >= other_effect:
            other_effect, other_item = effect, name
    min_drop = min(min(e["drop_from_truth"], e["drop_from_full"]) for e in edges)
    checks = {
        "accuracy": accuracy.mean().item() >= criteria.min_accuracy,
        "truth_faithfulness": truth_faithfulness >= criteria.min_faithfulness,
        "min_degradation": min_drop >= criteria.min_degradation,
        "max_other_effect": other_effect <= criteria.max_other_effect,
    }
    return {
        "n_examples": len(data),
        "accuracy": accuracy.mean().item(),
        "full_metric": full_metric.mean().item(),
        "corrupt_metric": corrupt_metric.mean().item(),
        "n_true_edges": len(edges),
        "n_edges": shape.n_edges,
        "truth_faithfulness": truth_faithfulness,
        "min_degradation": min_drop,
        "edges": edges,
        "other_edges": other_edges,
        "other_examples": len(subset),
        "other_groups": len(groups),
        "max_other_effect": other_effect,
        "max_other_item": other_item,
        "criteria": asdict(criteria),
        "checks": checks,
        "passed": all(checks.values()),
    }
