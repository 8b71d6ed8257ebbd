# Stage: edge-level discovery (issue 6): EAP and EAP-IG scores, Edge Pruning at several sparsity
# targets, HAP (Edge Pruning on the top-k EAP subgraph), and HAP's / Edge Pruning's tables and
# figures. Matched sparsity: Edge Pruning lands where it lands; HAP and EAP are cut to the edge
# count of the reference run (target hap.edge_target, every training prompt), so the EAP rule
# waits for that run. Sweeps run on the sweep tasks only, as the papers do on IOI:
#   edge_pruning.targets and edge_pruning.train_sizes (EP Table 1) on edge_pruning.sweep_tasks,
#   hap.keep_fractions (the k sweep) on hap.sweep_tasks.

EAP_CFG = config["eap"]
EAP_IG_CFG = config["eap_ig"]
EP_CFG = config["edge_pruning"]
HAP_CFG = config["hap"]
EDGE_TARGET = HAP_CFG["edge_target"]
# Edge Pruning runs are named t<target>[-n<training prompts>]; the reference run uses them all.
REFERENCE_RUN = f"t{EDGE_TARGET:g}"
EP_SWEEP = {task: task in EP_CFG["sweep_tasks"] for task in TASKS}
EP_RUNS = {
    task: [
        f"t{target:g}"
        for target in sorted({EDGE_TARGET, *(EP_CFG["targets"] if EP_SWEEP[task] else [])})
    ]
    + [f"{REFERENCE_RUN}-n{n}" for n in (EP_CFG["train_sizes"] if EP_SWEEP[task] else [])]
    for task in TASKS
}
# EAP on every training prompt (eap, eap_ig) and on the training-size sweep's subsets (eap-n<N>).
EAP_RUNS = {
    task: ["eap", *(f"eap-n{n}" for n in (EP_CFG["train_sizes"] if EP_SWEEP[task] else []))]
    for task in TASKS
}
HAP_FRACTIONS = {
    task: sorted(
        {
            HAP_CFG["keep_fraction"],
            *(HAP_CFG["keep_fractions"] if task in HAP_CFG["sweep_tasks"] else []),
        }
    )
    for task in TASKS
}
IG_FLAGS = f"--ig-steps {EAP_IG_CFG['steps']} --riemann {EAP_IG_CFG['riemann']}"
EAP_OPTIONS = " ".join(
    [
        "--prune-dangling" if EAP_CFG["prune_dangling"] else "--no-prune-dangling",
        f"--score-sign {EAP_CFG['score_sign']} --ranking {EAP_CFG['ranking']}",
        f"--batch-size {EAP_CFG['batch_size']}",
        "--sparsities " + " ".join(str(s) for s in EAP_CFG["curve_sparsities"]),
    ]
)
# The Edge Pruning options shared by the edge_pruning and hap rules.
EP_OPTIONS = " ".join(
    [
        f"--node-target {EP_CFG['node_target']}",
        f"--steps {EP_CFG['steps']} --sparsity-warmup {EP_CFG['sparsity_warmup']}",
        f"--lr-warmup {EP_CFG['lr_warmup']} --edge-lr {EP_CFG['edge_lr']}",
        f"--edge-lambda-lr {EP_CFG['edge_lambda_lr']} --node-lr {EP_CFG['node_lr']}",
        f"--node-lambda-lr {EP_CFG['node_lambda_lr']} --batch-size {EP_CFG['batch_size']}",
        f"--warmup-type {EP_CFG['warmup_type']} --seed {EP_CFG['seed']}",
    ]
    + [
        f"--{key.replace('_', '-')}" if EP_CFG[key] else f"--no-{key.replace('_', '-')}"
        for key in ("with_embedding_nodes", "node_masks", "node_loss", "cache_corrupted")
    ]
)
HAP_OPTIONS = " ".join(
    [
        f"--eap-ranking {HAP_CFG['eap_ranking']}",
        f"--sparsity-denominator {HAP_CFG['sparsity_denominator']}",
        f"--schedule-start {HAP_CFG['schedule_start']}",
        f"--retained-head-rule {HAP_CFG['retained_head_rule']}",
        "--skip-removed-edges" if HAP_CFG["skip_removed_edges"] else "--no-skip-removed-edges",
    ]
    + ([f"--ep-steps {HAP_CFG['ep_steps']}"] if HAP_CFG["ep_steps"] is not None else [])
    + (
        [f"--ep-sparsity-warmup {HAP_CFG['ep_sparsity_warmup']}"]
        if HAP_CFG["ep_sparsity_warmup"] is not None
        else []
    )
)
DISCOVERY_RUNS = {
    "eap": [f"results/{m}/{t}/{name}" for m in MODELS for t in TASKS for name in EAP_RUNS[t]],
    "eap_ig": [f"results/{m}/{t}/eap_ig" for m in MODELS for t in TASKS],
    "ep": [f"results/{m}/{t}/ep/{run}" for m in MODELS for t in TASKS for run in EP_RUNS[t]],
    "hap": [f"results/{m}/{t}/hap/k{f:g}" for m in MODELS for t in TASKS for f in HAP_FRACTIONS[t]],
}
K_SWEEP = any(len(HAP_FRACTIONS[t]) > 1 for t in TASKS)
REPORT_TABLES = ["hap_table1", "hap_table2", "ep_table1"] + (["hap_k_sweep"] if K_SWEEP else [])
REPORT_FIGURES = ["ep_kl_sparsity", "ep_metric_sparsity"] + (["hap_k_sweep"] if K_SWEEP else [])
DISCOVERY_OUTPUTS = [
    f"results/tables/{name}.{ext}" for name in REPORT_TABLES for ext in ("csv", "md", "tex")
] + [f"figures/{name}.{ext}" for name in REPORT_FIGURES for ext in ("png", "pdf")]

