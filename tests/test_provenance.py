"""Provenance: the record each result carries (git state, packages, hardware, config digest, seed), the config
digest's scope (grid axes left out), and the tables' refusal to mix config hashes."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from helpers import SCHEMA_PATH
from qatstudy.aggregate import accuracy_table, bench_table
from qatstudy.config import config_digest
from qatstudy.provenance import (
    PROVENANCE_COLUMNS,
    check_one_config,
    git_state,
    mixed_configs,
    provenance,
    with_tensorrt,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config() -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    validate(config, str(SCHEMA_PATH))  # fills in the defaults, as the workflow does
    return config


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


def test_git_state_names_the_commit_and_whether_the_code_differs(tmp_path):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "results").mkdir()
    (repo / "src" / "code.py").write_text("x = 1\n")
    (repo / "results" / "table.csv").write_text("a\n1\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "start")
    head = git(repo, "rev-parse", "HEAD")
    assert git_state(repo / "src") == {"git_commit": head, "git_dirty": False}
    (repo / "results" / "table.csv").write_text("a\n2\n")  # the workflow rewriting its published tables
    assert git_state(repo / "src")["git_dirty"] is False
    (repo / "src" / "new.py").write_text("")  # an untracked module is code the commit does not have
    assert git_state(repo / "src")["git_dirty"] is True
    (repo / "src" / "new.py").unlink()
    (repo / "src" / "code.py").write_text("x = 2\n")
    assert git_state(repo / "src") == {"git_commit": head, "git_dirty": True}
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    assert git_state(outside) == {"git_commit": None, "git_dirty": None}


def test_provenance_record(config):
    digest = config_digest(config, "qat")
    record = provenance(digest, seed=3)
    assert {"git_commit", "git_dirty", "packages", "hardware", "config_scope", "config_hash", "seed"} <= set(record)
    assert (record["config_scope"], record["config_hash"], record["seed"]) == ("qat", digest["hash"], 3)
    packages = record["packages"]
    for name in ("torch", "timm", "onnx", "onnxruntime", "snakemake"):
        assert packages[name] == importlib.metadata.version(name)
    assert "tensorrt" in packages  # None unless installed here; a TensorRT result names the device's
    assert with_tensorrt(record, "10.3.0")["packages"]["tensorrt"] == "10.3.0" and with_tensorrt(None, "10.3") is None
    hw = record["hardware"]
    assert hw["cpus"] == os.cpu_count() and hw["cpus_usable"] >= 1 and hw["memory_bytes"] > 0
    assert isinstance(hw["gpus"], list) and hw["host"]
    json.dumps(record)  # it goes into the result's JSON as it is
    assert provenance()["config_hash"] is None and provenance()["seed"] is None


def test_config_digest_leaves_out_the_grid_axes(config):
    digests = {stage: config_digest(config, stage) for stage in ("fp32", "ptq", "qat")}
    grown = copy.deepcopy(config)
    grown["bits"] = config["bits"] + ["w4a8"]
    grown["seeds"] = {**config["seeds"], "fp32": config["seeds"]["fp32"] + [7], "qat": config["seeds"]["qat"] + [7]}
    grown["models"]["deit"] = {"arch": "deit_tiny_patch16_224", "family": "vit", "kwargs": {}}
    grown["ablation"]["arms"]["kd_only"] = {"distillation": {"weight": 0.3}}
    grown["ablation"]["bits"] = [3]
    grown["threads"] = {"train": 8, "eval": 8}
    grown["figures"]["summary_bits"] = 4
    grown["dataset"]["mirrors"] = ["/elsewhere"]  # where the (MD5-checked) files come from
    grown["trt"]["transport"] = "ssh"
    reordered = yaml.safe_load(yaml.safe_dump(grown, sort_keys=True))
    for stage, digest in digests.items():
        assert config_digest(grown, stage) == config_digest(reordered, stage) == digest


@pytest.mark.parametrize(
    ("section", "key", "value", "changed"),
    [
        ("train", "lr", 0.01, {"fp32", "ptq", "qat"}),
        ("dataset", "val_size", 100, {"fp32", "ptq", "qat"}),
        ("calibration", "method", "minmax", {"ptq", "qat"}),
        ("quant", "act_asymmetric", True, {"ptq", "qat"}),
        ("qat", "epochs", 3, {"qat"}),
        ("distillation", "weight", 0.5, {"qat"}),
    ],
)
def test_config_digest_follows_the_sections_behind_a_result(config, section, key, value, changed):
    edited = copy.deepcopy(config)
    edited[section][key] = value
    moved = {stage for stage in ("fp32", "ptq", "qat") if config_digest(edited, stage) != config_digest(config, stage)}
    assert moved == changed


STAGES = ("fp32", "ptq", "qat")


@pytest.mark.parametrize(
    ("section", "override", "changed"),
    [
        ("train", {"lr": 0.01}, {"fp32", "ptq", "qat"}),
        ("qat", {"epochs": 3}, {"qat"}),
        ("quant", {"act_asymmetric": True}, {"ptq", "qat"}),
        ("oscillation", {"freeze_threshold": 0.1}, {"qat"}),
    ],
)
def test_a_models_overrides_enter_its_digests_and_no_other_models(config, section, override, changed):
    study = {stage: config_digest(config, stage) for stage in STAGES}
    # a model without overrides hashes as the study did, so finished results keep their digests
    assert all(config_digest(config, stage, model=m) == study[stage] for stage in STAGES for m in config["models"])
    edited = copy.deepcopy(config)
    edited["models"]["vit"][section] = override
    moved = {stage for stage in STAGES if config_digest(edited, stage, model="vit") != study[stage]}
    assert moved == changed
    for model in set(config["models"]) - {"vit"}:
        assert {stage: config_digest(edited, stage, model=model) for stage in STAGES} == study
    assert {stage: config_digest(edited, stage) for stage in STAGES} == study  # the study-wide sections


def test_an_ablation_arms_digest_covers_the_models_overrides_and_the_arms(config):
    edited = copy.deepcopy(config)
    edited["models"]["vit"]["oscillation"] = {"freeze_threshold": 0.02}
    edited["models"]["vit"]["qat"] = {"epochs": 3}
    edited["ablation"]["arms"] = {"main": {}, "freeze": {"oscillation": {"freeze_threshold": 0.1}}}
    vit, resnet = (config_digest(edited, "qat", model=m) for m in ("vit", "resnet"))
    assert config_digest(edited, "qat", model="vit", arm="main") == vit  # the main protocol is the model's own QAT
    freeze_vit = config_digest(edited, "qat", model="vit", arm="freeze")
    assert freeze_vit not in (vit, config_digest(edited, "qat", model="resnet", arm="freeze"))
    edited["models"]["vit"].pop("qat")  # left with an override the arm's key replaces
    assert config_digest(edited, "qat", model="vit", arm="freeze") == config_digest(
        edited, "qat", model="resnet", arm="freeze"
    )
    assert resnet == config_digest(config, "qat")


def test_a_rule_adds_its_own_settings_to_the_digest(config):
    bench = config_digest(config, "qat", bench=config["bench"])
    assert bench["scope"] == "qat+bench" and bench["hash"] != config_digest(config, "qat")["hash"]
    assert config_digest(config, "qat", bench={**config["bench"], "iterations": 7})["hash"] != bench["hash"]


def result(path: Path, config_hash: str | None, scope: str = "qat", **fields) -> str:
    record = {
        "model": "m",
        "family": "cnn",
        "method": "qat",
        "w_bits": 4,
        "a_bits": 4,
        "seed": 0,
        "test_top1": 50.0,
        **fields,
    }
    if config_hash is not None:
        record["provenance"] = {
            "config_scope": scope,
            "config_hash": config_hash,
            "git_commit": "abc123",
            "git_dirty": False,
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return str(path)


def test_one_config_per_scope_passes(tmp_path):
    files = [result(tmp_path / f"qat{i}.json", "aaaa") for i in range(3)]
    files += [result(tmp_path / "fp32.json", "bbbb", scope="fp32")]  # another scope may hash other sections
    files += [result(tmp_path / f"arm_{arm}.json", arm, arm=arm) for arm in ("kd", "baseline")]  # arms differ
    files += [result(tmp_path / "other_model.json", "cccc", model="other")]  # so do models, by their own overrides
    assert mixed_configs({f: json.loads(Path(f).read_text()) for f in files}) == []
    check_one_config(files, allow_mixed=False)


def test_results_are_compared_per_model_that_their_provenance_names(tmp_path):
    """An ONNX report carries no model field: its provenance names the model whose config its hash covers."""
    onnx = {}
    for model, config_hash in [("a", "aaaa"), ("b", "bbbb"), ("b", "bbbb")]:
        record = {"provenance": {"config_scope": "qat", "config_hash": config_hash, "config_model": model}}
        onnx[f"runs/{model}/{len(onnx)}/onnx.json"] = record
    assert mixed_configs(onnx) == []
    onnx["runs/b/9/onnx.json"] = {"provenance": {"config_scope": "qat", "config_hash": "9999", "config_model": "b"}}
    [problem] = mixed_configs(onnx)
    assert problem.startswith("'qat' results of model 'b' come from 2 different configs") and "runs/a" not in problem


def test_mixed_configs_are_refused_naming_hashes_and_files(tmp_path):
    old = [result(tmp_path / f"runs/m/seed{s}/qat_w4a4/metrics.json", "1111aaaa") for s in range(7)]
    new = result(tmp_path / "runs/m/seed9/qat_w4a4/metrics.json", "2222bbbb")
    bare = result(tmp_path / "runs/m/seed8/qat_w4a4/metrics.json", None)
    with pytest.raises(ValueError) as error:
        check_one_config([*old, new], allow_mixed=False)
    message = str(error.value)
    assert "'qat' results of model 'm' come from 2 different configs" in message
    assert "config hash 1111aaaa" in message and "config hash 2222bbbb" in message
    assert new in message and old[0] in message and "and 2 more" in message  # five named per hash
    assert "aggregate.allow_mixed_config" in message
    # a result written before results recorded provenance has an unknown config
    problems = mixed_configs({bare: json.loads(Path(bare).read_text()), new: json.loads(Path(new).read_text())})
    assert len(problems) == 1 and "carry no provenance" in problems[0] and bare in problems[0]
    assert mixed_configs({bare: json.loads(Path(bare).read_text())}) == []  # tables of hand-made results
    logged = []
    check_one_config([*old, new], allow_mixed=True, log=logged.append)
    assert len(logged) == 1 and "2222bbbb" in logged[0]


def test_tables_carry_the_provenance_columns(tmp_path):
    metrics = result(
        tmp_path / "runs/m/seed0/qat_w4a4/metrics.json",
        "cafe0123",
        input_shape=[1, 28, 28],
        params=10,
        fp32_bytes=40,
        packed_bytes=8,
        val_top1=51.0,
    )
    bench = tmp_path / "runs/m/seed0/qat_w4a4/bench_cpu.json"
    bench.write_text(
        json.dumps(
            {
                **json.loads(Path(metrics).read_text()),
                "rows": [
                    {
                        "backend": "onnxruntime-cpu",
                        "batch": 1,
                        "threads": 1,
                        "latency_ms_p50": 1.0,
                        "latency_ms_p99": 2.0,
                        "latency_ms_mean": 1.2,
                        "throughput_ips": 800.0,
                        "model_bytes": 100,
                        "peak_mem_bytes": 1000,
                    }
                ],
            }
        )
    )
    for table in (accuracy_table([metrics], []), bench_table([str(bench)])):
        assert list(table.columns[-3:]) == PROVENANCE_COLUMNS
        assert table.iloc[0][PROVENANCE_COLUMNS].tolist() == ["cafe0123", "abc123", False]
