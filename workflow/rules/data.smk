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
        slurm_partition=job_partition,
        mem_mb=1000,
        runtime=5,
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
        slurm_partition=job_partition,
        mem_mb=2000,
        runtime=10,
    params:
        options=task_options,
        tokenizer=tokenizer_source,
        bos=prepend_bos_flag,
        n_train=task_size("n_train"),
        n_validation=task_size("n_validation"),
        n_test=task_size("n_test"),
        seed=config["seed"],
    shell:
        "circuitbench data --task {wildcards.task} --options '{params.options}'"
        " --tokenizer {params.tokenizer} {params.bos} --n-train {params.n_train}"
        " --n-validation {params.n_validation} --n-test {params.n_test} --seed {params.seed}"
        " --model {wildcards.model} --out {output} > {log} 2>&1"
