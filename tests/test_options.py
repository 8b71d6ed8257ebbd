"""One options path: the schema and the sections' dataclasses agree key for key and default for
default, and every config value reaches its dataclass unchanged through the workflow's rules
and the CLI (so adding an option touches its dataclass and the schema, nothing else)."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from circuitbench.cli import build_parser
from circuitbench.mechanisms import MechanismOptions
from circuitbench.methods.registry import METHODS, SECTIONS
from circuitbench.models.planted import PlantedOptions
from circuitbench.models.train import TrainSpec
from circuitbench.options import OptionsError, defaults, from_options, record
from circuitbench.plan import METHOD_SECTIONS, PLAN_KEYS
from circuitbench.tasks import TASKS, SplitSizes

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
PROPERTIES = SCHEMA["properties"]
TRAIN_SCHEMA = PROPERTIES["models"]["additionalProperties"]["properties"]["train"]

# Config section -> (its schema, its dataclass).
SECTION_SCHEMAS = {
    **{name: (PROPERTIES[name], cls) for name, cls in SECTIONS.items()},
    "planted": (PROPERTIES["planted"], PlantedOptions),
    "mechanisms": (PROPERTIES["mechanisms"], MechanismOptions),
    "train": (TRAIN_SCHEMA, TrainSpec),
}


def config_fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("config", True)}


def assert_agree(schema: dict, cls, where: str) -> None:
    keys = set(schema["properties"]) - set(PLAN_KEYS.get(where, ()))
    fields = config_fields(cls)
    assert keys == set(fields), f"{where}: schema-only {keys - set(fields)}, dataclass-only " + (
        f"{set(fields) - keys}"
    )
    expected = defaults(cls)
    for key in keys:
        prop = schema["properties"][key]
        assert "default" in prop, f"{where}.{key} has no default in the schema"
        nested = fields[key].default_factory
        if "properties" in prop and dataclasses.is_dataclass(nested):
            assert_agree(prop, nested, f"{where}.{key}")
            continue
        assert prop["default"] == expected[key], f"{where}.{key}"


@pytest.mark.parametrize("section", sorted(SECTION_SCHEMAS))
def test_schema_and_dataclass_agree(section):
    schema, cls = SECTION_SCHEMAS[section]
    assert_agree(schema, cls, section)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_schema_and_task_class_agree(task):
    schema = PROPERTIES["tasks"]["properties"][task]
    sizes = {"n_train", "n_validation", "n_test"}
    assert_agree({"properties": {k: schema["properties"][k] for k in sizes}}, SplitSizes, task)
    options = {k: v for k, v in schema["properties"].items() if k not in sizes}
    assert_agree({"properties": options}, TASKS[task], f"tasks.{task}")


def test_registry_and_plan_name_the_same_sections():
    assert {name: m.sections for name, m in METHODS.items()} == METHOD_SECTIONS
    for sections in METHOD_SECTIONS.values():
        assert set(sections) <= set(SECTIONS)


def test_options_are_checked_at_the_boundary():
    edge = SECTIONS["edge_pruning"]
    assert from_options(edge, {"steps": 7, "warmup_type": "logarithmic"}, "e").steps == 7
    assert from_options(
        SECTIONS["path_patching"], {"min_performance": 73}, "p"
    ).min_performance == (73.0)
    with pytest.raises(OptionsError, match=r"e: unknown option\(s\) stpes"):
        from_options(edge, {"stpes": 7}, "e")
    with pytest.raises(OptionsError, match="e.warmup_type: 'cubic' is not one of"):
        from_options(edge, {"warmup_type": "cubic"}, "e")
    with pytest.raises(OptionsError, match="node_loss needs node_masks"):
        from_options(edge, {"node_loss": True, "node_masks": False}, "e")
    flap = from_options(SECTIONS["flap"], {"sweep": {"low": 0, "high": 1, "step": 0.25}}, "f")
    assert flap.sweep.ratios() == [0.0, 0.25, 0.5, 0.75]
    assert record(flap)["sweep"] == {"low": 0, "high": 1, "step": 0.25}


# -- every config value reaches its dataclass -------------------------------------------------

# Values that must stay as they are for the config to be coherent.
KEEP = {("edge_pruning", "node_masks")}
# Keys a run may set for itself (the plan's sweeps), or a rule sets on purpose (EAP, Edge Pruning
# and HAP evaluate under interchange ablation, their papers' protocol): at least one job gets the
# configured value, others may differ.
MAY_DIFFER = {
    ("hap", "keep_fraction"),
    ("edge_pruning", "n_train"),
    ("eap", "n_prompts"),
    ("evaluation", "ablation"),
    ("evaluation", "mean_scope"),
}


def changed(value, prop: dict):
    """A valid value of ``prop`` other than its default ``value``."""
    if "enum" in prop:  # (a one-member enum keeps its value)
        return next((v for v in prop["enum"] if v != value), value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.25
    if isinstance(value, list):
        return value[:1] if len(value) > 1 else [*value, *value]
    if isinstance(value, dict) and "properties" not in prop:
        return {key: v / 2 for key, v in value.items()}
    if value is None:
        kinds = prop.get("type", [])
        return "abc" if "string" in kinds else 7
    if "oneOf" in prop:  # planted.circuit_edges: truth | n
        return 5
    raise AssertionError(f"no changed value for {value!r} ({prop})")


def changed_section(schema: dict, where: str) -> dict:
    out = {}
    for key, prop in schema["properties"].items():
        if key in PLAN_KEYS.get(where, ()) or (where, key) in KEEP:
            continue
        if "properties" in prop:
            out[key] = changed_section(prop, f"{where}.{key}")
        else:
            out[key] = changed(prop["default"], prop)
    return out


@pytest.fixture(scope="module")
def every_value_changed(tmp_path_factory):
    config = {name: changed_section(schema, name) for name, (schema, _) in SECTION_SCHEMAS.items()}
    train = config.pop("train")
    train["induction_segment"] = [4, 12]
    train["n_ctx"] = 128
    train["d_model"] = 130  # n_head 5 must divide it
    config["planted"]["truth"]["other_edges"] = "edge"
    config["tasks"] = {}
    for task in TASKS:
        props = PROPERTIES["tasks"]["properties"][task]
        config["tasks"][task] = changed_section(props, task)
    config["models"] = {"toy": {"kind": "toy", "train": train}}
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "-n", "-p"]
        + ["--configfile", str(path), "--directory", str(path.parent)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    commands = [
        line.removeprefix("Shell command: ").split(" > ")[0]
        for line in result.stdout.splitlines()
        if line.startswith("Shell command: circuitbench ")
    ]
    return config, commands


def parsed_sections(command: str) -> dict:
    args = build_parser().parse_args(shlex.split(command)[1:])
    return getattr(args, "options", {}) or {}


def test_every_config_value_reaches_its_dataclass_unchanged(every_value_changed):
    config, commands = every_value_changed
    seen: dict[str, set[str]] = {}
    classes = {**{name: cls for name, (_, cls) in SECTION_SCHEMAS.items()}}
    for command in commands:
        sections = parsed_sections(command)
        planted_methods = sections.pop("methods", {})
        for method_sections in planted_methods.values():
            for name, values in method_sections.items():
                sections.setdefault(f"planted:{name}", values)
        for name, values in sections.items():
            base = name.removeprefix("planted:")
            if base == "task":
                task = shlex.split(command)[shlex.split(command).index("--task") + 1]
                assert values == config["tasks"][task], command[:80]
                seen.setdefault("tasks", set()).update(values)
                continue
            options = from_options(classes[base], values, base)
            expected = config["models"]["toy"]["train"] if base == "train" else config[base]
            for key, value in expected.items():
                if key not in values:
                    continue
                same = record(getattr(options, key)) == json.loads(json.dumps(value))
                assert same or (base, key) in MAY_DIFFER, f"{base}.{key} in {command[:60]}"
                if same:
                    seen.setdefault(base, set()).add(key)
    for name in classes:
        expected = config["models"]["toy"]["train"] if name == "train" else config[name]
        missing = set(expected) - seen.get(name, set())
        assert not missing, f"{name}: {missing} reached no job"


def test_the_configuration_doc_names_every_key():
    """docs/configuration.md is the reference for users: every schema key appears in it."""
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")

    def keys(schema: dict) -> set[str]:
        out = set()
        for key, prop in (schema.get("properties") or {}).items():
            out.add(key)
            out |= keys(prop)
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            out |= keys(additional)
        return out

    quoted = " ".join(re.findall(r"`[^`]*`", text))
    missing = sorted(k for k in keys(SCHEMA) if not re.search(rf"\b{re.escape(k)}\b", quoted))
    assert not missing, missing