FINAL_TARGETS += DISCOVERY_OUTPUTS


rule eap:
    input:
        model=model_dir_input,
        data="results/data/{model}/{task}",
        # the reference Edge Pruning run on the same prompts: EAP is cut to its edge count
        match=lambda wc: f"results/{wc.model}/{wc.task}/ep/{REFERENCE_RUN}"
        + (f"-n{wc.attribution.split('-n')[1]}" if "-n" in wc.attribution else ""),
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
        slurm_partition=gpu_job_partition,
        mem_mb=4000,
        runtime=30,
        gpu=job_gpus,
        gpu_model=job_gpu_model,
    params:
        model_dir="results/models/{model}",
        flags=lambda wc: (IG_FLAGS if wc.attribution == "eap_ig" else "")
        + (f" --n-prompts {wc.attribution.split('-n')[1]}" if "-n" in wc.attribution else ""),
        options=EAP_OPTIONS,
        eval_batch_size=config["evaluation"]["batch_size"],
        device=config["device"],
        dtype=config["dtype"],
    shell:
        "circuitbench eap --model {params.model_dir} --data {input.data} {params.flags}"
        " {params.options} --match {input.match} --eval-batch-size {params.eval_batch_size}"
        " --device {params.device} --dtype {params.dtype} --threads {threads}"
        " --out {output} > {log} 2>&1"


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
        slurm_partition=gpu_job_partition,
        mem_mb=8000,
        runtime=120,
        gpu=job_gpus,
        gpu_model=job_gpu_model,
    params:
        model_dir="results/models/{model}",
        run=lambda wc: f"--target {wc.run[1:].split('-n')[0]}"
        + (f" --n-train {wc.run.split('-n')[1]}" if "-n" in wc.run else ""),
        options=EP_OPTIONS,
        eval_batch_size=config["evaluation"]["batch_size"],
        device=config["device"],
        dtype=config["dtype"],
    shell:
        "circuitbench edge-pruning --model {params.model_dir} --data {input.data} {params.run}"
        " {params.options} --eval-batch-size {params.eval_batch_size}"
        " --device {params.device} --dtype {params.dtype} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule hap:
    input:
        model=model_dir_input,
        data="results/data/{model}/{task}",
        eap="results/{model}/{task}/eap",
        ep=f"results/{{model}}/{{task}}/ep/{REFERENCE_RUN}",
    output:
        directory("results/{model}/{task}/hap/k{fraction}"),
    log:
        "logs/hap/{model}/{task}/k{fraction}.log",
    benchmark:
        "benchmarks/hap/{model}/{task}/k{fraction}.tsv"
    wildcard_constraints:
        fraction=r"[0-9.]+",
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
        hap=lambda wc: f"--keep-fraction {wc.fraction} {HAP_OPTIONS}",
        options=EP_OPTIONS,
        eval_batch_size=config["evaluation"]["batch_size"],
        device=config["device"],
        dtype=config["dtype"],
    shell:
        "circuitbench hap --model {params.model_dir} --data {input.data} --eap {input.eap}"
        " --ep {input.ep} {params.hap} {params.options}"
        " --eval-batch-size {params.eval_batch_size}"
        " --device {params.device} --dtype {params.dtype} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule evaluate_pp_edges:
    # The dense path-patching circuit as an edge circuit (node-induced), evaluated under the same
    # interchange ablation as EAP / EP / HAP: the PP points of the sparsity figures.
    input:
        model=model_dir_input,
        data="results/data/{model}/{task}",
        pp="results/{model}/{task}/pp",
    output:
        "results/{model}/{task}/eval/pp_interchange.csv",
    log:
        "logs/evaluate_pp_edges/{model}/{task}.log",
    benchmark:
        "benchmarks/evaluate_pp_edges/{model}/{task}.tsv"
    conda:
        "../../envs/circuitbench.yaml"
    threads: 1
    resources:
        slurm_partition=gpu_job_partition,
        mem_mb=4000,
        runtime=30,
        gpu=job_gpus,
        gpu_model=job_gpu_model,
    params:
        model_dir="results/models/{model}",
        batch_size=config["evaluation"]["batch_size"],
        device=config["device"],
        dtype=config["dtype"],
    shell:
        "circuitbench evaluate --model {params.model_dir} --data {input.data}/test.json"
        " --circuit {input.pp}/circuit.json --name pp --ablation interchange"
        " --batch-size {params.batch_size} --device {params.device} --dtype {params.dtype}"
        " --threads {threads} --out {output} > {log} 2>&1"


