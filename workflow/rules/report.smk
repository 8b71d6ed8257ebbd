# Stage: named targets, one per paper, for `snakemake <name>` (each table and figure is also a
# target by its path, e.g. `snakemake figures/hap_k_sweep.png`). `rule all` builds all of them;
# `snakemake --report report.html` collects every table and figure with its caption.


rule all_reference:
    # models, their mechanisms, baselines and the dense path-patching reference circuits
    input:
        [t for t in FINAL_TARGETS if Path(t).stem in ("models", "baselines", "pp_circuits")]
        + MECHANISM_OUTPUTS,
    localrule: True


rule all_app:
    # APP Table 2, the speed-up table and figure, the FLAP / C-FLAP sweep figures
    input:
        APP_TABLES + APP_SPEEDUP + APP_FIGURES,
    localrule: True


rule all_hap:
    # HAP Tables 1-2, the k sweep, Edge Pruning Table 1, the sparsity figures, MIB's CPR / CMD
    input:
        DISCOVERY_OUTPUTS + MIB_OUTPUTS,
    localrule: True


rule all_planted:
    # recovery of the planted ground-truth circuits
    input:
        [t for t in FINAL_TARGETS if Path(t).stem.startswith("planted_")],
    localrule: True
