rule train_fp32:
    input:
        data=SPLITS,
    output:
        checkpoint=f"{RUN}/fp32/model.pt",
        metrics=f"{RUN}/fp32/metrics.json",
    log:
        f"{LOGS}/train_fp32/{{model}}_seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/train_fp32/{{model}}_seed{{seed}}.tsv"
    priority: 10  # the longest jobs, and everything waits on them: start them first
    conda:
        "../envs/qatstudy.yaml"
    threads: cpu_share(config["threads"]["train"])
    params:
        identity=identity,
        settings=train_settings("train"),
        pretrained=lambda w: config["models"][w.model]["pretrained"],
        zero_init_head=lambda w: config["models"][w.model]["zero_init_head"],
        config_digest=model_digest("fp32"),
    script:
        "../workflow_scripts/train_fp32.py"
