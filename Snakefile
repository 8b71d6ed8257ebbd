# circuitbench: automated circuit discovery, reproduced side by side (APP, HAP, Edge Pruning).
# `snakemake --cores all` runs the default replication on the self-trained toy suite.
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.19")


# The default configuration, unless a complete one is given with --configfile (a preset from
# workflow/presets/, or your own): then that file replaces it. `--config key=value` overrides
# single keys of either. Anchored to the Snakefile so `--directory elsewhere` still finds it.
if not workflow.config_settings.configfiles:

    configfile: Path(workflow.basedir) / "config.yaml"


validate(config, schema="workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/baseline.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/pruning.smk"
include: "workflow/rules/discovery.smk"
include: "workflow/rules/planted.smk"
include: "workflow/rules/mechanisms.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        FINAL_TARGETS,
