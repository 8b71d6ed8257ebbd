# Stage: FLAP and Contrastive-FLAP head rankings and sparsity sweeps, the cliff and the merged head
# set (prune, per model x task: both methods share the clean statistics pass and the evaluation
# cache), APP = path patching restricted to the merged set (app), and APP's Table 2, speed-up
# table and figures (app_report).

# Which paper model's published numbers sit beside ours: GPT-2 small for the toy suite, else by
# the hub id.
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
        **model_job(mem_mb=4000, runtime=60),
    params:
        model_dir="results/models/{model}",
        options=options(flap=True),
        runtime=RUNTIME,
    shell:
        "circuitbench prune --model {params.model_dir} --data {input.data}"
        " --options '{params.options}' {params.runtime} --threads {threads}"
        " --out {output} > {log} 2>&1"


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
        **model_job(mem_mb=8000, runtime=120),
    params:
        model_dir="results/models/{model}",
        options=options(path_patching=True, app=True),
        runtime=RUNTIME,
    shell:
        "circuitbench app --model {params.model_dir} --data {input.data}"
        " --pruning {input.pruning} --options '{params.options}' {params.runtime}"
        " --threads {threads} --out {output} > {log} 2>&1"


rule app_report:
    input:
        pp=expand("results/{model}/{task}/pp", model=MODELS, task=TASKS),
        pruning=expand("results/{model}/{task}/pruning", model=MODELS, task=TASKS),
        app=expand("results/{model}/{task}/app", model=MODELS, task=TASKS),
    output:
        tables=reported(APP_TABLES),
        speedup=reported(APP_SPEEDUP),
        figures=reported(APP_FIGURES),
    log:
        "logs/app_report/all.log",
    benchmark:
        "benchmarks/app_report/all.tsv"
    localrule: True
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        **cpu_job(mem_mb=2000, runtime=10),
    params:
        runs=" ".join(APP_RUNS),
        paper_models=json.dumps(APP_PAPER_MODELS),
        options=options(app=True),
    shell:
        "circuitbench app-report --runs {params.runs} --paper-models '{params.paper_models}'"
        " --options '{params.options}' --tables results/tables --figures figures > {log} 2>&1"


FINAL_TARGETS += APP_TABLES + APP_SPEEDUP + APP_FIGURES
