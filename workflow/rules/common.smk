# Helpers shared by every stage. Config values reach rules only through params (so a change in
# config reruns exactly the jobs it affects).
import json
import re

TASKS = list(config["tasks"])
MODELS = list(config["models"])
TASK_SIZE_KEYS = ("n_train", "n_validation", "n_test")
DEFAULT_SIZES = {"n_train": 200, "n_validation": 200, "n_test": 400}


wildcard_constraints:
    model="|".join(MODELS),
    task="|".join(TASKS),


def alternatives(names):
    """A wildcard regex matching exactly ``names`` (nothing when empty)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


TOY_MODELS = [m for m in MODELS if config["models"][m]["kind"] == "toy"]
HUB_MODELS = [m for m in MODELS if config["models"][m]["kind"] == "hub"]


def model_config(wildcards):
    return config["models"][wildcards.model]


def task_options(wildcards):
    """The task's generator options (everything except the split sizes) as JSON."""
    options = {
        key: value
        for key, value in (config["tasks"][wildcards.task] or {}).items()
        if key not in TASK_SIZE_KEYS
    }
    return json.dumps(options, sort_keys=True)


def task_size(key):
    def get(wildcards):
        return (config["tasks"][wildcards.task] or {}).get(key, DEFAULT_SIZES[key])

    return get


def is_toy(model):
    return config["models"][model]["kind"] == "toy"


def tokenizer_source(wildcards):
    """What the data step tokenizes with: the toy word-level tokenizer, or the paper model's."""
    cfg = model_config(wildcards)
    if cfg["kind"] == "toy":
        return "results/tokenizers/toy"
    return cfg.get("tokenizer", cfg["source"])


def tokenizer_input(wildcards):
    return ["results/tokenizers/toy"] if model_config(wildcards)["kind"] == "toy" else []


def prepend_bos_flag(wildcards):
    cfg = model_config(wildcards)
    default = cfg["kind"] == "toy"
    return "--prepend-bos" if cfg.get("prepend_bos", default) else "--no-prepend-bos"


def train_spec(wildcards):
    return json.dumps(model_config(wildcards).get("train", {}), sort_keys=True)


def model_dir_input(wildcards):
    """A toy model is its whole trained directory; a paper model is its manifest."""
    if is_toy(wildcards.model):
        return f"results/models/{wildcards.model}"
    return f"results/models/{wildcards.model}/model.json"


# Every table and figure `rule all` builds. Each stage file appends its own final outputs (and
# names them as targets), so stages never edit the Snakefile.
FINAL_TARGETS = [
    "results/tables/models.csv",
    "results/tables/models.md",
    "results/tables/baselines.csv",
    "results/tables/baselines.md",
    "results/tables/pp_circuits.csv",
    "results/tables/pp_circuits.md",
]