rule hap_report:
    input:
        eap=DISCOVERY_RUNS["eap"],
        eap_ig=DISCOVERY_RUNS["eap_ig"],
        ep=DISCOVERY_RUNS["ep"],
        hap=DISCOVERY_RUNS["hap"],
        pp=expand("results/{model}/{task}/pp", model=MODELS, task=TASKS),
        pp_eval=expand("results/{model}/{task}/eval/pp_interchange.csv", model=MODELS, task=TASKS),
        # APP's circuits are plotted as points: an input, so the figures follow APP reruns.
        app=expand("results/{model}/{task}/app", model=MODELS, task=TASKS),
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
        slurm_partition=job_partition,
        mem_mb=2000,
        runtime=10,
    params:
        pp_circuits=lambda wc, input: " ".join(f"{d}/circuit.json" for d in input.pp),
        keep_fraction=HAP_CFG["keep_fraction"],
        edge_target=EDGE_TARGET,
        device=config["device"],
    shell:
        "circuitbench hap-report --eap {input.eap} --eap-ig {input.eap_ig} --ep {input.ep}"
        " --hap {input.hap} --pp {params.pp_circuits} --pp-eval {input.pp_eval}"
        " --keep-fraction {params.keep_fraction} --edge-target {params.edge_target}"
        " --device {params.device} --threads {threads}"
        " --tables results/tables --figures figures > {log} 2>&1"
