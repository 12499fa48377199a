rule download:
    output:
        expand(f"{RAW}/{{file}}", file=raw_file_names(DATASET)),
    log:
        f"logs/download_{DATASET}.log",  # shared by every study of the dataset, like the files
    conda:
        "../envs/qatstudy.yaml"
    params:
        dataset=DATASET,
        mirrors=config["dataset"]["mirrors"],
        urls=config["dataset"]["urls"],
    script:
        "../workflow_scripts/download.py"


rule split:
    input:
        rules.download.output,
    output:
        splits=SPLITS,
        summary=f"{STUDY_RUNS}/splits.json",
    log:
        f"{LOGS}/split.log",
    conda:
        "../envs/qatstudy.yaml"
    params:
        dataset=DATASET,
        val_size=config["dataset"]["val_size"],
        split_seed=config["dataset"]["split_seed"],
        train_subset=config["dataset"]["train_subset"],
        test_subset=config["dataset"]["test_subset"],
    script:
        "../workflow_scripts/split.py"
