"""The stages end to end on a tiny ViT and a few dozen fake images: FP32 training (deterministic,
resumable), PTQ, QAT (frozen batch norm, checkpoint round trip), and freeze_batchnorm itself."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import make_tiny_dataset
from qatstudy import quant, stages
from qatstudy import train as train_module
from qatstudy.models import count_parameters

torch.set_num_threads(1)

ARCH = "vit_convstem_tiny"
KWARGS = {"embed_dim": 16, "depth": 1, "num_heads": 2}
IDENTITY = {"model": "tinyvit", "family": "vit", "arch": ARCH, "kwargs": KWARGS}
N_TRAIN, VAL, BATCH = 120, 20, 32
STEPS_PER_EPOCH = -(-(N_TRAIN - VAL) // BATCH)
TIMING = {"epoch_time_s", "images_per_s", "train_time_s", "calib_time_s"}
SCHEME = quant.QuantScheme(4, 4)


def settings(epochs: int = 1) -> stages.TrainSettings:
    return stages.TrainSettings(epochs=epochs, batch_size=BATCH, lr=3e-3, weight_decay=0.01)


def run_fp32(data: Path, folder: Path, *, epochs: int = 1, seed: int = 0, log=None) -> dict:
    return stages.train_fp32(
        data=str(data),
        arch=ARCH,
        kwargs=KWARGS,
        identity=IDENTITY,
        settings=settings(epochs),
        seed=seed,
        pretrained=False,
        checkpoint=str(folder / "model.pt"),
        metrics=str(folder / "metrics.json"),
        log=log or (lambda _: None),
    )


def run_qat(data: Path, fp32_ckpt: Path, folder: Path, *, epochs: int = 1, log=None) -> dict:
    return stages.qat(
        data=str(data),
        fp32_checkpoint=str(fp32_ckpt),
        scheme=SCHEME,
        identity=IDENTITY,
        settings=settings(epochs),
        calibration="mse",
        calib_images=64,
        seed=0,
        fp32_seed=0,
        checkpoint=str(folder / "model.pt"),
        metrics=str(folder / "metrics.json"),
        log=log or (lambda _: None),
    )


def without_timings(record: dict) -> dict:
    out = {k: v for k, v in record.items() if k not in TIMING}
    if "history" in out:
        out["history"] = [{k: v for k, v in h.items() if k not in TIMING} for h in out["history"]]
    return out


def state_dict(checkpoint: Path) -> dict:
    return torch.load(checkpoint, weights_only=False)["state_dict"]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def crash_in_epoch_2(monkeypatch) -> None:
    """Make training raise in the middle of the second epoch (after epoch 1 was saved)."""
    real_augment = train_module.augment
    calls = {"n": 0}

    def augment(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == STEPS_PER_EPOCH + 2:
            raise RuntimeError("simulated interruption")
        return real_augment(*args, **kwargs)

    monkeypatch.setattr(train_module, "augment", augment)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def fp32(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp32")
    record = run_fp32(data, folder)
    return folder, record


# ---------------------------------------------------------------------------------------------
# 1. FP32 training


def test_train_fp32_outputs(data, fp32):
    folder, record = fp32
    assert (folder / "model.pt").is_file()
    assert not (folder / "model.resume").exists()
    assert json.loads((folder / "metrics.json").read_text()) == json.loads(json.dumps(record))
    for key in ("val_top1", "test_top1", "params", "fp32_bytes", "packed_bytes", "history", "input_shape"):
        assert key in record, key
    assert {k: record[k] for k in IDENTITY} == IDENTITY
    assert (record["method"], record["w_bits"], record["a_bits"], record["seed"]) == ("fp32", 32, 32, 0)
    assert record["input_shape"] == [1, 28, 28]
    assert [h["epoch"] for h in record["history"]] == [1]
    assert {"train_loss", "val_top1"} <= set(record["history"][0])
    model, ckpt = stages.load_checkpoint(folder / "model.pt")
    assert ckpt["arch"] == ARCH and ckpt["kwargs"] == KWARGS and ckpt["scheme"] is None
    assert ckpt["num_classes"] == 10 and ckpt["image_shape"] == [1, 28, 28]
    assert record["params"] == count_parameters(model)
    float_buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    assert record["fp32_bytes"] == record["packed_bytes"] == 4 * (record["params"] + float_buffers)
    # the saved model is the one the metrics describe
    splits = stages.Splits(data)
    assert train_module.evaluate(model, splits.x["test"], splits.y["test"]) == record["test_top1"]
    assert train_module.evaluate(model, splits.x["val"], splits.y["val"]) == record["val_top1"]


def test_train_fp32_deterministic(data, fp32, tmp_path):
    folder, record = fp32
    again = run_fp32(data, tmp_path / "again")
    assert without_timings(again) == without_timings(record)
    assert_same_state(state_dict(tmp_path / "again" / "model.pt"), state_dict(folder / "model.pt"))
    other = run_fp32(data, tmp_path / "other", seed=1)  # and the seed matters
    assert not torch.equal(
        state_dict(tmp_path / "other" / "model.pt")["head.weight"], state_dict(folder / "model.pt")["head.weight"]
    )
    assert other["seed"] == 1


def test_qat_deterministic(data, fp32, tmp_path):
    """The same seed on the same CPU reproduces QAT exactly, as it does FP32 training (above)."""
    folder, _ = fp32
    first = run_qat(data, folder / "model.pt", tmp_path / "first")
    again = run_qat(data, folder / "model.pt", tmp_path / "again")
    assert again["test_top1"] == first["test_top1"] and again["val_top1"] == first["val_top1"]
    assert without_timings(again) == without_timings(first)
    assert_same_state(state_dict(tmp_path / "again" / "model.pt"), state_dict(tmp_path / "first" / "model.pt"))


def test_train_fp32_resumes_after_interruption(data, tmp_path, monkeypatch):
    whole = run_fp32(data, tmp_path / "whole", epochs=2)
    folder = tmp_path / "interrupted"
    with monkeypatch.context() as m:
        crash_in_epoch_2(m)
        with pytest.raises(RuntimeError, match="simulated"):
            run_fp32(data, folder, epochs=2)
    assert (folder / "model.resume").is_file()
    assert not (folder / "model.pt").exists() and not (folder / "metrics.json").exists()
    messages = []
    resumed = run_fp32(data, folder, epochs=2, log=messages.append)
    assert any("resumed" in msg and "after epoch 1" in msg for msg in messages), messages
    assert not any("epoch 1:" in msg for msg in messages)  # epoch 1 was not trained again
    assert without_timings(resumed) == without_timings(whole)
    assert_same_state(state_dict(folder / "model.pt"), state_dict(tmp_path / "whole" / "model.pt"))
    assert not (folder / "model.resume").exists()


def test_resume_file_with_other_settings_is_ignored(data, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    with monkeypatch.context() as m:
        crash_in_epoch_2(m)
        with pytest.raises(RuntimeError, match="simulated"):
            run_fp32(data, folder, epochs=2)
    messages = []
    record = run_fp32(data, folder, epochs=1, log=messages.append)  # other settings: starts afresh
    assert any("ignoring" in msg for msg in messages) and not any("resumed" in msg for msg in messages)
    assert [h["epoch"] for h in record["history"]] == [1]


# ---------------------------------------------------------------------------------------------
# 2. PTQ and QAT


def test_ptq_metrics(data, fp32, tmp_path):
    folder, fp32_record = fp32
    record = stages.ptq(
        data=str(data),
        fp32_checkpoint=str(folder / "model.pt"),
        scheme=SCHEME,
        identity=IDENTITY,
        calibration="mse",
        calib_images=64,
        seed=0,
        metrics=str(tmp_path / "metrics.json"),
        log=lambda _: None,
    )
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(record))
    assert (record["method"], record["w_bits"], record["a_bits"]) == ("ptq", 4, 4)
    assert record["calibration"] == "mse" and record["calib_images"] == 64
    assert record["params"] == fp32_record["params"]  # step sizes are not counted as parameters
    assert record["fp32_bytes"] == fp32_record["fp32_bytes"]
    assert record["packed_bytes"] < record["fp32_bytes"]
    assert 0 <= record["test_top1"] <= 100 and 0 <= record["val_top1"] <= 100
    assert list(tmp_path.iterdir()) == [tmp_path / "metrics.json"]  # PTQ writes no checkpoint


@pytest.mark.parametrize(
    "val_after, min_gain, kept", [(40.0, 0.0, False), (50.0, 0.0, True), (50.02, 0.1, False), (50.1, 0.1, True)]
)
def test_batchnorm_reestimation_is_kept_only_where_validation_gains_the_margin(
    data, fp32, monkeypatch, val_after, min_gain, kept
):
    folder, _ = fp32
    splits = stages.Splits(str(data))
    model = stages._quantized_from_fp32(
        str(folder / "model.pt"),
        SCHEME,
        splits,
        calibration="mse",
        calib_images=64,
        bn_reestimation=stages.BatchnormReestimation(),
        batch_size=BATCH,
        seed=0,
    )[0]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [bn.running_mean.clone() for bn in norms]
    val = iter([50.0, val_after])
    monkeypatch.setattr(stages, "evaluate", lambda *args: next(val))
    settings = stages.BatchnormReestimation(images=64, min_gain=min_gain)
    record = stages.reestimate_batchnorm_if_better(model, splits, settings, batch_size=BATCH, seed=0)
    assert record == {
        "reestimated": kept,
        "norms": len(norms),
        "images": 64,
        "min_gain": min_gain,
        "val_top1_before": 50.0,
        "val_top1_after": val_after,
    }
    assert len(norms) == 2  # the conv stem's
    changed = [not torch.equal(bn.running_mean, b) for bn, b in zip(norms, before)]
    assert all(changed) if kept else not any(changed)
    assert stages.reestimate_batchnorm_if_better(
        model, splits, stages.BatchnormReestimation(), batch_size=BATCH, seed=0
    ) == {"reestimated": False, "norms": 2}


def test_qat_checkpoint_round_trip_and_frozen_batchnorm(data, fp32, tmp_path, monkeypatch):
    folder, fp32_record = fp32
    saved = {}
    real_save = stages.save_checkpoint

    def capture(path, model, **kwargs):
        saved["model"] = model
        real_save(path, model, **kwargs)

    monkeypatch.setattr(stages, "save_checkpoint", capture)
    record = run_qat(data, folder / "model.pt", tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(record))
    assert (record["method"], record["w_bits"], record["a_bits"], record["seed"]) == ("qat", 4, 4, 0)
    assert record["params"] == fp32_record["params"] and record["fp32_bytes"] == fp32_record["fp32_bytes"]
    assert record["packed_bytes"] < record["fp32_bytes"]
    assert [h["epoch"] for h in record["history"]] == [1]
    assert not (tmp_path / "model.resume").exists()

    trained = saved["model"].eval()
    loaded, ckpt = stages.load_checkpoint(tmp_path / "model.pt")
    assert quant.QuantScheme(**ckpt["scheme"]) == SCHEME
    x = stages.Splits(data).x["test"]
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))
    for (name, q), (_, q2) in zip(quant.quantizers(loaded), quant.quantizers(trained)):
        assert bool(q.initialized) and q.signed == q2.signed and q.bits == 4, name
    splits = stages.Splits(data)
    assert train_module.evaluate(loaded, splits.x["test"], splits.y["test"]) == record["test_top1"]

    # batch-norm statistics stay at their FP32 values; weights did train
    fp32_state = state_dict(folder / "model.pt")
    qat_state = state_dict(tmp_path / "model.pt")
    bn_keys = [k for k in fp32_state if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert bn_keys
    for key in bn_keys:
        assert torch.equal(qat_state[key], fp32_state[key]), key
    assert not torch.equal(qat_state["head.weight"], fp32_state["head.weight"])


def test_quantizer_steps_train_at_their_own_learning_rate(data, tmp_path):
    model = stages.build(ARCH, KWARGS, num_classes=10, in_chans=1, scheme=SCHEME)
    splits = stages.Splits(data)
    # calibration decides each activation quantizer's zero point (unsigned: a larger qmax)
    stages.calibrate_on_training_split(model, splits, method="minmax", images=BATCH, batch_size=BATCH, seed=0)
    halved = dataclasses.replace(settings(), quantizer_lr_scale=0.5)
    lr_of = {
        id(p): (group.get("lr", halved.lr), group["weight_decay"])
        for group in train_module.param_groups(model, halved)
        for p in group["params"]
    }
    assert len(lr_of) == len(list(model.parameters()))
    for name, q in quant.quantizers(model):
        assert lr_of[id(q.step)] == (halved.lr * 0.5 / q.step_levels, 0.0), name
    assert {7, 15} <= {q.step_levels for _, q in quant.quantizers(model)}  # signed and unsigned among them
    assert lr_of[id(model.head.weight)] == (halved.lr, halved.weight_decay)

    frozen_steps = dataclasses.replace(settings(), quantizer_lr_scale=0.0)
    steps = {name: q.step.detach().clone() for name, q in quant.quantizers(model)}
    weight = model.head.weight.detach().clone()
    train_module.fit(model, splits, frozen_steps, seed=0, resume_path=tmp_path / "resume", log=lambda _: None)
    assert all(torch.equal(q.step, steps[name]) for name, q in quant.quantizers(model))
    assert not torch.equal(model.head.weight, weight)


def test_qat_does_not_resume_from_a_different_fp32_model(data, fp32, tmp_path, monkeypatch):
    folder, _ = fp32
    other_fp32 = tmp_path / "fp32_seed1"
    run_fp32(data, other_fp32, seed=1)
    start = tmp_path / "start.pt"  # the FP32 checkpoint QAT starts from, as Snakemake would replace it
    shutil.copy(folder / "model.pt", start)
    with monkeypatch.context() as m:
        crash_in_epoch_2(m)
        with pytest.raises(RuntimeError, match="simulated"):
            run_qat(data, start, tmp_path / "qat", epochs=2)
    shutil.copy(other_fp32 / "model.pt", start)  # FP32 retrained (e.g. after a config change)
    messages = []
    rerun = run_qat(data, start, tmp_path / "qat", epochs=2, log=messages.append)
    fresh = run_qat(data, other_fp32 / "model.pt", tmp_path / "fresh", epochs=2)
    assert not any("resumed" in msg for msg in messages), messages
    assert without_timings(rerun) == without_timings(fresh)


# ---------------------------------------------------------------------------------------------
# 3. freeze_batchnorm


def test_freeze_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 1, 6, 6))
    bn = model[1]
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    stages.freeze_batchnorm(model)
    assert model.train() is model
    assert model.training and model[0].training and not bn.training
    model(torch.randn(8, 1, 6, 6) * 5 + 3)
    for key, value in bn.state_dict().items():
        assert torch.equal(value, before[key]), key
    model.eval()
    assert not model.training and not bn.training
    model.train(True)
    assert model.training and not bn.training
    # gradients still reach the affine parameters
    model(torch.randn(4, 1, 6, 6)).sum().backward()
    assert bn.weight.grad is not None


def test_freeze_batchnorm_without_batchnorm_is_a_no_op():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    stages.freeze_batchnorm(model)
    model.train()
    assert all(m.training for m in model.modules())


def test_qat_with_distillation_regularizer_and_multicrop_records_oscillation(data, fp32, tmp_path):
    from qatstudy.stage_settings import QATSettings

    folder, _ = fp32
    objective = QATSettings(
        distill_weight=0.5, distill_temperature=2.0, crops=2, regularizer_weight=0.1, freeze_threshold=0.5
    )
    record = stages.qat(
        data=str(data),
        fp32_checkpoint=str(folder / "model.pt"),
        scheme=SCHEME,
        identity=IDENTITY,
        settings=settings(1),
        calibration="minmax",
        calib_images=64,
        seed=0,
        checkpoint=str(tmp_path / "model.pt"),
        metrics=str(tmp_path / "metrics.json"),
        objective=objective,
        log=lambda _: None,
    )
    assert record["objective"]["distill_weight"] == 0.5 and record["objective"]["crops"] == 2
    epoch = record["history"][0]
    assert 0.0 <= epoch["oscillating_share"] <= 1.0 and 0.0 <= epoch["frozen_share"] <= 1.0
    assert set(epoch["layers"]) == {
        name for name, _ in quant.quant_modules(stages.load_checkpoint(tmp_path / "model.pt")[0])
    }
    plain = run_qat(data, folder / "model.pt", tmp_path / "plain")
    assert plain["history"][0]["oscillating_share"] >= 0.0  # tracking is always on
    assert record["test_top1"] >= 0.0 and record != plain
