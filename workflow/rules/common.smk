# Helpers shared by every stage. Config values reach a job only through its params: each step
# gets its config sections as one JSON argument (`--options`), so a change in config reruns
# exactly the jobs it affects. Which runs exist (Edge Pruning targets, HAP's k sweep, ...) is
# planned once, by circuitbench.plan.
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # the plan module, even uninstalled
from circuitbench import plan  # noqa: E402  (torch-free)

# The rules between keys that the schema cannot state (each error names its key).
plan.validate(config, workflow.basedir)

TASKS = list(config["tasks"])
MODELS = list(config["models"])


wildcard_constraints:
    model="|".join(MODELS),
    task="|".join(TASKS),


def alternatives(names):
    """A wildcard regex matching exactly ``names`` (nothing when empty)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


TOY_MODELS = [m for m in MODELS if config["models"][m]["kind"] == "toy"]
HUB_MODELS = [m for m in MODELS if config["models"][m]["kind"] == "hub"]
# Toy models that start from a committed checkpoint of our trainer, and those trained here.
CHECKPOINT_MODELS = [m for m in TOY_MODELS if config["models"][m].get("checkpoint")]
TRAINED_MODELS = [m for m in TOY_MODELS if m not in CHECKPOINT_MODELS]


def model_config(wildcards):
    return config["models"][wildcards.model]


def is_toy(model):
    return config["models"][model]["kind"] == "toy"


def options(**sections):
    """The ``--options`` JSON of a job: each named config section (``True``: as configured;
    a dict: as configured with these run keys set), without the keys that plan runs."""
    return plan.options_json(
        **{
            name: plan.section(config, name, **({} if value is True else value))
            for name, value in sections.items()
        }
    )


# Common flags of every model job (a param, so a change reruns the jobs): device and dtype.
RUNTIME = f"--device {config['device']} --dtype {config['dtype']}"
# EAP, Edge Pruning and HAP (and the PP / APP points beside them) are evaluated under
# interchange ablation, their papers' protocol, in batches of evaluation.batch_size.
EDGE_EVALUATION = {
    "ablation": "interchange",
    "mean_scope": "template",
    "batch_size": config["evaluation"]["batch_size"],
}


def run_dirs(runs, subdir=""):
    """Result directories of planned runs (``runs``: task -> run name -> overrides)."""
    return [
        f"results/{model}/{task}/{subdir}{name}"
        for model in MODELS
        for task in TASKS
        for name in runs[task]
    ]


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


def cpu_job(mem_mb, runtime):
    """Resources of a job that never needs a GPU (tables, reports, toy-only work)."""
    return dict(slurm_partition=job_partition, mem_mb=mem_mb, runtime=runtime)


def model_job(mem_mb, runtime):
    """Resources of a job that runs a model: a GPU for paper models, none for the toy suite."""
    return dict(
        slurm_partition=gpu_job_partition,
        mem_mb=mem_mb,
        runtime=runtime,
        gpu=job_gpus,
        gpu_model=job_gpu_model,
    )


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


def checkpoint_dir(wildcards):
    """A checkpoint's directory, relative to the workflow (where it is committed)."""
    return str(Path(workflow.basedir) / model_config(wildcards)["checkpoint"])


def train_options(wildcards):
    """The train step's options: the model's training spec, and the mechanism stage's probe
    settings (their prompts are held out from training)."""
    return plan.options_json(
        train=model_config(wildcards).get("train", {}),
        mechanisms=plan.section(config, "mechanisms"),
    )


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
    ("mib", "mib", "3. HAP and Edge Pruning"),
    ("mechanism_gates", "mechanism_gates", "1. Models and baselines"),
    ("mechanism", "mechanisms", "1. Models and baselines"),
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


def planted_options():
    """planted-run's options: the planted section, the evaluation batch, and each method's
    config sections (planted.overrides applied)."""
    methods = {m: plan.planted_method_options(config, m) for m in config["planted"]["methods"]}
    return plan.options_json(
        planted=plan.section(config, "planted"),
        evaluation={"batch_size": config["evaluation"]["batch_size"]},
        methods=methods,
    )


def mib_runs(wildcards):
    """Rule mib's inputs: a task's main edge-scoring runs (plan.mib_runs)."""
    return [f"results/{wildcards.model}/{wildcards.task}/{run}" for run in plan.mib_runs(config)]
