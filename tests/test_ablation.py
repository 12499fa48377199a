"""The ablation target: arms expand to their jobs, an edited arm reruns only its own jobs, arm
overrides are checked against the schema, and the table renders from metrics JSONs."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from snakemake.utils import validate

from helpers import SCHEMA, SCHEMA_PATH
from qatstudy.ablation import ablation_frame, ablation_latex, ablation_markdown
from qatstudy.config import ablation_arms, ablation_models, arm_models, is_main_protocol_arm
from test_workflow import job_counts, scheduled_outputs, snakemake

REPO = Path(__file__).resolve().parents[1]
ARMS = {
    "baseline": {},
    "kd": {"distillation": {"weight": 0.5, "crops": 2}},
    "kd_module": {
        "distillation": {"weight": 0.5, "crops": 2},
        "quant": {"first_last_bits": 8, "quantize_attention": True},
    },
}


def tiny_ablation_config(**ablation) -> dict:
    config = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    config["ablation"] = {"bits": [4, 2], "models": ["vit"], "arms": copy.deepcopy(ARMS), **ablation}
    return config


def write_config(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def validated(config: dict) -> dict:
    validate(config, str(SCHEMA_PATH))
    return config


def scheduled_arm_runs(snakemake_output: str) -> set[str]:
    """The ablation run folders (kd_w4a4_q0, ...) that scheduled jobs write to."""
    return set(re.findall(r"runs/[^/\s]+/[^/\s]+/seed\d+/ablation/(\w+)/", scheduled_outputs(snakemake_output)))


@pytest.fixture(scope="module")
def ablation_dry_run(tmp_path_factory) -> tuple[Path, str]:
    workdir = tmp_path_factory.mktemp("ablation")
    config = write_config(tiny_ablation_config(), workdir / "ablation.yaml")
    result = snakemake(workdir, "--configfile", str(config), "--cores", "2", "ablation", "--dry-run")
    return workdir, result.stdout


def test_arms_expand_to_one_qat_job_per_arm_model_and_bits(ablation_dry_run):
    _, output = ablation_dry_run
    counts = job_counts(output)
    # only `vit` is ablated, so only its FP32 model is trained; the baseline arm overrides nothing, so its runs are
    # the study's own QAT runs (qat jobs, not ablation_qat ones)
    arms = len(ARMS) - 1
    assert counts == {
        "download": 1,
        "split": 1,
        "train_fp32": 1,
        "qat": 2,
        "ablation_qat": arms * 2,
        "ablation_table": 1,
        "ablation_findings": 1,
        "ablation": 1,
        "total": 8 + arms * 2,
    }
    assert scheduled_arm_runs(output) == {
        f"{arm}_{tag}_q0" for arm in ARMS if arm != "baseline" for tag in ("w4a4", "w2a2")
    }
    assert "runs/ablation/vit/seed0/ablation/kd_w2a2_q0/metrics.json" in output
    assert "runs/ablation/vit/seed0/qat_w2a2_q0/metrics.json" in output and "runs/ablation/cnn/" not in output


def test_editing_one_arm_reruns_only_its_jobs(ablation_dry_run, tmp_path):
    workdir, output = ablation_dry_run
    # stand-in outputs, marked as made by the current config (--touch records each job's params)
    for line in scheduled_outputs(output).splitlines():
        for name in line.split(":", 1)[1].split(","):
            path = workdir / name.strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    config = workdir / "ablation.yaml"
    snakemake(workdir, "--configfile", str(config), "--cores", "2", "ablation", "--touch", "--forceall")
    edited = tiny_ablation_config()
    edited["ablation"]["arms"]["kd"]["distillation"]["weight"] = 0.7
    result = snakemake(
        workdir,
        "--configfile",
        str(write_config(edited, tmp_path / "ablation.yaml")),
        "--cores",
        "2",
        "ablation",
        "--dry-run",
    )  # a file of the same name: the same study
    assert job_counts(result.stdout) == {
        "ablation_qat": 2,
        "ablation_table": 1,
        "ablation_findings": 1,
        "ablation": 1,
        "total": 5,
    }
    assert scheduled_arm_runs(result.stdout) == {"kd_w4a4_q0", "kd_w2a2_q0"}


@pytest.mark.parametrize("path", ["config.yaml", "config/gpu.yaml"])
def test_study_config_arms_change_one_thing_against_the_main_protocol(path):
    config = validated(yaml.safe_load((REPO / path).read_text()))
    arms = ablation_arms(config, SCHEMA)
    main = [arm for arm in arms if is_main_protocol_arm(config, arm)]
    assert main == [next(iter(arms))]  # the first row is the main protocol, whose runs are the study's own
    for arm, arm_config in arms.items():
        changed = {
            section: {k for k, v in arm_config[section].items() if v != config[section].get(k)}
            for section in ("distillation", "regularizer", "quant", "oscillation")
        }
        changed = {section: keys for section, keys in changed.items() if keys}
        assert (len(changed) == 1) != (arm in main), (arm, changed)
        assert set(arm_models(config, arm)) <= set(ablation_models(config))
    assert ablation_models(config) == (config["ablation"]["models"] or list(config["models"]))
    assert ablation_models({**config, "ablation": {**config["ablation"], "models": None}}) == list(config["models"])


def test_an_arm_may_run_on_some_models_only():
    config = validated(tiny_ablation_config(models=["vit", "cnn"]))
    config["ablation"]["arms"]["kd"]["models"] = ["cnn"]
    assert arm_models(config, "kd") == ["cnn"] and arm_models(config, "baseline") == ["vit", "cnn"]
    config["ablation"]["arms"]["kd"]["models"] = ["deit"]
    with pytest.raises(ValueError, match=re.escape("ablation.arms.kd.models: deit not in ablation.models")):
        arm_models(config, "kd")


def test_an_arm_keeps_the_study_settings_it_does_not_override():
    config = validated(tiny_ablation_config())
    config["distillation"]["temperature"] = 2.0
    arms = ablation_arms(config, SCHEMA)
    assert arms["kd"]["distillation"] == {"weight": 0.5, "crops": 2, "temperature": 2.0}
    assert arms["kd"]["quant"] == config["quant"]


@pytest.mark.parametrize(
    ("arm", "message"),
    [
        ({"distillation": {"wieght": 0.5}}, "ablation.arms.bad.distillation.wieght: unknown key"),
        ({"qat": {"epochs": 3}}, "ablation.arms.bad.qat: unknown key"),
        ({"regularizer": {"weight": -1}}, "ablation.arms.bad.regularizer.weight: -1 is less than the minimum"),
        ({"quant": {"first_last_bits": 9}}, "ablation.arms.bad.quant.first_last_bits: 9"),
    ],
)
def test_bad_arm_overrides_name_the_arm_and_key(arm, message):
    config = validated(tiny_ablation_config(arms={"baseline": {}, "bad": arm}))
    with pytest.raises(ValueError, match=re.escape(message)):
        ablation_arms(config, SCHEMA)


def test_ablated_models_must_exist():
    config = validated(tiny_ablation_config(models=["vit", "deit"]))
    with pytest.raises(ValueError, match=r"ablation\.models: deit"):
        ablation_models(config)


def test_schema_fills_ablation_defaults():
    config = validated(yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text()))
    assert config["ablation"] == {
        "bits": [4, 2],
        "models": None,
        "fp32_seeds": None,
        "qat_seeds": None,
        "arms": {"baseline": {}},
    }


def _write_metrics(folder: Path, name: str, **record) -> str:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(record))
    return str(path)


def test_table_renders_arms_by_bits_and_model(tmp_path):
    fp32 = [
        _write_metrics(tmp_path, f"fp32_{model}_{seed}", model=model, seed=seed, test_top1=top1)
        for model, seed, top1 in [("cnn", 0, 90.0), ("cnn", 1, 92.0), ("vit", 0, 88.0), ("vit", 1, 88.0)]
    ]
    arm_files, arm_of = [], {}
    for arm, gain in [("kd", 1.0), ("baseline", 0.0)]:  # files in any order; rows follow the arm list
        for model, family in [("vit", "vit"), ("cnn", "cnn")]:
            for bits in (4, 2):
                for seed in (0, 1):
                    history = [
                        {"epoch": 1, "val_top1": 70.0, "oscillating_share": 0.2},
                        {"epoch": 2, "val_top1": 70.5 + seed, "oscillating_share": 0.05 * seed},
                    ]
                    arm_files.append(
                        _write_metrics(
                            tmp_path,
                            f"{arm}_{model}_{bits}_{seed}",
                            model=model,
                            family=family,
                            w_bits=bits,
                            a_bits=bits,
                            seed=seed,
                            qat_seed=0,
                            test_top1=80.0 + bits + gain + seed,
                            val_top1=70.5 + seed,
                            history=history,
                        )
                    )
                    arm_of[arm_files[-1]] = arm
    arms, models = ["baseline", "kd"], ["cnn", "vit"]
    frame = ablation_frame(arm_files, fp32, arms, arm_of)

    assert list(frame.columns) == [
        "model",
        "family",
        "arm",
        "w_bits",
        "a_bits",
        "seed",
        "qat_seed",
        "top1",
        "fp32_top1",
        "val_top1",
        "last_epoch_val_gain",
        "oscillating_share",
        "config_hash",
        "git_commit",
        "git_dirty",
    ]
    assert len(frame) == 2 * 2 * 2 * 2
    assert list(frame.arm.drop_duplicates()) == arms
    row = frame[(frame.arm == "kd") & (frame.model == "cnn") & (frame.w_bits == 2) & (frame.seed == 1)].iloc[0]
    assert (row.top1, row.fp32_top1, row.oscillating_share) == (84.0, 92.0, 0.05)  # the last epoch's share
    assert (row.val_top1, row.last_epoch_val_gain) == (71.5, 1.5)  # validation gained by the last epoch

    markdown = ablation_markdown(frame, arms, models)
    lines = markdown.splitlines()
    assert lines[0] == "| Arm | W4A4 cnn | W4A4 vit | W2A2 cnn | W2A2 vit |"
    assert lines[2] == "| FP32 | 91.00 ± 12.71 (n=2) | 88.00 ± 0.00 (n=2) | 91.00 ± 12.71 (n=2) | 88.00 ± 0.00 (n=2) |"
    assert (
        lines[3] == "| baseline | 84.50 ± 6.35 (n=2) | 84.50 ± 6.35 (n=2) | 82.50 ± 6.35 (n=2) | 82.50 ± 6.35 (n=2) |"
    )
    assert lines[4].startswith("| kd | 85.50 ± 6.35 (n=2) |")

    latex = ablation_latex(frame, arms, models)
    assert r"\multicolumn{2}{c}{W4A4} & \multicolumn{2}{c}{W2A2} \\" in latex
    assert r"\cmidrule(lr){2-3} \cmidrule(lr){4-5}" in latex
    assert (
        r"baseline & 84.50 $\pm$ 6.35 (n=2) & 84.50 $\pm$ 6.35 (n=2) & "
        r"82.50 $\pm$ 6.35 (n=2) & 82.50 $\pm$ 6.35 (n=2) \\"
    ) in latex
    assert latex.startswith(r"\begin{tabular}{lrrrr}") and latex.rstrip().endswith(r"\end{tabular}")


def test_table_escapes_arm_names_for_latex(tmp_path):
    fp32 = [_write_metrics(tmp_path, "fp32", model="vit", seed=0, test_top1=88.0)]
    arm = [
        _write_metrics(
            tmp_path,
            "arm",
            model="vit",
            family="vit",
            w_bits=4,
            a_bits=4,
            seed=0,
            qat_seed=0,
            test_top1=85.0,
            history=[],
        )
    ]
    frame = ablation_frame(arm, fp32, ["kd_reg"], {arm[0]: "kd_reg"})
    assert pd.isna(frame.oscillating_share[0])
    assert r"kd\_reg & 85.00 \\" in ablation_latex(frame, ["kd_reg"], ["vit"])


def test_an_ablation_without_a_main_protocol_arm_is_refused_when_the_workflow_loads(tmp_path):
    config = tiny_ablation_config(arms={"kd": ARMS["kd"]})
    result = snakemake(
        tmp_path, "--configfile", str(write_config(config, tmp_path / "ablation.yaml")), "-n", "ablation", check=False
    )
    assert result.returncode != 0
    assert "ablation.arms: no arm without overrides" in result.stdout + result.stderr
