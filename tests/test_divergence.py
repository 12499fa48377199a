"""The divergence rule the training loop applies to every step's loss (qatstudy.divergence)."""

import math

import pytest

from qatstudy.divergence import DivergenceCheck, TrainingDiverged


def test_a_non_finite_loss_stops_naming_the_run_epoch_and_step():
    check = DivergenceCheck("resnet fp32")
    check(2.3, epoch=0, step=0, num_classes=10)
    with pytest.raises(TrainingDiverged, match=r"resnet fp32: training diverged at epoch 2, step 5: loss is nan"):
        check(math.nan, epoch=1, step=4, num_classes=10)


def test_a_loss_ten_times_the_first_or_chance_stops():
    check = DivergenceCheck("vit qat w4a4")
    check(0.3, epoch=0, step=0, num_classes=10)  # a trained model: the bound is 10 x ln(10), not 10 x 0.3
    check(20.0, epoch=0, step=1, num_classes=10)
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step 3: loss 7e\+10 exceeds 10 x"):
        check(7e10, epoch=0, step=2, num_classes=10)


def test_fp32_training_at_lr_1000_stops_naming_the_step_and_writes_nothing(tmp_path):
    import torch

    from helpers import make_tiny_dataset
    from qatstudy import stages

    torch.set_num_threads(1)
    data = make_tiny_dataset(tmp_path / "data")
    kwargs = {"embed_dim": 16, "depth": 1, "num_heads": 2}
    with pytest.raises(TrainingDiverged, match=r"tiny fp32: training diverged at epoch 1, step \d+"):
        stages.train_fp32(
            data=str(data),
            arch="vit_convstem_tiny",
            kwargs=kwargs,
            identity={"model": "tiny", "family": "vit", "arch": "vit_convstem_tiny", "kwargs": kwargs},
            settings=stages.TrainSettings(epochs=2, batch_size=32, lr=1000.0, weight_decay=0.01),
            seed=0,
            pretrained=False,
            checkpoint=str(tmp_path / "model.pt"),
            metrics=str(tmp_path / "metrics.json"),
            log=lambda _: None,
        )
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "metrics.json").exists()
