"""The whole DAG through Snakemake on a tiny config: outputs, no-op reruns, incremental bit-widths."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from snakemake.utils import validate

from helpers import SCHEMA, SCHEMA_PATH, needs_fashion_mnist
from qatstudy.config import arm_config, merged_settings, model_identity, model_objective, model_quant, qat_objective
from qatstudy.io import read_json
from qatstudy.job_runner import WORKFLOW_CORES_ENV, job_threads

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def scheduled_outputs(dry_run_output: str) -> str:
    """The `output:` lines of a dry run's scheduled jobs."""
    return "\n".join(line for line in dry_run_output.splitlines() if line.strip().startswith("output:"))


def dry_run(workdir: Path, tmp_path: Path, config: dict, target: str = "all") -> str:
    """The output of `snakemake <target> --dry-run` in `workdir` with `config` as the config file (a file named like
    the tiny study's, so that it is the same study)."""
    path = tmp_path / TINY.name
    path.write_text(yaml.safe_dump(config))
    return snakemake(workdir, "--configfile", str(path), "--cores", "2", target, "--dry-run").stdout


def scheduled_models(dry_run_output: str) -> set[str]:
    """The models whose run folders scheduled jobs write to."""
    return set(re.findall(r"runs/[^/\s]+/([^/\s]+)/seed", scheduled_outputs(dry_run_output)))


def scheduled_variants(dry_run_output: str) -> set[str]:
    """The run folders (fp32, ptq_w4a4_q0, ...) that scheduled jobs write to."""
    return set(re.findall(r"runs/[^/\s]+/[^/\s]+/seed\d+/(\w+)/", scheduled_outputs(dry_run_output)))


