"""Module groups, per-group PTQ sensitivity, variation statistics and their tables, on tiny untrained
timm models and a few dozen fake images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from snakemake.utils import validate
from torch import nn

from helpers import SCHEMA_PATH, make_tiny_dataset
from qatstudy import analysis, quant, stages
from qatstudy.batches import Splits
from qatstudy.models import create_model
from qatstudy.train import evaluate

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
VIT = ("vit_convstem_tiny", {"embed_dim": 16, "depth": 1, "num_heads": 2})
SWIN = ("swin_convstem_tiny", {"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2]})
RESNET = ("resnet10t", {})
# what a job records about itself (qatstudy.provenance); the tables carry its hash and commit per row
PROVENANCE = {
    "config_hash": "0123456789abcdef",
    "config_scope": "fp32+sensitivity",
    "git_commit": "c0ffee",
    "git_dirty": False,
}


def tiny(arch_kwargs: tuple[str, dict]) -> nn.Module:
    torch.manual_seed(0)
    return create_model(arch_kwargs[0], num_classes=10, in_chans=1, kwargs=arch_kwargs[1]).eval()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data"))


def test_vit_groups_by_role():
    assert analysis.layer_groups(tiny(VIT)) == {
        "stem": ["patch_embed.proj.0", "patch_embed.proj.3", "patch_embed.proj.6"],
        "qkv": ["blocks.0.attn.qkv"],
        "attention_map": ["blocks.0.attn"],
        "attn_proj": ["blocks.0.attn.proj"],
        "fc1": ["blocks.0.mlp.fc1"],
        "fc2": ["blocks.0.mlp.fc2"],
        "head": ["head"],
    }


def test_swin_groups_include_patch_merging_and_the_nested_head():
    groups = analysis.layer_groups(tiny(SWIN))
    assert list(groups) == ["stem", "qkv", "attention_map", "attn_proj", "fc1", "fc2", "patch_merging", "head"]
    assert groups["qkv"] == ["layers.0.blocks.0.attn.qkv", "layers.1.blocks.0.attn.qkv"]
    assert groups["attention_map"] == ["layers.0.blocks.0.attn", "layers.1.blocks.0.attn"]
    assert groups["patch_merging"] == ["layers.1.downsample.reduction"]
    assert groups["head"] == ["head.fc"]


def test_cnn_groups_by_stage():
    groups = analysis.layer_groups(tiny(RESNET))
    assert list(groups) == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    assert groups["stem"] == ["conv1.0", "conv1.3", "conv1.6"]
    assert groups["stage2"] == ["layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.1"]
    assert groups["head"] == ["fc"]
    # MobileNet: blocks.<i> is stage i + 1, and conv_head (after the body) belongs to the head
    mobilenet = analysis.layer_groups(tiny(("mobilenetv2_050", {})))
    assert list(mobilenet) == ["stem"] + [f"stage{k}" for k in range(1, 8)] + ["head"]
    assert mobilenet["stage1"][0] == "blocks.0.0.conv_dw" and mobilenet["head"] == ["conv_head", "classifier"]


@pytest.mark.parametrize("arch_kwargs", [VIT, SWIN, RESNET])
def test_groups_partition_the_quantizable_layers(arch_kwargs):
    model = tiny(arch_kwargs)
    grouped = [n for g, names in analysis.layer_groups(model).items() if g != "attention_map" for n in names]
    assert sorted(grouped) == sorted(name for name, _ in quant.quantizable_layers(model))


def test_quantize_model_wraps_only_the_named_modules():
    model = tiny(VIT)
    scheme = quant.QuantScheme(4, 4, quantize_attention=True)
    only_fc1 = analysis.quantize_group(model, ["blocks.0.mlp.fc1"], scheme)
    assert [name for name, _ in quant.quant_modules(only_fc1)] == ["blocks.0.mlp.fc1"]
    assert type(only_fc1.blocks[0].attn) is not quant.QuantViTAttention and type(only_fc1.head) is nn.Linear
    only_attention = analysis.quantize_group(model, ["blocks.0.attn"], scheme)
    assert isinstance(only_attention.blocks[0].attn, quant.QuantViTAttention)
    assert not list(quant.quant_modules(only_attention))
    assert not list(quant.quant_modules(model))  # the original stays float
    with pytest.raises(ValueError, match="no module named"):
        analysis.quantize_group(model, ["blocks.9.mlp.fc1"], scheme)


def test_sensitivity_quantizes_one_group_at_a_time(data, monkeypatch):
    model = tiny(VIT)
    groups = analysis.layer_groups(model)
    quantized_in_eval = []

    def spy(m, x, y):  # which modules each evaluated model has quantized
        quantized_in_eval.append(
            sorted(
                [n for n, _ in quant.quant_modules(m)]
                + [n for n, a in m.named_modules() if isinstance(a, quant.QuantViTAttention)]
            )
        )
        return evaluate(m, x, y)

    monkeypatch.setattr(analysis, "evaluate", spy)
    splits = Splits(data)
    rows = analysis.sensitivity(
        model, splits, bits=[3], calibration="minmax", calib_images=32, val_images=30, log=lambda _: None
    )
    assert [r["group"] for r in rows] == [*groups, "all"]
    assert quantized_in_eval[0] == []  # the FP32 reference
    for row, names in zip(rows, quantized_in_eval[1:]):
        expected = groups.get(row["group"]) or [n for g in groups.values() for n in g]
        assert names == sorted(expected), row["group"]
        assert (row["w_bits"], row["a_bits"]) == (3, 3)
        assert row["fp32_top1"] == pytest.approx(evaluate(model, splits.x["val"][:30], splits.y["val"][:30]))
        assert row["drop"] == pytest.approx(row["fp32_top1"] - row["top1"])
    assert rows[-1]["modules"] == sum(len(n) for n in groups.values())


def test_sensitivity_group_selection(data):
    rows = analysis.sensitivity(
        tiny(RESNET),
        Splits(data),
        bits=[4, 2],
        groups=["head", "qkv", "stage4"],
        calibration="minmax",
        calib_images=16,
        val_images=8,
        log=lambda _: None,
    )
    # a group this model lacks (qkv) is skipped, not an error: configs mix CNNs and ViTs
    assert [(r["w_bits"], r["group"]) for r in rows] == [
        (4, "stage4"),
        (4, "head"),
        (4, "all"),
        (2, "stage4"),
        (2, "head"),
        (2, "all"),
    ]


def test_unknown_group_names_are_rejected_clearly(data):
    with pytest.raises(ValueError, match=r"unknown module group.*'stage0'.*'attn'.*analysis.sensitivity_groups"):
        analysis.sensitivity(tiny(RESNET), Splits(data), bits=[4], groups=["head", "stage0", "attn"])
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    config["analysis"] = {"sensitivity_groups": ["attn"]}
    with pytest.raises(Exception, match="attn"):
        validate(config, str(SCHEMA_PATH))


def test_schema_defaults_and_group_names_agree_with_the_code():
    schema = str(SCHEMA_PATH)
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    config.pop("analysis")
    validate(config, schema)
    assert config["analysis"] == {
        "sensitivity_bits": [4, 2],
        "sensitivity_groups": None,
        "val_images": None,
        "variation_images": 256,
    }
    names = [
        "stem",
        "stage1",
        "stage12",
        "qkv",
        "attention_map",
        "attn_proj",
        "fc1",
        "fc2",
        "patch_merging",
        "other",
        "head",
    ]
    config["analysis"] = {"sensitivity_groups": names}
    validate(config, schema)
    analysis.check_group_names(names)


def test_tensor_stats_by_hand():
    x = torch.tensor([[1.0, -1.0], [3.0, -3.0]])
    stats = analysis.tensor_stats(x, channel_dim=0)
    # per-channel max |x| = [1, 3]: std 1 / mean 2; mean 0, var (1+1+9+9)/4 = 5, m4 (1+1+81+81)/4 = 41
    assert stats == pytest.approx(
        {"range_min": -3.0, "range_max": 3.0, "channel_cv": 0.5, "kurtosis": 41 / 25, "outlier_ratio": 0.0}
    )
    assert analysis.tensor_stats(x, channel_dim=1)["channel_cv"] == 0.0  # both columns reach 3
    spike = torch.zeros(1, 100)
    spike[0, 7] = 10.0  # mean 0.1, std 0.995: only the spike is beyond 3 std
    assert analysis.tensor_stats(spike, channel_dim=0)["outlier_ratio"] == pytest.approx(0.01)


def test_tensor_stats_of_a_normal_sample():
    x = torch.randn(8, 50_000, generator=torch.Generator().manual_seed(0))
    stats = analysis.tensor_stats(x, channel_dim=0)
    assert stats["kurtosis"] == pytest.approx(3.0, abs=0.05)  # Pearson kurtosis, not excess
    assert stats["outlier_ratio"] == pytest.approx(0.0027, abs=0.0006)  # P(|z| > 3)
    assert stats["channel_cv"] < 0.05


def test_tensor_stats_of_a_constant_tensor_are_undefined_not_errors():
    stats = analysis.tensor_stats(torch.zeros(4, 3), channel_dim=0)
    assert stats["kurtosis"] is None and stats["channel_cv"] is None and stats["outlier_ratio"] == 0.0


def test_variation_describes_what_the_quantizers_see():
    model = tiny(VIT)
    images = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    head_inputs = []
    rows = {(r["layer"], r["kind"]): r for r in analysis.variation(model, images)}
    model.head.register_forward_pre_hook(lambda _, args: head_inputs.append(args[0]))
    model(images)
    layers = [name for name, _ in quant.quantizable_layers(model)]
    attention = [f"blocks.0.attn.{t}" for t in ("q", "k", "v", "softmax")]
    assert set(rows) == {(n, k) for n in layers for k in ("weight", "activation")} | {
        (n, "activation") for n in attention
    }
    assert rows["head", "weight"] == {
        "layer": "head",
        "group": "head",
        "kind": "weight",
        **analysis.tensor_stats(model.head.weight, 0),
    }
    # approx: the probe runs timm's unfused attention path, the float model its fused kernel
    head_input = rows["head", "activation"]
    assert (head_input["group"], head_input["kind"]) == ("head", "activation")
    assert {k: head_input[k] for k in analysis.STAT_COLUMNS} == pytest.approx(
        analysis.tensor_stats(head_inputs[0], -1), rel=1e-6
    )
    assert rows["blocks.0.attn.softmax", "activation"]["group"] == "attention_map"
    assert (
        0.0
        <= rows["blocks.0.attn.softmax", "activation"]["range_min"]
        <= rows["blocks.0.attn.softmax", "activation"]["range_max"]
        <= 1.0
    )
    assert not list(quant.quant_modules(model))


def test_stages_write_json_and_the_tables_have_the_agreed_columns(data, tmp_path):
    files = {"sensitivity": [], "variation": []}
    for name, arch_kwargs, family in (("vit", VIT, "vit"), ("cnn", RESNET, "cnn")):
        checkpoint = tmp_path / name / "model.pt"
        checkpoint.parent.mkdir()
        stages.save_checkpoint(
            checkpoint,
            tiny(arch_kwargs),
            arch=arch_kwargs[0],
            kwargs=arch_kwargs[1],
            num_classes=10,
            image_shape=(1, 28, 28),
            scheme=None,
        )
        identity = {"model": name, "family": family, "arch": arch_kwargs[0], "kwargs": arch_kwargs[1]}
        for kind in files:
            files[kind].append(str(tmp_path / name / f"{kind}.json"))
        analysis.analyse_sensitivity(
            data=str(data),
            fp32_checkpoint=str(checkpoint),
            identity=identity,
            seed=0,
            bits=[4],
            groups=["stem", "head"],
            quant_options={"weight_per_channel": True},
            calibration="minmax",
            calib_images=16,
            val_images=10,
            output=files["sensitivity"][-1],
            provenance=PROVENANCE,
            log=lambda _: None,
        )
        analysis.analyse_variation(
            data=str(data),
            fp32_checkpoint=str(checkpoint),
            identity=identity,
            seed=0,
            images=8,
            output=files["variation"][-1],
            provenance=PROVENANCE,
            log=lambda _: None,
        )
    sensitivity = analysis.sensitivity_table(files["sensitivity"])
    assert list(sensitivity.columns) == [
        "model",
        "family",
        "seed",
        "group",
        "w_bits",
        "a_bits",
        "top1",
        "fp32_top1",
        "drop",
        "config_hash",
        "git_commit",
        "git_dirty",
    ]
    assert set(sensitivity.config_hash) == {PROVENANCE["config_hash"]}
    assert list(sensitivity["model"]) == ["cnn"] * 3 + ["vit"] * 3
    assert list(sensitivity["group"]) == ["stem", "head", "all"] * 2
    variation = analysis.variation_table(files["variation"])
    assert list(variation.columns) == [
        "model",
        "family",
        "seed",
        "layer",
        "group",
        "kind",
        "range_min",
        "range_max",
        "channel_cv",
        "kurtosis",
        "outlier_ratio",
        "config_hash",
        "git_commit",
        "git_dirty",
    ]
    assert set(variation.git_commit) == {PROVENANCE["git_commit"]}
    summary = analysis.variation_summary(variation)
    assert list(summary[["family", "kind", "scope"]].itertuples(index=False, name=None)) == [
        ("cnn", "activation", "layers"),
        ("cnn", "weight", "layers"),
        ("vit", "activation", "attention_map"),
        ("vit", "activation", "layers"),
        ("vit", "weight", "layers"),
    ]
    vit_weights = variation[(variation["family"] == "vit") & (variation["kind"] == "weight")]
    assert summary.iloc[-1]["tensors"] == len(vit_weights)
    assert summary.iloc[-1]["kurtosis"] == pytest.approx(vit_weights["kurtosis"].mean())


def test_analysis_refuses_a_quantized_checkpoint(data, tmp_path):
    model = quant.quantize_model(tiny(VIT), quant.QuantScheme(4, 4))
    stages.save_checkpoint(
        tmp_path / "model.pt",
        model,
        arch=VIT[0],
        kwargs=VIT[1],
        num_classes=10,
        image_shape=(1, 28, 28),
        scheme=quant.QuantScheme(4, 4),
    )
    with pytest.raises(ValueError, match="FP32 model"):
        analysis.analyse_variation(
            data=str(data),
            fp32_checkpoint=str(tmp_path / "model.pt"),
            identity={},
            seed=0,
            images=4,
            output=str(tmp_path / "v.json"),
        )
