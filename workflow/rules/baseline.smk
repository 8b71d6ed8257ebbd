# Stage: the two baselines every method is judged between: the full circuit (must reproduce the
# model) and the empty circuit (the ablated run), per model x task, evaluated as configured in
# `evaluation`.

BASELINES = ["full", "empty"]


rule baseline_circuit:
    input:
        model_dir_input,
    output:
        "results/{model}/circuits/{baseline}.json",
    log:
        "logs/baseline_circuit/{model}/{baseline}.log",
    benchmark:
        "benchmarks/baseline_circuit/{model}/{baseline}.tsv"
    wildcard_constraints:
        baseline="|".join(BASELINES),
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        **cpu_job(mem_mb=1000, runtime=5),
    params:
        model_dir="results/models/{model}",
    shell:
        "circuitbench make-circuit --model {params.model_dir} --kind {wildcards.baseline}"
        " --out {output} > {log} 2>&1"


rule evaluate_baseline:
    input:
        model=model_dir_input,
        data="results/data/{model}/{task}",
        circuit="results/{model}/circuits/{baseline}.json",
    output:
        "results/{model}/{task}/eval/{baseline}.csv",
    log:
        "logs/evaluate_baseline/{model}/{task}/{baseline}.log",
    benchmark:
        "benchmarks/evaluate_baseline/{model}/{task}/{baseline}.tsv"
    wildcard_constraints:
        baseline="|".join(BASELINES),
    conda:
        "../../envs/circuitbench.yaml"
    threads: 2
    resources:
        **model_job(mem_mb=8000, runtime=30),
    params:
        model_dir="results/models/{model}",
        options=options(evaluation=True),
        runtime=RUNTIME,
    shell:
        "circuitbench evaluate --model {params.model_dir} --split {input.data}/test.json"
        " --circuit {input.circuit} --options '{params.options}' {params.runtime}"
        " --threads {threads} --out {output} > {log} 2>&1"


rule table_baselines:
    input:
        expand(
            "results/{model}/{task}/eval/{baseline}.csv",
            model=MODELS,
            task=TASKS,
            baseline=BASELINES,
        ),
    output:
        csv=reported(["results/tables/baselines.csv"]),
        md="results/tables/baselines.md",
    log:
        "logs/table_baselines/all.log",
    benchmark:
        "benchmarks/table_baselines/all.tsv"
    localrule: True
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        **cpu_job(mem_mb=1000, runtime=5),
    shell:
        "circuitbench table --kind baselines --inputs {input} --out-csv {output.csv}"
        " --out-md {output.md} > {log} 2>&1"
