# Helpers shared by every stage. Config values reach rules only through params (so a change in
# config reruns exactly the jobs it affects).
import json
import re
from pathlib import Path

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


# -- cluster resources (used by profiles/slurm; harmless locally) ------------------------------
# A job needs a GPU when it runs a paper (hub) model; toy-suite jobs run on CPUs. GPU jobs ask for
# `gpu` (and `gpu_model` when configured) and go to cluster.gpu_partition; all others ask for no
# GPU and go to cluster.cpu_partition ("" = the cluster's default partition).
CLUSTER = {"cpu_partition": "", "gpu_partition": "", "gpu_model": "", **config.get("cluster", {})}


def job_gpus(wildcards):
    return 0 if is_toy(wildcards.model) else 1


def job_gpu_model(wildcards):
    return CLUSTER["gpu_model"] if job_gpus(wildcards) else ""


def job_partition(wildcards):
    """Partition of a CPU-only rule's jobs."""
    return CLUSTER["cpu_partition"]


def gpu_job_partition(wildcards):
    """Partition of a job of a GPU-capable rule: the GPU partition when the job needs a GPU."""
    return CLUSTER["gpu_partition"] if job_gpus(wildcards) else CLUSTER["cpu_partition"]


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


# -- snakemake --report ------------------------------------------------------------------------
# Final tables (CSV) and figures (PNG) are flagged for the report, each with a caption from
# workflow/report/ chosen by its name, in one category per paper.
REPORT_DIR = Path(workflow.basedir) / "workflow" / "report"
REPORT_CAPTIONS = (  # (name prefix, caption file, category), first match wins
    ("models", "models", "1. Models and baselines"),
    ("baselines", "baselines", "1. Models and baselines"),
    ("pp_circuits", "pp_circuits", "1. Models and baselines"),
    ("app_table2", "app_table2", "2. APP"),
    ("app_speedup", "app_speedup", "2. APP"),
    ("app_sweep", "app_sweep", "2. APP"),
    ("hap_table1", "hap_table1", "3. HAP and Edge Pruning"),
    ("hap_table2", "hap_table2", "3. HAP and Edge Pruning"),
    ("hap_k_sweep", "hap_k_sweep", "3. HAP and Edge Pruning"),
    ("ep_table1", "ep_table1", "3. HAP and Edge Pruning"),
    ("ep_", "ep_sparsity", "3. HAP and Edge Pruning"),
    ("planted_recovery", "planted_recovery", "4. Planted circuits"),
    ("planted_truth", "planted_truth", "4. Planted circuits"),
)


def reported(paths):
    """``paths`` with the final tables (CSV) and figures (PNG) flagged for the report."""
    out = []
    for path in paths:
        name, suffix = Path(path).stem, Path(path).suffix
        match = next((entry for entry in REPORT_CAPTIONS if name.startswith(entry[0])), None)
        if suffix in (".csv", ".png") and match and not name.endswith("_long"):
            caption = str(REPORT_DIR / f"{match[1]}.rst")
            out.append(report(path, caption=caption, category=match[2]))
        else:
            out.append(path)
    return out


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


# -- planted stage -----------------------------------------------------------------------------
# The config sections that hold each method's options (passed to `planted-run --options`, one
# JSON object keyed by method): one section (its keys), or a tuple of sections (a dict keyed by
# section). planted.overrides.<section> replaces keys of that section on the planted models only.
PLANTED_METHOD_OPTIONS = {
    "path_patching": "path_patching",
    "flap": "flap",
    "cflap": "flap",
    "app": ("flap", "app", "path_patching"),
    "eap": ("eap",),
    "eap_ig": ("eap", "eap_ig"),
    "edge_pruning": ("edge_pruning",),
    "hap": ("eap", "edge_pruning", "hap"),
}


def planted_section(section):
    overrides = (config["planted"].get("overrides") or {}).get(section) or {}
    return {**(config.get(section) or {}), **overrides}


def planted_options():
    options = {}
    for method in config["planted"]["methods"]:
        sections = PLANTED_METHOD_OPTIONS[method]
        if isinstance(sections, tuple):
            options[method] = {section: planted_section(section) for section in sections}
        else:
            options[method] = planted_section(sections)
    return json.dumps(options, sort_keys=True)
