# Stage: edge-level discovery: EAP and EAP-IG scores, Edge Pruning at several sparsity targets,
# HAP (Edge Pruning on the top-k EAP subgraph), and HAP's / Edge Pruning's tables and figures.
# Matched sparsity: Edge Pruning lands where it lands; HAP and EAP are cut to the edge count of
# the reference run (target hap.edge_target, every training prompt), so the EAP rule waits for
# that run. Which runs exist per task is planned by circuitbench.plan (the sweeps run on the
# sweep tasks only, as the papers do on IOI):
#   edge_pruning.targets and edge_pruning.train_sizes (EP Table 1) on edge_pruning.sweep_tasks,
#   hap.keep_fractions (the k sweep) on hap.sweep_tasks.

EP_RUNS = {task: plan.ep_runs(config, task) for task in TASKS}
EAP_RUNS = {task: plan.eap_runs(config, task) for task in TASKS}
HAP_RUNS = {task: plan.hap_runs(config, task) for task in TASKS}
REFERENCE_RUN = plan.reference_run(config)


DISCOVERY_RUNS = {
    "eap": [d for d in run_dirs(EAP_RUNS) if Path(d).name != "eap_ig"],
    "eap_ig": [d for d in run_dirs(EAP_RUNS) if Path(d).name == "eap_ig"],
    "ep": run_dirs(EP_RUNS, "ep/"),
    "hap": run_dirs(HAP_RUNS, "hap/"),
}
K_SWEEP = any(len(HAP_RUNS[t]) > 1 for t in TASKS)
REPORT_TABLES = ["hap_table1", "hap_table2", "ep_table1"] + (["hap_k_sweep"] if K_SWEEP else [])
REPORT_FIGURES = ["ep_kl_sparsity", "ep_metric_sparsity"] + (["hap_k_sweep"] if K_SWEEP else [])
DISCOVERY_OUTPUTS = [
    f"results/tables/{name}.{ext}" for name in REPORT_TABLES for ext in ("csv", "md", "tex")
] + [f"figures/{name}.{ext}" for name in REPORT_FIGURES for ext in ("png", "pdf")]

MIB_OUTPUTS = [f"results/tables/mib.{ext}" for ext in ("csv", "md", "tex")]
MIB_OUTPUTS.append("results/tables/mib_long.csv")

FINAL_TARGETS += DISCOVERY_OUTPUTS + MIB_OUTPUTS


rule eap:
    input:
        model=model_dir_input,
        data="results/data/{model}/{task}",
        # the reference Edge Pruning run on the same prompts: EAP is cut to its edge count
        match=lambda wc: f"results/{wc.model}/{wc.task}/ep/{EAP_RUNS[wc.task][wc.attribution]['match']}",
    output:
        directory("results/{model}/{task}/{attribution}"),
    log:
        "logs/eap/{model}/{task}/{attribution}.log",
    benchmark:
        "benchmarks/eap/{model}/{task}/{attribution}.tsv"
    wildcard_constraints:
        attribution=r"eap|eap_ig|eap-n\d+",
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        **model_job(mem_mb=4000, runtime=30),
    params:
        model_dir="results/models/{model}",
        method=lambda wc: EAP_RUNS[wc.task][wc.attribution]["method"],
        options=lambda wc: options(
            eap=EAP_RUNS[wc.task][wc.attribution]["eap"],
            **({"eap_ig": True} if EAP_RUNS[wc.task][wc.attribution]["method"] == "eap_ig" else {}),
            evaluation=EDGE_EVALUATION,
        ),
        runtime=RUNTIME,
    shell:
        "circuitbench eap --method {params.method} --model {params.model_dir}"
        " --data {input.data} --options '{params.options}' --match {input.match}"
        " {params.runtime} --threads {threads} --out {output} > {log} 2>&1"


