# Stage 1: the word-level tokenizer of the toy suite, then every task's clean/corrupted splits,
# tokenized for each model.


rule tokenizer:
    output:
        directory("results/tokenizers/toy"),
    log:
        "logs/tokenizer/toy.log",
    benchmark:
        "benchmarks/tokenizer/toy.tsv"
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        **cpu_job(mem_mb=1000, runtime=5),
    shell:
        "circuitbench tokenizer --out {output} > {log} 2>&1"


rule data:
    input:
        tokenizer_input,
    output:
        directory("results/data/{model}/{task}"),
    log:
        "logs/data/{model}/{task}.log",
    benchmark:
        "benchmarks/data/{model}/{task}.tsv"
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        **cpu_job(mem_mb=2000, runtime=10),
    params:
        options=lambda wc: plan.options_json(task=config["tasks"][wc.task] or {}),
        tokenizer=tokenizer_source,
        bos=prepend_bos_flag,
        seed=config["seed"],
    shell:
        "circuitbench data --task {wildcards.task} --options '{params.options}'"
        " --tokenizer {params.tokenizer} {params.bos} --seed {params.seed}"
        " --name {wildcards.model} --out {output} > {log} 2>&1"