def job_counts(dry_run_output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run."""
    counts = {}
    table = dry_run_output.split("Job stats:", 1)[1]
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("tiny_study")
    snakemake(workdir, "--configfile", str(TINY), "--cores", "2", "all")
    return workdir


@needs_fashion_mnist
def test_tiny_study_tables(tiny_study):
    config = yaml.safe_load(TINY.read_text())
    accuracy = pd.read_csv(tiny_study / "results/tiny/tables/accuracy.csv")
    n_models, n_bits = len(config["models"]), len(config["bits"])
    assert len(accuracy) == n_models * (1 + 2 * n_bits)
    for column in ["model", "family", "method", "w_bits", "a_bits", "seed", "top1", "onnx_top1"]:
        assert column in accuracy.columns
    assert set(accuracy.method) == {"fp32", "ptq", "qat"}
    assert set(accuracy[accuracy.method != "fp32"].w_bits) == set(config["bits"])
    assert accuracy.top1.between(0, 100).all()
    deployed = accuracy[accuracy.method != "ptq"]
    assert deployed.onnx_top1.notna().all() and accuracy[accuracy.method == "ptq"].onnx_top1.isna().all()
    quantized = accuracy[accuracy.method != "fp32"]
    assert (quantized.packed_bytes < quantized.fp32_bytes).all()

    bench = pd.read_csv(tiny_study / "results/tiny/tables/bench.csv")
    # onnxruntime on model.onnx and OpenVINO on model_trt.onnx, every deployed variant and batch size
    assert len(bench) == 2 * n_models * (1 + n_bits) * len(config["bench"]["batch_sizes"])
    assert set(bench.backend) == {"onnxruntime-cpu", "openvino-cpu"}
    openvino = bench[bench.backend == "openvino-cpu"]
    assert openvino.deployed_top1.between(0, 100).all() and openvino.agreement.between(0, 1).all()
    assert (openvino.integer_compute_layers[openvino.method == "fp32"] == 0).all()
    assert (openvino.integer_compute_layers[openvino.method == "qat"] > 0).all()
    for column in [
        "model",
        "family",
        "method",
        "w_bits",
        "a_bits",
        "backend",
        "batch",
        "latency_ms_p50",
        "latency_ms_p99",
        "throughput_ips",
        "model_bytes",
        "peak_mem_bytes",
    ]:
        assert column in bench.columns
    assert (bench.latency_ms_p99 >= bench.latency_ms_p50).all() and (bench.throughput_ips > 0).all()
    # int8 containers make every quantized ONNX file smaller than its FP32 export
    fp32_bytes = bench[bench.method == "fp32"].groupby("model").model_bytes.first()
    for _, row in bench[bench.method == "qat"].iterrows():
        assert row.model_bytes < fp32_bytes[row.model]

    summary = (tiny_study / "results/tiny/tables/summary.md").read_text()
    for model in config["models"]:
        assert f"| {model} |" in summary
    findings = pd.read_csv(tiny_study / "results/tiny/tables/findings.csv")
    assert {
        "qat_drop_from_fp32",
        "qat_minus_ptq",
        "vit_minus_cnn_qat_drop",
        "vit_minus_cnn_oscillation",
        "vit_minus_cnn_weight_kurtosis",
    } <= set(findings.claim)
    assert (findings.n >= 1).all() and (tiny_study / "results/tiny/tables/findings.md").is_file()

    # every result carries its provenance; the tables carry its config hash (one per stage) and commit per row
    for table in (accuracy, bench):
        assert table.config_hash.notna().all() and "git_commit" in table and "git_dirty" in table
        assert (table.groupby("method").config_hash.nunique() == 1).all()
    assert accuracy.config_hash.nunique() == 3  # fp32, ptq and qat each hash the config sections behind them
    run = tiny_study / "runs/tiny/vit/seed0/qat_w8a8_q0"
    for name, scope in [("metrics.json", "qat"), ("onnx.json", "qat"), ("bench_cpu.json", "qat+bench")]:
        record = read_json(run / name)["provenance"]
        assert (record["config_scope"], record["config_model"], record["seed"]) == (scope, "vit", 0)
        assert record["packages"]["torch"] and record["hardware"]["cpus"] >= 1
    sensitivity = read_json(tiny_study / "runs/tiny/cnn/seed0/analysis/sensitivity.json")["provenance"]
    assert sensitivity["config_scope"] == "fp32+sensitivity"
    # PTQ and QAT (before and after its fine-tune) tried re-estimating the CNN's batch norms on 64 images
    qat_bn = read_json(tiny_study / "runs/tiny/cnn/seed0/qat_w4a4_q0/metrics.json")["batchnorm"]
    ptq_bn = read_json(tiny_study / "runs/tiny/cnn/seed0/ptq_w4a4_q0/metrics.json")["batchnorm"]
    for record in (qat_bn["init"], qat_bn["final"], ptq_bn):
        assert record["images"] == 64 and record["norms"] > 0 and record["min_gain"] == 0.1  # the schema default
        assert record["reestimated"] == (round(record["val_top1_after"] - record["val_top1_before"], 6) >= 0.1)


@needs_fashion_mnist
def test_tiny_study_figures(tiny_study):
    for name in [
        "accuracy_by_bits",
        "accuracy_vs_latency",
        "size_reduction",
        "oscillation",
        "onnx_vs_pytorch",
        "sensitivity",
    ]:
        assert (tiny_study / f"results/tiny/figures/{name}.png").read_bytes().startswith(b"\x89PNG")
        assert "<svg" in (tiny_study / f"results/tiny/figures/{name}.svg").read_text()
        assert "vega" in (tiny_study / f"results/tiny/figures/{name}.html").read_text().lower()
        assert ".csv" in (tiny_study / f"results/tiny/figures/{name}.caption.md").read_text()


@needs_fashion_mnist
def test_tiny_study_analysis_tables(tiny_study):
    config = yaml.safe_load(TINY.read_text())
    sensitivity = pd.read_csv(tiny_study / "results/tiny/tables/sensitivity.csv")
    assert set(sensitivity.model) == set(config["models"])
    assert set(sensitivity.w_bits) == set(config["analysis"]["sensitivity_bits"])
    assert {"stem", "head", "qkv", "stage1"} <= set(sensitivity.group)
    assert ((sensitivity.fp32_top1 - sensitivity.top1 - sensitivity["drop"]).abs() < 1e-6).all()
    variation = pd.read_csv(tiny_study / "results/tiny/tables/variation.csv")
    assert set(variation.kind) == {"weight", "activation"} and set(variation.model) == set(config["models"])


@needs_fashion_mnist
def test_tiny_study_report(tiny_study, tmp_path):
    # as the README runs it: no --cores, since a report executes no job
    snakemake(tiny_study, "--configfile", str(TINY), "--report", str(tmp_path / "report.html"))
    html = (tmp_path / "report.html").read_text()
    assert all(name in html for name in ["accuracy_by_bits", "summary.md", "sensitivity"])


@needs_fashion_mnist
def test_second_run_has_nothing_to_do(tiny_study):
    result = snakemake(tiny_study, "--configfile", str(TINY), "--cores", "2", "all", "--dry-run")
    assert "Nothing to be done" in result.stdout + result.stderr


@needs_fashion_mnist
def test_adding_a_bit_width_schedules_only_its_jobs(tiny_study, tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["bits"] = config["bits"] + [2]
    output = dry_run(tiny_study, tmp_path, config)
    counts = job_counts(output)
    n_models = len(config["models"])
    assert counts == {
        "ptq": n_models,
        "qat": n_models,
        "export_onnx": n_models,
        "bench_cpu": n_models,
        "bench_openvino": n_models,
        "bench_table": 1,
        "accuracy_tables": 1,
        "summary_tables": 1,
        "findings": 1,
        "render_figures": 1,
        "all": 1,
        "total": 5 * n_models + 6,
    }
    scheduled = scheduled_variants(output)
    assert scheduled == {"ptq_w2a2_q0", "qat_w2a2_q0"}


@pytest.mark.parametrize("transport", [None, "ssh"])
def test_bench_target_runs_only_what_the_benchmark_table_needs(tmp_path, transport):
    """`snakemake bench` trains, exports and benchmarks the deployed variants alone (the first FP32 seed's model and
    its QAT models of the first QAT seed), then writes the bench table: no PTQ job, no other seed's runs, no accuracy
    or summary table."""
    config = yaml.safe_load(TINY.read_text())
    config["seeds"] = {"fp32": [0, 1], "qat": [3, 5]}
    config["trt"] = {"transport": transport, "float_baselines": ["fp32", "fp16"]}
    output = dry_run(tmp_path, tmp_path, config, target="bench")
    counts = job_counts(output)
    n_models, n_deployed = len(config["models"]), 1 + len(config["bits"])
    expected = {
        "download": 1,
        "split": 1,
        "train_fp32": n_models,
        "qat": n_models * (n_deployed - 1),
        "export_onnx": n_models * n_deployed,
        "bench_cpu": n_models * n_deployed,
        "bench_openvino": n_models * n_deployed,
        "bench_table": 1,
        "bench": 1,
    }
    if transport:  # the FP32 model's two float baselines and each QAT model, one engine per batch size
        engines = n_models * (n_deployed + 1)
        expected.update(trt_build=engines * len(config["bench"]["batch_sizes"]), trt_bench=engines)
    assert "ptq" not in counts and counts == {**expected, "total": sum(expected.values())}
    assert scheduled_variants(output) == {"fp32", "qat_w8a8_q3", "qat_w4a4_q3"}
    assert set(re.findall(r"runs/tiny/[^/\s]+/seed(\d+)/", scheduled_outputs(output))) == {"0"}


def test_every_qat_seed_quantizes_every_fp32_model(tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["bits"] = [8, 4]
    config["seeds"] = {"fp32": [0, 1], "qat": [3, 5], "qat_by_bits": {8: [3]}, "ptq": [3]}
    output = dry_run(tmp_path, tmp_path, config)
    runs = set(re.findall(r"runs/tiny/([^/\s]+)/seed(\d+)/(\w+)/", scheduled_outputs(output)))
    for model in config["models"]:
        for fp32_seed in "01":
            assert {v for m, s, v in runs if (m, s) == (model, fp32_seed)} >= {
                "fp32",
                "ptq_w8a8_q3",
                "ptq_w4a4_q3",
                "qat_w8a8_q3",
                "qat_w4a4_q3",
                "qat_w4a4_q5",
            }
    assert not {v for _, _, v in runs if v in ("ptq_w4a4_q5", "qat_w8a8_q5")}
    config["seeds"]["ptq"] = [5]  # not a QAT seed of 8 bits: PTQ and QAT would not be paired there
    path = tmp_path / TINY.name
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--configfile", str(path), "--cores", "2", "all", "--dry-run", check=False)
    assert result.returncode != 0 and "seeds.ptq: [5] not among the QAT seeds of w8a8" in result.stdout + result.stderr


@needs_fashion_mnist
def test_a_models_quant_override_reschedules_only_its_quantized_jobs(tiny_study, tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["models"]["cnn"]["quant"] = {"depthwise_input_bits": 8}
    output = dry_run(tiny_study, tmp_path, config)
    counts = job_counts(output)
    n_bits = len(config["bits"])
    assert counts["ptq"] == counts["qat"] == counts["export_onnx"] == n_bits and "train_fp32" not in counts
    assert scheduled_models(output) == {"cnn"}


def test_model_quant_merges_the_models_overrides_and_names_bad_ones():
    config = yaml.safe_load(TINY.read_text())
    validate(config, str(SCHEMA_PATH))
    config["models"]["cnn"]["quant"] = {"depthwise_input_bits": 8}
    assert model_quant(config, "cnn", SCHEMA) == {**config["quant"], "depthwise_input_bits": 8}
    assert model_quant(config, "vit", SCHEMA) == config["quant"]
    config["models"]["cnn"]["quant"] = {"depthwise_bits": 8}
    with pytest.raises(ValueError, match=re.escape("models.cnn.quant.depthwise_bits: unknown key")):
        model_quant(config, "cnn", SCHEMA)
    config["models"]["cnn"]["quant"] = {"depthwise_input_bits": 1}
    with pytest.raises(ValueError, match=re.escape("models.cnn.quant.depthwise_input_bits: 1 is less than")):
        model_quant(config, "cnn", SCHEMA)


@needs_fashion_mnist
def test_tables_build_when_a_models_overrides_give_its_results_their_own_config_hash(tiny_study, tmp_path):
    """A model's config hash covers its own overrides, and the tables compare hashes per model, so a study whose
    models differ still tabulates (in a copy of the tiny study, which the other tests share)."""
    workdir = tmp_path / "study"
    shutil.copytree(tiny_study, workdir, symlinks=True)
    config = yaml.safe_load(TINY.read_text())
    config["models"]["cnn"]["oscillation"] = {"freeze_threshold": 0.02}
    path = tmp_path / TINY.name
    path.write_text(yaml.safe_dump(config))
    snakemake(workdir, "--configfile", str(path), "--cores", "2", "results/tiny/tables/accuracy.csv")
    accuracy = pd.read_csv(workdir / "results/tiny/tables/accuracy.csv")
    qat = accuracy[accuracy.method == "qat"].groupby("model").config_hash.unique()
    assert len(qat["cnn"]) == len(qat["vit"]) == 1 and qat["cnn"][0] != qat["vit"][0]
    fp32 = accuracy[accuracy.method == "fp32"].groupby("model").config_hash.first()
    assert fp32["cnn"] == fp32["vit"]  # the override does not touch the FP32 models


@needs_fashion_mnist
def test_a_models_oscillation_override_reschedules_only_its_qat_jobs(tiny_study, tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["models"]["cnn"]["oscillation"] = {"freeze_threshold": 0.02}
    output = dry_run(tiny_study, tmp_path, config)
    counts = job_counts(output)
    assert counts["qat"] == counts["export_onnx"] == len(config["bits"]) and "ptq" not in counts
    assert scheduled_models(output) == {"cnn"}


def test_model_objective_merges_the_models_oscillation_over_the_studys():
    config = yaml.safe_load(TINY.read_text())
    validate(config, str(SCHEMA_PATH))
    config["models"]["cnn"]["oscillation"] = {"freeze_threshold": 0.02}
    assert model_objective(config, "cnn", SCHEMA) == {**qat_objective(config), "freeze_threshold": 0.02}
    assert model_objective(config, "vit", SCHEMA) == qat_objective(config)
    config["models"]["cnn"]["oscillation"] = {"freeze": 0.02}
    with pytest.raises(ValueError, match=re.escape("models.cnn.oscillation.freeze: unknown key")):
        model_objective(config, "cnn", SCHEMA)
    config["models"]["cnn"]["oscillation"] = {"momentum": 1.5}
    with pytest.raises(ValueError, match=re.escape("models.cnn.oscillation.momentum: 1.5 is greater than or equal")):
        model_objective(config, "cnn", SCHEMA)


def test_an_arms_keys_win_over_the_models_and_the_models_others_stay():
    config = yaml.safe_load(TINY.read_text())
    config["models"]["cnn"]["oscillation"] = {"freeze_threshold": 0.02, "momentum": 0.9}
    config["models"]["cnn"]["quant"] = {"depthwise_input_bits": 8}
    config["ablation"] = {
        "arms": {"baseline": {}, "kd": {"distillation": {"weight": 0.5}, "oscillation": {"freeze_threshold": None}}}
    }
    validate(config, str(SCHEMA_PATH))
    baseline, kd = (qat_objective(arm_config(config, arm, "cnn", SCHEMA)) for arm in ("baseline", "kd"))
    assert baseline == model_objective(config, "cnn", SCHEMA)  # an arm that sets nothing runs the model's recipe
    assert kd == {**baseline, "distill_weight": 0.5, "freeze_threshold": None}
    assert kd["oscillation_momentum"] == 0.9
    assert arm_config(config, "kd", "cnn", SCHEMA)["quant"]["depthwise_input_bits"] == 8
    assert qat_objective(arm_config(config, "kd", "vit", SCHEMA)) == {**qat_objective(config), "distill_weight": 0.5}


def test_bad_config_key_is_named(tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["train"]["epochz"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--configfile", str(bad), "--cores", "1", "all", "--dry-run", check=False)
    assert result.returncode != 0
    assert "epochz" in result.stdout + result.stderr


def test_bad_config_value_is_named(tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["bits"] = [8, 9]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--configfile", str(bad), "--cores", "1", "all", "--dry-run", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "bits" in output and "9" in output


def test_strongly_typed_engines_need_fp32_precisions(tmp_path):
    """A strongly typed build takes its types from the FP32 ONNX file, so an FP16 engine cannot be asked for."""
    config = yaml.safe_load(TINY.read_text())
    config["trt"] = {"transport": "ssh", "strongly_typed": True}
    path = tmp_path / "typed.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--configfile", str(path), "--cores", "1", "bench", "--dry-run", check=False)
    assert result.returncode != 0
    assert "set trt.float_precision to fp32 and trt.float_baselines to [fp32]" in result.stdout + result.stderr
    config["trt"].update(float_precision="fp32", float_baselines=["fp32"])
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--configfile", str(path), "--cores", "1", "bench", "--dry-run")
    engines = set(re.findall(r"runs/\S+/trt/(\w+)/b\d+\.engine", result.stdout))
    assert engines == {"fp32"}


def test_missing_dataset_fails_with_sources_tried(tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["dataset"]["mirrors"] = [str(tmp_path / "empty-mirror")]
    config["dataset"]["urls"] = [(tmp_path / "no-such-server").as_uri() + "/"]
    bad = tmp_path / "nodata.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--configfile", str(bad), "--cores", "1", "runs/nodata/splits.npz", check=False)
    assert result.returncode != 0
    log = (tmp_path / "logs/download_fashion_mnist.log").read_text()
    assert "could not obtain" in log and "empty-mirror" in log and "no-such-server" in log
    assert not list((tmp_path / "data/fashion_mnist/raw").glob("*"))  # nothing half-written


@pytest.mark.parametrize(
    ("threads", "cores", "cpus", "expected"),
    [
        (8, 8, 2, 2),  # a training job under --cores 8 on 2 CPUs reserves all 8 and runs 2 threads
        (4, 8, 2, 1),  # an evaluation job reserves 4 of 8: two run side by side, one thread each
        (1, 1, 2, 1),  # --cores 1 is honoured
        (2, 2, 16, 2),  # on a big machine a job runs what it declared
    ],
)
def test_job_threads_never_oversubscribe(monkeypatch, threads, cores, cpus, expected):
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(cpus)))
    monkeypatch.setenv(WORKFLOW_CORES_ENV, str(cores))
    job = SimpleNamespace(threads=threads, resources=SimpleNamespace(_cores=threads))  # what a job really sees
    assert job_threads(job) == expected


def test_key_order_in_the_config_does_not_change_params():
    config = yaml.safe_load(TINY.read_text())
    reordered = yaml.safe_load(yaml.safe_dump(config, sort_keys=True))
    for model in config["models"]:
        assert repr(merged_settings(config, "train", model)) == repr(merged_settings(reordered, "train", model))
        assert repr(model_identity(model, config)) == repr(model_identity(model, reordered))


def test_model_overrides_merge_over_stage_settings():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["models"]["vit"]["train"] = {"epochs": config["train"]["epochs"] + 1}
    vit = merged_settings(config, "train", "vit")
    resnet = merged_settings(config, "train", "resnet")
    assert vit["epochs"] == config["train"]["epochs"] + 1 and resnet["epochs"] == config["train"]["epochs"]
    assert vit["lr"] == resnet["lr"] == config["train"]["lr"]


def test_weight_activation_tags_become_their_own_jobs(tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["bits"] = [8, "w4a8"]
    config["quant"] = {"first_last_bits": 8, "act_asymmetric": True}
    path = tmp_path / "wa.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--configfile", str(path), "--cores", "2", "all", "--dry-run")
    scheduled = scheduled_variants(result.stdout)
    assert scheduled == {"fp32", "ptq_w8a8_q0", "ptq_w4a8_q0", "qat_w8a8_q0", "qat_w4a8_q0", "analysis"}