rule edge_pruning:
    input:
        model=model_dir_input,
        data="results/data/{model}/{task}",
    output:
        directory("results/{model}/{task}/ep/{run}"),
    log:
        "logs/edge_pruning/{model}/{task}/{run}.log",
    benchmark:
        "benchmarks/edge_pruning/{model}/{task}/{run}.tsv"
    wildcard_constraints:
        run=r"t[0-9.]+(-n\d+)?",
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        **model_job(mem_mb=8000, runtime=120),
    params:
        model_dir="results/models/{model}",
        options=lambda wc: options(
            edge_pruning=EP_RUNS[wc.task][wc.run], evaluation=EDGE_EVALUATION
        ),
        runtime=RUNTIME,
    shell:
        "circuitbench edge-pruning --model {params.model_dir} --data {input.data}"
        " --options '{params.options}' {params.runtime} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule hap:
    input:
        model=model_dir_input,
        data="results/data/{model}/{task}",
        eap="results/{model}/{task}/eap",
        ep=f"results/{{model}}/{{task}}/ep/{REFERENCE_RUN}",
    output:
        directory("results/{model}/{task}/hap/{run}"),
    log:
        "logs/hap/{model}/{task}/{run}.log",
    benchmark:
        "benchmarks/hap/{model}/{task}/{run}.tsv"
    wildcard_constraints:
        run=r"k[0-9.]+",
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        **model_job(mem_mb=8000, runtime=120),
    params:
        model_dir="results/models/{model}",
        options=lambda wc: options(
            edge_pruning=True, hap=HAP_RUNS[wc.task][wc.run], evaluation=EDGE_EVALUATION
        ),
        runtime=RUNTIME,
    shell:
        "circuitbench hap --model {params.model_dir} --data {input.data} --eap {input.eap}"
        " --ep {input.ep} --options '{params.options}' {params.runtime} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule evaluate_reference_edges:
    # The dense path-patching and APP circuits as edge circuits (node-induced), evaluated under
    # the same interchange ablation as EAP / EP / HAP: their points in the sparsity figures.
    input:
        model=model_dir_input,
        data="results/data/{model}/{task}",
        method="results/{model}/{task}/{reference}",
    output:
        "results/{model}/{task}/eval/{reference}_interchange.csv",
    log:
        "logs/evaluate_reference_edges/{model}/{task}/{reference}.log",
    benchmark:
        "benchmarks/evaluate_reference_edges/{model}/{task}/{reference}.tsv"
    wildcard_constraints:
        reference="pp|app",
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        **model_job(mem_mb=4000, runtime=30),
    params:
        model_dir="results/models/{model}",
        options=lambda wc: options(evaluation=EDGE_EVALUATION),
        runtime=RUNTIME,
    shell:
        "circuitbench evaluate --model {params.model_dir} --split {input.data}/test.json"
        " --circuit {input.method}/circuit.json --name {wildcards.reference}"
        " --options '{params.options}' {params.runtime} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule hap_report:
    input:
        eap=DISCOVERY_RUNS["eap"],
        eap_ig=DISCOVERY_RUNS["eap_ig"],
        ep=DISCOVERY_RUNS["ep"],
        hap=DISCOVERY_RUNS["hap"],
        pp=expand("results/{model}/{task}/pp", model=MODELS, task=TASKS),
        pp_eval=expand("results/{model}/{task}/eval/pp_interchange.csv", model=MODELS, task=TASKS),
        app_eval=expand(
            "results/{model}/{task}/eval/app_interchange.csv", model=MODELS, task=TASKS
        ),
        # the mechanism stage's IOI classes label HAP Table 2's heads
        mechanisms=expand("results/{model}/mechanisms", model=MODELS),
    output:
        reported(DISCOVERY_OUTPUTS),
    log:
        "logs/hap_report/all.log",
    benchmark:
        "benchmarks/hap_report/all.tsv"
    localrule: True
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        **cpu_job(mem_mb=2000, runtime=10),
    params:
        pp_circuits=lambda wc, input: " ".join(f"{d}/circuit.json" for d in input.pp),
        heads=lambda wc, input: " ".join(f"{d}/heads.csv" for d in input.mechanisms),
        keep_fraction=config["hap"]["keep_fraction"],
        edge_target=config["hap"]["edge_target"],
    shell:
        "circuitbench hap-report --eap {input.eap} --eap-ig {input.eap_ig} --ep {input.ep}"
        " --hap {input.hap} --pp {params.pp_circuits} --pp-eval {input.pp_eval}"
        " --app-eval {input.app_eval} --heads {params.heads}"
        " --keep-fraction {params.keep_fraction}"
        " --edge-target {params.edge_target} --tables results/tables --figures figures"
        " > {log} 2>&1"


rule mib:
    input:
        model=model_dir_input,
        data="results/data/{model}/{task}",
        runs=mib_runs,
    output:
        directory("results/{model}/{task}/mib"),
    log:
        "logs/mib/{model}/{task}.log",
    benchmark:
        "benchmarks/mib/{model}/{task}.tsv"
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        **model_job(mem_mb=4000, runtime=30),
    params:
        model_dir="results/models/{model}",
        options=options(evaluation=EDGE_EVALUATION),
        runtime=RUNTIME,
    shell:
        "circuitbench mib --model {params.model_dir} --data {input.data} --runs {input.runs}"
        " --options '{params.options}' {params.runtime} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule mib_report:
    input:
        expand("results/{model}/{task}/mib", model=MODELS, task=TASKS),
    output:
        reported(MIB_OUTPUTS),
    log:
        "logs/mib_report/all.log",
    benchmark:
        "benchmarks/mib_report/all.tsv"
    localrule: True
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        **cpu_job(mem_mb=2000, runtime=10),
    shell:
        "circuitbench mib-report --runs {input} --tables results/tables > {log} 2>&1"
