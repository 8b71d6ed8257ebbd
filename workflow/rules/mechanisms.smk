# Stage: what each model does inside: shortcut probes, layer ablations, head scores and IOI
# classes, and the dense path-patching circuits' structure (one job per model, every task).

MECHANISM_OUTPUTS = [
    f"results/tables/{name}.{ext}"
    for name in ("mechanisms", "mechanism_heads", "mechanism_gates")
    for ext in ("csv", "md", "tex")
] + [f"figures/mechanisms_{model}.{ext}" for model in MODELS for ext in ("png", "pdf")]

FINAL_TARGETS += MECHANISM_OUTPUTS


rule mechanisms:
    input:
        model=model_dir_input,
        data=expand("results/data/{{model}}/{task}", task=TASKS),
        pp=expand("results/{{model}}/{task}/pp", task=TASKS),
    output:
        directory("results/{model}/mechanisms"),
    log:
        "logs/mechanisms/{model}.log",
    benchmark:
        "benchmarks/mechanisms/{model}.tsv"
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        **model_job(mem_mb=4000, runtime=60),
    params:
        model_dir="results/models/{model}",
        options=options(mechanisms=True),
        runtime=RUNTIME,
    shell:
        "circuitbench mechanisms --model {params.model_dir} --splits {input.data}"
        " --pp {input.pp} --options '{params.options}' {params.runtime} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule mechanisms_report:
    input:
        expand("results/{model}/mechanisms", model=MODELS),
    output:
        reported(MECHANISM_OUTPUTS),
    log:
        "logs/mechanisms_report/all.log",
    benchmark:
        "benchmarks/mechanisms_report/all.tsv"
    localrule: True
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        **cpu_job(mem_mb=2000, runtime=10),
    shell:
        "circuitbench mechanisms-report --runs {input} --tables results/tables"
        " --figures figures > {log} 2>&1"
