"""Which runs the workflow plans, and the options each run gets (read by the Snakefile; no torch).

Some keys of a config section say *which runs exist* rather than how one run behaves: Edge
Pruning's ``targets``, HAP's ``keep_fractions``, the ``sweep_tasks`` they apply to. These
:data:`PLAN_KEYS` stay in the workflow. A run is a name (a directory under
``results/<model>/<task>/``) with the section values it overrides; its step receives the section
without plan keys, updated by the run's overrides. Names are planned here once and looked up by
the rules, never parsed back out of a path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PLAN_KEYS: dict[str, tuple[str, ...]] = {
    "edge_pruning": ("targets", "sweep_tasks", "train_sizes"),
    "hap": ("keep_fractions", "sweep_tasks", "edge_target"),
    "planted": ("models", "methods", "overrides"),
}


# The config sections each discovery method reads (the registry's ``Method.sections``; a test
# holds the two equal): what the workflow passes a method in the planted stage.
METHOD_SECTIONS: dict[str, tuple[str, ...]] = {
    "path_patching": ("path_patching",),
    "flap": ("flap",),
    "cflap": ("flap",),
    "app": ("flap", "path_patching", "app"),
    "eap": ("eap",),
    "eap_ig": ("eap", "eap_ig"),
    "edge_pruning": ("edge_pruning",),
    "hap": ("eap", "edge_pruning", "hap"),
    "acdc": ("acdc",),
}


def section(config: dict[str, Any], name: str, **overrides: Any) -> dict[str, Any]:
    """Config section ``name`` without its plan keys, with ``overrides`` applied."""
    values = dict(config.get(name) or {})
    for key in PLAN_KEYS.get(name, ()):
        values.pop(key, None)
    return {**values, **overrides}


def options_json(**sections: dict[str, Any]) -> str:
    """The ``--options`` argument of a step: sections as one JSON object."""
    return json.dumps(sections, sort_keys=True)


def _ep_name(target: float, n_train: int | None = None) -> str:
    return f"t{target:g}" + ("" if n_train is None else f"-n{n_train}")


def reference_run(config: dict[str, Any], n_train: int | None = None) -> str:
    """The Edge Pruning run HAP and EAP are matched to: target ``hap.edge_target`` on every
    training prompt (or the first ``n_train``)."""
    return _ep_name(config["hap"]["edge_target"], n_train)


def _sweeps(config: dict[str, Any], section_name: str, task: str) -> bool:
    return task in config[section_name]["sweep_tasks"]


def ep_runs(config: dict[str, Any], task: str) -> dict[str, dict[str, Any]]:
    """Edge Pruning runs of ``task``: name -> ``edge_pruning`` overrides. The reference target
    always; on the sweep tasks every target, and the reference target on the first
    ``train_sizes`` prompts (Edge Pruning's Table 1)."""
    ep = config["edge_pruning"]
    sweep = _sweeps(config, "edge_pruning", task)
    targets = sorted({config["hap"]["edge_target"], *(ep["targets"] if sweep else [])})
    runs = {_ep_name(t): {"target": t} for t in targets}
    for n in ep["train_sizes"] if sweep else []:
        runs[reference_run(config, n)] = {"target": config["hap"]["edge_target"], "n_train": n}
    return runs


def eap_runs(config: dict[str, Any], task: str) -> dict[str, dict[str, Any]]:
    """EAP / EAP-IG runs of ``task``: name -> ``{method, eap overrides, matched EP run}``. EAP and
    EAP-IG on every training prompt; on the Edge Pruning sweep tasks EAP also on each training
    subset (matched to the reference run on the same prompts)."""
    runs: dict[str, dict[str, Any]] = {
        "eap": {"method": "eap", "eap": {}, "match": reference_run(config)},
        "eap_ig": {"method": "eap_ig", "eap": {}, "match": reference_run(config)},
    }
    if _sweeps(config, "edge_pruning", task):
        for n in config["edge_pruning"]["train_sizes"]:
            runs[f"eap-n{n}"] = {
                "method": "eap",
                "eap": {"n_prompts": n},
                "match": reference_run(config, n),
            }
    return runs


def hap_runs(config: dict[str, Any], task: str) -> dict[str, dict[str, Any]]:
    """HAP runs of ``task``: name -> ``hap`` overrides (``keep_fraction``); the k sweep on
    ``hap.sweep_tasks``."""
    hap = config["hap"]
    fractions = {
        hap["keep_fraction"],
        *(hap["keep_fractions"] if _sweeps(config, "hap", task) else []),
    }
    return {f"k{f:g}": {"keep_fraction": f} for f in sorted(fractions)}


def mib_runs(config: dict[str, Any]) -> list[str]:
    """The runs of a task that rule ``mib`` scores, relative to its result directory: EAP and
    EAP-IG on every training prompt, the reference Edge Pruning run and HAP at the main k (the
    sweeps' extra runs are left out: each run costs 20 evaluations of the test split)."""
    return [
        "eap",
        "eap_ig",
        f"ep/{reference_run(config)}",
        f"hap/k{config['hap']['keep_fraction']:g}",
    ]


def planted_method_options(config: dict[str, Any], method: str) -> dict[str, Any]:
    """Method ``method``'s sections on the planted models: as configured, with
    ``planted.overrides.<section>`` applied, without plan keys."""
    overrides = config["planted"].get("overrides") or {}
    return {
        name: section(config, name, **(overrides.get(name) or {}))
        for name in METHOD_SECTIONS[method]
    }


class ConfigError(ValueError):
    """A configuration that passes the schema but breaks a rule between its keys."""


def validate(config: dict[str, Any], workflow_dir: str | None = None) -> None:
    """The rules the schema cannot state, checked before any job runs; each error names its
    key."""
    errors = []
    tasks = set(config["tasks"])
    for section in ("edge_pruning", "hap"):
        unknown = sorted(set(config[section]["sweep_tasks"]) - tasks)
        if unknown:
            errors.append(
                f"{section}.sweep_tasks names {', '.join(unknown)}, which tasks does not "
                f"configure (configured: {', '.join(sorted(tasks))})"
            )
    sweep = config["flap"]["sweep"]
    if not sweep["low"] < sweep["high"]:
        errors.append(f"flap.sweep: low ({sweep['low']}) must be below high ({sweep['high']})")
    for name, model in config["models"].items():
        train = model.get("train") or {}
        n_head, d_model = train.get("n_head", 4), train.get("d_model", 128)
        if d_model % n_head:
            errors.append(
                f"models.{name}.train: d_model ({d_model}) must be divisible by n_head ({n_head})"
            )
        low, high = train.get("induction_segment", [4, 24])
        n_ctx = train.get("n_ctx", 64)
        if not low <= high or 2 * high + 2 > n_ctx:
            errors.append(
                f"models.{name}.train.induction_segment {[low, high]}: needs low <= high and "
                f"2 * high + 2 <= n_ctx ({n_ctx})"
            )
        checkpoint = model.get("checkpoint")
        sums = Path(workflow_dir or ".") / str(checkpoint) / "SHA256SUMS"
        if checkpoint and workflow_dir is not None and not sums.exists():
            errors.append(
                f"models.{name}.checkpoint: {checkpoint} is not a checkpoint directory "
                "(no SHA256SUMS)"
            )
        if checkpoint and model["kind"] != "toy":
            errors.append(f"models.{name}.checkpoint: only toy models start from a checkpoint")
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
