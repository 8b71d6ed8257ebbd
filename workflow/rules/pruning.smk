# Stage: FLAP and Contrastive-FLAP head rankings and sparsity sweeps, the cliff and the merged head
# set (prune, per model x task: both methods share the clean statistics pass and the evaluation
# cache), APP = path patching restricted to the merged set (app), and APP's Table 2, speed-up
# table and figures (report_app).
import json

# Which paper model's published numbers sit beside ours (results.md §1): GPT-2 small for the toy
# suite, else by the hub id.
PAPER_MODEL_IDS = {
    "gpt2-large": "GPT-2 large",
    "qwen2.5-0.5b": "Qwen2.5-0.5B",
    "qwen2.5-7b": "Qwen2.5-7B",
}
APP_PAPER_MODELS = {
    model: next(
        (
            name
            for key, name in PAPER_MODEL_IDS.items()
            if key in str(config["models"][model].get("source", "")).lower()
        ),
        "GPT-2 small",
    )
    for model in MODELS
}
FLAP_FLAGS = {
    key: f"--{key.replace('_', '-')}" if config["flap"][key] else f"--no-{key.replace('_', '-')}"
    for key in ("calibration_includes_answer", "mask_padding")
}
APP_RUNS = expand("results/{model}/{task}", model=MODELS, task=TASKS)
APP_TABLES = [
    f"results/tables/app_table2_{model}.{ext}" for model in MODELS for ext in ("csv", "md", "tex")
] + [f"results/tables/app_table2_{model}_long.csv" for model in MODELS]
APP_FIGURES = [
    f"figures/app_{kind}_{model}.{ext}"
    for kind in ("speedup", "sweep")
    for model in MODELS
    for ext in ("png", "pdf")
]
APP_SPEEDUP = [f"results/tables/app_speedup.{ext}" for ext in ("csv", "md", "tex")]


rule prune:
    input:
        model=model_dir_input,
        data="results/data/{model}/{task}",
    output:
        directory("results/{model}/{task}/pruning"),
    log:
        "logs/prune/{model}/{task}.log",
    benchmark:
        "benchmarks/prune/{model}/{task}.tsv"
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        slurm_partition=gpu_job_partition,
        mem_mb=4000,
        runtime=60,
        gpu=job_gpus,
        gpu_model=job_gpu_model,
    params:
        model_dir="results/models/{model}",
        n_calibration=config["flap"]["n_calibration"],
        calibration_split=config["flap"]["calibration_split"],
        answer=FLAP_FLAGS["calibration_includes_answer"],
        mask=FLAP_FLAGS["mask_padding"],
        keep_rule=config["flap"]["keep_rule"],
        vanilla_metric=config["flap"]["vanilla_metric"],
        contrastive_metric=config["flap"]["contrastive_metric"],
        cliff_rule=config["flap"]["cliff_rule"],
        sweep_low=config["flap"]["sweep"]["low"],
        sweep_high=config["flap"]["sweep"]["high"],
        sweep_step=config["flap"]["sweep"]["step"],
        fixed_sparsity=config["flap"]["fixed_sparsity"],
        eval_batch_size=config["flap"]["eval_batch_size"],
        device=config["device"],
        dtype=config["dtype"],
    shell:
        "circuitbench prune --model {params.model_dir} --data {input.data}"
        " --n-calibration {params.n_calibration}"
        " --calibration-split {params.calibration_split} {params.answer} {params.mask}"
        " --keep-rule {params.keep_rule} --vanilla-metric {params.vanilla_metric}"
        " --contrastive-metric {params.contrastive_metric} --cliff-rule {params.cliff_rule}"
        " --sweep-low {params.sweep_low} --sweep-high {params.sweep_high}"
        " --sweep-step {params.sweep_step} --fixed-sparsity {params.fixed_sparsity}"
        " --eval-batch-size {params.eval_batch_size} --device {params.device}"
        " --dtype {params.dtype} --threads {threads} --out {output} > {log} 2>&1"


rule app:
    input:
        model=model_dir_input,
        data="results/data/{model}/{task}",
        pruning="results/{model}/{task}/pruning",
    output:
        directory("results/{model}/{task}/app"),
    log:
        "logs/app/{model}/{task}.log",
    benchmark:
        "benchmarks/app/{model}/{task}.tsv"
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        slurm_partition=gpu_job_partition,
        mem_mb=8000,
        runtime=120,
        gpu=job_gpus,
        gpu_model=job_gpu_model,
    params:
        model_dir="results/models/{model}",
        n_prompts=config["path_patching"]["n_prompts"],
        threshold_mode=config["path_patching"]["threshold_mode"],
        missing_scores=config["path_patching"]["missing_scores"],
        eval_batch_size=config["path_patching"]["eval_batch_size"],
        min_performance=config["app"]["min_performance"],
        max_size_fraction=config["app"]["max_size_fraction"],
        device=config["device"],
        dtype=config["dtype"],
    shell:
        "circuitbench app --model {params.model_dir} --data {input.data}"
        " --pruning {input.pruning} --n-prompts {params.n_prompts}"
        " --threshold-mode {params.threshold_mode} --missing-scores {params.missing_scores}"
        " --min-performance {params.min_performance}"
        " --max-size-fraction {params.max_size_fraction}"
        " --eval-batch-size {params.eval_batch_size} --device {params.device}"
        " --dtype {params.dtype} --threads {threads} --out {output} > {log} 2>&1"


rule report_app:
    input:
        pp=expand("results/{model}/{task}/pp", model=MODELS, task=TASKS),
        pruning=expand("results/{model}/{task}/pruning", model=MODELS, task=TASKS),
        app=expand("results/{model}/{task}/app", model=MODELS, task=TASKS),
    output:
        tables=reported(APP_TABLES),
        speedup=reported(APP_SPEEDUP),
        figures=reported(APP_FIGURES),
    log:
        "logs/report_app/all.log",
    benchmark:
        "benchmarks/report_app/all.tsv"
    localrule: True
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        slurm_partition=job_partition,
        mem_mb=2000,
        runtime=10,
    params:
        runs=" ".join(APP_RUNS),
        paper_models=json.dumps(APP_PAPER_MODELS),
        pruning_cost=(
            "--cost-includes-pruning"
            if config["app"]["cost_includes_pruning"]
            else "--no-cost-includes-pruning"
        ),
    shell:
        "circuitbench report-app --runs {params.runs} --paper-models '{params.paper_models}'"
        " {params.pruning_cost} --tables results/tables --figures figures > {log} 2>&1"


FINAL_TARGETS += APP_TABLES + APP_SPEEDUP + APP_FIGURES
