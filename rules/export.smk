rule export_onnx:
    input:
        data=SPLITS,
        checkpoint=f"{RUN}/{{variant}}/model.pt",
    output:
        onnx=f"{RUN}/{{variant}}/model.onnx",
        report=f"{RUN}/{{variant}}/onnx.json",
    params:
        config_digest=variant_digest(),
    threads: cpu_share(config["threads"]["eval"])
    log:
        "logs/export/{model}_seed{seed}_{variant}.log",
    script:
        "../workflow_scripts/export.py"
