# Stage: dense automated path patching, the reference circuit every APP result is measured
# against. One job per model x task runs APP's 16-configuration grid (scores shared across
# configurations), chooses one circuit, and reports it on the test split.


rule path_patching:
    input:
        model=model_dir_input,
        data="results/data/{model}/{task}",
    output:
        directory("results/{model}/{task}/pp"),
    log:
        "logs/path_patching/{model}/{task}.log",
    benchmark:
        "benchmarks/path_patching/{model}/{task}.tsv"
    conda:
        "../../envs/circuitbench.yaml"
    threads: 2
    resources:
        **model_job(mem_mb=8000, runtime=120),
    params:
        model_dir="results/models/{model}",
        options=options(path_patching=True),
        runtime=RUNTIME,
    shell:
        "circuitbench path-patching --model {params.model_dir} --data {input.data}"
        " --options '{params.options}' {params.runtime} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule table_pp:
    input:
        expand("results/{model}/{task}/pp", model=MODELS, task=TASKS),
    output:
        csv=reported(["results/tables/pp_circuits.csv"]),
        md="results/tables/pp_circuits.md",
    log:
        "logs/table_pp/all.log",
    benchmark:
        "benchmarks/table_pp/all.tsv"
    localrule: True
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        **cpu_job(mem_mb=1000, runtime=5),
    params:
        rows=lambda wc, input: " ".join(f"{d}/summary.csv" for d in input),
    shell:
        "circuitbench table --kind pp_circuits --inputs {params.rows} --out-csv {output.csv}"
        " --out-md {output.md} > {log} 2>&1"
