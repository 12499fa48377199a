rule download:
    output:
        expand("data/{dataset}/raw/{file}", dataset=DATASET, file=raw_file_names(DATASET)),
    params:
        dataset=DATASET,
        mirrors=config["dataset"]["mirrors"],
        urls=config["dataset"]["urls"],
    log:
        f"logs/download_{DATASET}.log",
    script:
        "../workflow_scripts/download.py"


rule split:
    input:
        rules.download.output,
    output:
        splits=SPLITS,
        summary=f"data/{DATASET}/splits.json",
    params:
        dataset=DATASET,
        val_size=config["dataset"]["val_size"],
        split_seed=config["dataset"]["split_seed"],
        train_subset=config["dataset"]["train_subset"],
        test_subset=config["dataset"]["test_subset"],
    log:
        f"logs/split_{DATASET}.log",
    script:
        "../workflow_scripts/split.py"
