# PTQ and QAT per bit-width tag (w8a8, w4a4, ...) and QAT seed, both starting from the FP32 checkpoint of one FP32
# seed. The QAT seed fixes the calibration sample (PTQ too) and the fine-tune's data order and augmentation, so runs
# of one FP32 model that share a QAT seed are paired. Their run folders: PTQ_RUN and QAT_RUN (rules/common.smk).


rule ptq:
    input:
        data=SPLITS,
        fp32=f"{RUN}/fp32/model.pt",
    output:
        metrics=f"{PTQ_RUN}/metrics.json",
    log:
        f"{LOGS}/ptq/{{model}}_seed{{seed}}_{{tag}}_q{{qseed}}.log",
    benchmark:
        f"{BENCHMARKS}/ptq/{{model}}_seed{{seed}}_{{tag}}_q{{qseed}}.tsv"
    conda:
        "../envs/qatstudy.yaml"
    threads: cpu_share(config["threads"]["eval"])
    params:
        identity=identity,
        quant=lambda w: MODEL_QUANT[w.model],
        calibration=canonical(config["calibration"]),
        config_digest=model_digest("ptq"),
    script:
        "../workflow_scripts/ptq.py"


rule qat:
    input:
        data=SPLITS,
        fp32=f"{RUN}/fp32/model.pt",
    output:
        checkpoint=f"{QAT_RUN}/model.pt",
        metrics=f"{QAT_RUN}/metrics.json",
    log:
        f"{LOGS}/qat/{{model}}_seed{{seed}}_{{tag}}_q{{qseed}}.log",
    benchmark:
        f"{BENCHMARKS}/qat/{{model}}_seed{{seed}}_{{tag}}_q{{qseed}}.tsv"
    conda:
        "../envs/qatstudy.yaml"
    threads: cpu_share(config["threads"]["train"])
    params:
        identity=identity,
        settings=train_settings("qat"),
        objective=lambda w: MODEL_OBJECTIVE[w.model],
        quant=lambda w: MODEL_QUANT[w.model],
        calibration=canonical(config["calibration"]),
        config_digest=model_digest("qat"),
    script:
        "../workflow_scripts/qat.py"
