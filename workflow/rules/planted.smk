# Stage: planted ground-truth circuits. Each planted model is built by hand, saved with
# save_pretrained, and its true edge set verified with the patched forward (planted_build);
# every method in planted.methods runs on every planted model and is scored against the truth
# (planted_run, one job per planted model); planted_report writes the recovery table, the truth
# table and the figure.
# Planted models are tiny: every job is a CPU job.

PLANTED = config["planted"]
PLANTED_MODELS = list(PLANTED["models"])
PLANTED_METHODS = list(PLANTED["methods"])
rule planted_build:
    output:
        directory("results/planted/{planted}/build"),
    log:
        "logs/planted_build/{planted}.log",
    wildcard_constraints:
        planted=alternatives(PLANTED_MODELS),
    benchmark:
        "benchmarks/planted_build/{planted}.tsv"
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        **cpu_job(mem_mb=2000, runtime=10),
    params:
        seed=config["seed"],
        options=options(planted=True),
        runtime=RUNTIME,
    shell:
        "circuitbench planted-build --name {wildcards.planted} --seed {params.seed}"
        " --options '{params.options}' {params.runtime} --threads {threads} --out {output}"
        " > {log} 2>&1"


rule planted_run:
    # One job per planted model runs every method (in planted.methods order): the model, the
    # data and the test cache are loaded once, and a job per method would spend most of its CPU
    # importing torch and transformers (about 5 s each).
    input:
        "results/planted/{planted}/build",
    output:
        [directory(f"results/planted/{{planted}}/{method}") for method in PLANTED_METHODS],
    log:
        "logs/planted_run/{planted}.log",
    wildcard_constraints:
        planted=alternatives(PLANTED_MODELS),
    benchmark:
        "benchmarks/planted_run/{planted}.tsv"
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        **cpu_job(mem_mb=4000, runtime=30),
    params:
        methods=" ".join(PLANTED_METHODS),
        options=planted_options(),
        runtime=RUNTIME,
    shell:
        "circuitbench planted-run --build {input} --method {params.methods}"
        " --options '{params.options}' {params.runtime} --threads {threads} --out {output}"
        " > {log} 2>&1"


rule planted_report:
    input:
        builds=expand("results/planted/{planted}/build", planted=PLANTED_MODELS),
        runs=expand(
            "results/planted/{planted}/{method}", planted=PLANTED_MODELS, method=PLANTED_METHODS
        ),
    output:
        table=reported(multiext("results/tables/planted_recovery", ".csv", ".md", ".tex")),
        truth=reported(multiext("results/tables/planted_truth", ".csv", ".md", ".tex")),
        figure=reported(multiext("figures/planted_recovery", ".png", ".pdf")),
    log:
        "logs/planted_report/all.log",
    benchmark:
        "benchmarks/planted_report/all.tsv"
    localrule: True
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        **cpu_job(mem_mb=2000, runtime=5),
    params:
        table=lambda wildcards, output: Path(output.table[0]).with_suffix(""),
        truth=lambda wildcards, output: Path(output.truth[0]).with_suffix(""),
        figure=lambda wildcards, output: Path(output.figure[0]).with_suffix(""),
    shell:
        "circuitbench planted-report --builds {input.builds} --runs {input.runs}"
        " --table {params.table} --truth-table {params.truth} --figure {params.figure}"
        " > {log} 2>&1"


FINAL_TARGETS += [
    *expand("results/tables/planted_recovery.{ext}", ext=("csv", "md", "tex")),
    *expand("results/tables/planted_truth.{ext}", ext=("csv", "md", "tex")),
    *expand("figures/planted_recovery.{ext}", ext=("png", "pdf")),
]
