# The QAT ablation: per arm (baseline, +KD, +regularizer, +module-dependent, ...), model, seed and
# bit-width, the qat rule's job with the arm's distillation / regularizer / quant / oscillation
# overrides (on top of the model's own quant / oscillation ones), then one table. Params are per
# arm, so editing one arm reruns only that arm's jobs.

import re

from qatstudy.workflow import ablation_arms, ablation_models, arm_config, qat_objective

ARMS = ablation_arms(config, SCHEMA)
ABLATION_MODELS = ablation_models(config)
ARM_CONFIG = {(arm, model): arm_config(config, arm, model, SCHEMA) for arm in ARMS for model in MODELS}
ABLATION_TAGS = bit_tags(config["ablation"]["bits"])
ABLATION_RUN = f"{RUN}/ablation/{{arm}}_{{tag}}"


wildcard_constraints:
    arm="|".join(re.escape(arm) for arm in ARMS),


use rule qat as ablation_qat with:
    output:
        checkpoint=f"{ABLATION_RUN}/model.pt",
        metrics=f"{ABLATION_RUN}/metrics.json",
    params:
        identity=lambda w: canonical({**identity(w), "arm": w.arm}),
        objective=lambda w: qat_objective(ARM_CONFIG[w.arm, w.model]),
        quant=lambda w: canonical(ARM_CONFIG[w.arm, w.model]["quant"]),
        config_digest=lambda w: config_digest(ARMS[w.arm], "qat"),
    log:
        "logs/ablation/{model}_seed{seed}_{arm}_{tag}.log",
    benchmark:
        "benchmarks/ablation/{model}_seed{seed}_{arm}_{tag}.tsv"


rule ablation_table:
    input:
        arms=expand(f"{ABLATION_RUN}/metrics.json", model=ABLATION_MODELS, seed=SEEDS, arm=ARMS, tag=ABLATION_TAGS),
        fp32=expand(f"{RUN}/fp32/metrics.json", model=ABLATION_MODELS, seed=SEEDS),
    output:
        csv="results/tables/ablation.csv",
        md="results/tables/ablation.md",
        tex="results/tables/ablation.tex",
    params:
        arms=list(ARMS),
        models=ABLATION_MODELS,
        allow_mixed_config=config["aggregate"]["allow_mixed_config"],
    log:
        "logs/ablation_table.log",
    script:
        "../workflow_scripts/ablation_table.py"
