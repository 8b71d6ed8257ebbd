# Stage 2: model preparation (train the toy suite; check paper models are loadable) and the model
# table: held-out accuracy and task metric per model and task, through TransformerBridge.


rule train_toy:
    input:
        tokenizer="results/tokenizers/toy",
        data=expand("results/data/{{model}}/{task}", task=TASKS),
    output:
        directory("results/models/{model}"),
    log:
        "logs/train_toy/{model}.log",
    wildcard_constraints:
        model=alternatives(TRAINED_MODELS),
    benchmark:
        "benchmarks/train_toy/{model}.tsv"
    conda:
        "../../envs/circuitbench.yaml"
    threads: 2
    resources:
        **cpu_job(mem_mb=4000, runtime=30),
    params:
        options=train_options,
        bos=prepend_bos_flag,
    shell:
        "circuitbench train --name {wildcards.model} --tokenizer {input.tokenizer}"
        " --splits {input.data} --options '{params.options}' {params.bos} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule install_checkpoint:
    # A toy model whose training takes longer than the pipeline's budget starts from a
    # checkpoint our own trainer wrote (committed, verified by sha256; docs/models.md).
    input:
        tokenizer="results/tokenizers/toy",
        data=expand("results/data/{{model}}/{task}", task=TASKS),
        checkpoint=checkpoint_dir,
    output:
        directory("results/models/{model}"),
    log:
        "logs/install_checkpoint/{model}.log",
    wildcard_constraints:
        model=alternatives(CHECKPOINT_MODELS),
    benchmark:
        "benchmarks/install_checkpoint/{model}.tsv"
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        **cpu_job(mem_mb=2000, runtime=10),
    params:
        options=options(mechanisms=True),
        bos=prepend_bos_flag,
    shell:
        "circuitbench install-checkpoint --name {wildcards.model} --checkpoint {input.checkpoint}"
        " --tokenizer {input.tokenizer} --splits {input.data} --options '{params.options}'"
        " {params.bos} --out {output} > {log} 2>&1"


rule retrain_toy:
    # Retrains a checkpointed model from its configuration (`snakemake --cores all retrain`);
    # `circuitbench export-checkpoint` turns the result into a checkpoint.
    input:
        tokenizer="results/tokenizers/toy",
        data=expand("results/data/{{model}}/{task}", task=TASKS),
    output:
        directory("results/retrained/{model}"),
    log:
        "logs/retrain_toy/{model}.log",
    wildcard_constraints:
        model=alternatives(CHECKPOINT_MODELS),
    benchmark:
        "benchmarks/retrain_toy/{model}.tsv"
    conda:
        "../../envs/circuitbench.yaml"
    threads: 2
    resources:
        **cpu_job(mem_mb=4000, runtime=600),
    params:
        options=train_options,
        bos=prepend_bos_flag,
    shell:
        "circuitbench train --name {wildcards.model} --tokenizer {input.tokenizer}"
        " --splits {input.data} --options '{params.options}' {params.bos} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule retrain:
    # every checkpointed toy model, retrained from its configuration
    input:
        expand("results/retrained/{model}", model=CHECKPOINT_MODELS),
    localrule: True


rule prepare_model:
    output:
        "results/models/{model}/model.json",
    log:
        "logs/prepare_model/{model}.log",
    wildcard_constraints:
        model=alternatives(HUB_MODELS),
    benchmark:
        "benchmarks/prepare_model/{model}.tsv"
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        **cpu_job(mem_mb=2000, runtime=10),
    params:
        source=lambda wc: model_config(wc)["source"],
        bos=prepend_bos_flag,
    shell:
        "circuitbench prepare-model --name {wildcards.model} --source {params.source}"
        " {params.bos} --out results/models/{wildcards.model} > {log} 2>&1"


rule eval_model:
    input:
        model=model_dir_input,
        data=expand("results/data/{{model}}/{task}", task=TASKS),
    output:
        "results/{model}/model_eval.csv",
    log:
        "logs/eval_model/{model}.log",
    benchmark:
        "benchmarks/eval_model/{model}.tsv"
    conda:
        "../../envs/circuitbench.yaml"
    threads: 2
    resources:
        **model_job(mem_mb=4000, runtime=30),
    params:
        model_dir="results/models/{model}",
        test=lambda wc, input: " ".join(f"{d}/test.json" for d in input.data),
        runtime=RUNTIME,
    shell:
        "circuitbench eval-model --model {params.model_dir} --splits {params.test}"
        " {params.runtime} --threads {threads} --out {output} > {log} 2>&1"


rule table_models:
    input:
        expand("results/{model}/model_eval.csv", model=MODELS),
    output:
        csv=reported(["results/tables/models.csv"]),
        md="results/tables/models.md",
    log:
        "logs/table_models/all.log",
    benchmark:
        "benchmarks/table_models/all.tsv"
    localrule: True
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        **cpu_job(mem_mb=1000, runtime=5),
    shell:
        "circuitbench table --kind models --inputs {input} --out-csv {output.csv}"
        " --out-md {output.md} > {log} 2>&1"
