# The QAT ablation: per arm (the main protocol, +KD, +regularizer, +freezing, ...), model, FP32 seed, bit-width and
# QAT seed, the qat rule's job with the arm's distillation / regularizer / quant / oscillation overrides (on top of
# the model's own quant / oscillation ones), then one table. Every arm of one FP32 model runs the same QAT seeds, so
# arm differences are paired. An arm without overrides is the main protocol: its runs are the qat rule's own.
# Params are per arm, so editing one arm reruns only that arm's jobs.

import re

from qatstudy.config import (
    ablation_arms,
    ablation_models,
    ablation_seeds,
    arm_config,
    arm_models,
    is_main_protocol_arm,
    qat_objective,
)

ARMS = ablation_arms(config, SCHEMA)
ABLATION_MODELS = ablation_models(config)
ABLATION_FP32_SEEDS, ABLATION_QAT_SEEDS = ablation_seeds(config)
ARM_CONFIG = {(arm, model): arm_config(config, arm, model, SCHEMA) for arm in ARMS for model in MODELS}
ABLATION_TAGS = bit_tags(config["ablation"]["bits"])
ABLATION_RUN = f"{RUN}/ablation/{{arm}}_{{tag}}_q{{qseed}}"
MAIN_PROTOCOL_ARMS = [arm for arm in ARMS if is_main_protocol_arm(config, arm)]
if ARMS and not MAIN_PROTOCOL_ARMS:
    raise ValueError(
        "ablation.arms: no arm without overrides (the main protocol), which the other arms are paired with"
    )
# The metrics files of each arm's runs: the qat rule's for a main-protocol arm, else the arm's own.
ABLATION_METRICS = {
    arm: expand(
        f"{QAT_RUN}/metrics.json" if arm in MAIN_PROTOCOL_ARMS else f"{ABLATION_RUN}/metrics.json",
        model=arm_models(config, arm),
        seed=ABLATION_FP32_SEEDS,
        arm=arm,
        tag=ABLATION_TAGS,
        qseed=ABLATION_QAT_SEEDS,
    )
    for arm in ARMS
}


wildcard_constraints:
    arm="|".join(re.escape(arm) for arm in ARMS if arm not in MAIN_PROTOCOL_ARMS) or "(?!x)x",  # none: no arm job


use rule qat as ablation_qat with:
    output:
        checkpoint=f"{ABLATION_RUN}/model.pt",
        metrics=f"{ABLATION_RUN}/metrics.json",
    log:
        f"{LOGS}/ablation/{{model}}_seed{{seed}}_{{arm}}_{{tag}}_q{{qseed}}.log",
    benchmark:
        f"{BENCHMARKS}/ablation/{{model}}_seed{{seed}}_{{arm}}_{{tag}}_q{{qseed}}.tsv"
    params:
        identity=lambda w: canonical({**identity(w), "arm": w.arm}),
        objective=lambda w: qat_objective(ARM_CONFIG[w.arm, w.model]),
        quant=lambda w: canonical(ARM_CONFIG[w.arm, w.model]["quant"]),
        config_digest=lambda w: config_digest(config, "qat", model=w.model, arm=w.arm),


rule ablation_table:
    input:
        arms=[f for files in ABLATION_METRICS.values() for f in files],
        fp32=expand(f"{RUN}/fp32/metrics.json", model=ABLATION_MODELS, seed=ABLATION_FP32_SEEDS),
    output:
        csv=f"{TABLES_DIR}/ablation.csv",
        md=f"{TABLES_DIR}/ablation.md",
        tex=f"{TABLES_DIR}/ablation.tex",
    log:
        f"{LOGS}/ablation_table.log",
    conda:
        "../envs/qatstudy.yaml"
    params:
        arms=list(ARMS),
        arm_of={f: arm for arm, files in ABLATION_METRICS.items() for f in files},
        models=ABLATION_MODELS,
        allow_mixed_config=config["aggregate"]["allow_mixed_config"],
    script:
        "../workflow_scripts/ablation_table.py"


rule ablation_findings:
    input:
        f"{TABLES_DIR}/ablation.csv",
    output:
        csv=table_report(f"{TABLES_DIR}/ablation_findings.csv", "ablation_findings"),
        markdown=f"{TABLES_DIR}/ablation_findings.md",
    log:
        f"{LOGS}/ablation_findings.log",
    conda:
        "../envs/qatstudy.yaml"
    params:
        main_arm=MAIN_PROTOCOL_ARMS[:1],
    script:
        "../workflow_scripts/ablation_findings.py"
