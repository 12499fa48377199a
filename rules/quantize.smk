# PTQ and QAT per bit-width tag (w8a8, w4a4, ...), both starting from the FP32 checkpoint.


rule ptq:
    input:
        data=SPLITS,
        fp32=f"{RUN}/fp32/model.pt",
    output:
        metrics=f"{RUN}/ptq_{{tag}}/metrics.json",
    params:
        identity=identity,
        quant=lambda w: MODEL_QUANT[w.model],
        calibration=canonical(config["calibration"]),
        config_digest=config_digest(config, "ptq"),
    threads: cpu_share(config["threads"]["eval"])
    log:
        "logs/ptq/{model}_seed{seed}_{tag}.log",
    benchmark:
        "benchmarks/ptq/{model}_seed{seed}_{tag}.tsv"
    script:
        "../workflow_scripts/ptq.py"


rule qat:
    input:
        data=SPLITS,
        fp32=f"{RUN}/fp32/model.pt",
    output:
        checkpoint=f"{RUN}/qat_{{tag}}/model.pt",
        metrics=f"{RUN}/qat_{{tag}}/metrics.json",
    params:
        identity=identity,
        settings=train_settings("qat"),
        objective=lambda w: MODEL_OBJECTIVE[w.model],
        quant=lambda w: MODEL_QUANT[w.model],
        calibration=canonical(config["calibration"]),
        config_digest=config_digest(config, "qat"),
    threads: cpu_share(config["threads"]["train"])
    log:
        "logs/qat/{model}_seed{seed}_{tag}.log",
    benchmark:
        "benchmarks/qat/{model}_seed{seed}_{tag}.tsv"
    script:
        "../workflow_scripts/qat.py"
