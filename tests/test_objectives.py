"""QAT additions: distillation, bin regularizer, oscillation tracking and freezing."""

import math

import pytest
import torch
from torch import nn

from qatstudy import quant
from qatstudy.objectives import QATObjective, QATSettings, bin_regularizer, distillation_loss
from qatstudy.quant.oscillation import OscillationTracker


def _quantized_linear(bits: int = 4, step: float = 0.1) -> nn.Module:
    model = quant.quantize_model(nn.Sequential(nn.Linear(4, 3, bias=False)), quant.QuantScheme(bits, 8))
    layer = model[0]
    layer.weight_quantizer.init_step(torch.full((3,), step))
    layer.input_quantizer.init_step(torch.tensor([0.05]))
    return model


def test_distillation_loss_is_scaled_kl_and_zero_for_identical_logits():
    torch.manual_seed(0)
    student, teacher, t = torch.randn(8, 10), torch.randn(8, 10), 3.0
    p_teacher = torch.softmax(teacher / t, dim=1)
    manual = (p_teacher * (p_teacher.log() - torch.log_softmax(student / t, dim=1))).sum(dim=1).mean() * t**2
    assert distillation_loss(student, teacher, t).item() == pytest.approx(manual.item(), rel=1e-5)
    assert distillation_loss(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-6)


def test_distillation_gradient_moves_student_towards_teacher():
    teacher = torch.tensor([[4.0, 0.0, 0.0]])
    student = torch.zeros(1, 3, requires_grad=True)
    distillation_loss(student, teacher, 2.0).backward()
    assert student.grad[0, 0] < 0 < student.grad[0, 1]  # gradient descent raises the teacher's class


def test_bin_regularizer_is_zero_on_bin_centres_and_pulls_towards_them():
    model = _quantized_linear(step=0.1)
    layer = model[0]
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, -0.2, 0.3, 0.0]] * 3))
    assert bin_regularizer(model).item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        layer.weight[0, 0] = 0.14  # 1.4 steps: 0.4 of a step above the centre at 1
    bin_regularizer(model).backward()
    assert layer.weight.grad[0, 0] > 0  # descent moves it back down towards 0.1
    assert layer.weight_quantizer.step.grad is None  # the regularizer shapes weights, not steps


def test_regularizer_weight_follows_a_cosine_ramp():
    objective = QATObjective(_quantized_linear(), QATSettings(regularizer_weight=2.0))
    assert objective.regularizer_weight(0.0) == 0.0
    assert objective.regularizer_weight(0.5) == pytest.approx(1.0)
    assert objective.regularizer_weight(1.0) == pytest.approx(2.0)


def test_distillation_needs_a_teacher():
    with pytest.raises(ValueError, match="teacher"):
        QATObjective(_quantized_linear(), QATSettings(distill_weight=0.5))


def test_oscillation_tracker_counts_direction_flips_of_integer_weights():
    model = _quantized_linear(step=0.1)
    layer = model[0]
    with torch.no_grad():
        layer.weight.zero_()
    tracker = OscillationTracker(model, momentum=0.5, threshold=0.2)
    # weight [0, 0] goes up, down, up, down (integer 0 -> 1 -> 0 -> 1 -> 0); weight [0, 1] only rises
    for value, rising in [(0.1, 0.1), (0.0, 0.2), (0.1, 0.3), (0.0, 0.4)]:
        with torch.no_grad():
            layer.weight[0, 0], layer.weight[0, 1] = value, rising
        tracker.update()
    frequency = tracker.state["0"]["frequency"]
    expected = 0.5 * (0.5 * 0.5 + 0.5) + 0.5  # flips on the 2nd, 3rd and 4th updates, EMA with momentum 0.5
    assert frequency[0, 0].item() == pytest.approx(expected)
    assert frequency[0, 1].item() == 0.0 and frequency[1:].abs().sum() == 0
    assert tracker.summary()["0"]["oscillating"] == pytest.approx(1 / 12)


def test_oscillation_tracker_counts_full_range_flips_at_8_bits():
    """Integer weights are kept as small integers: a jump from -128 to 127 and back must still count."""
    model = _quantized_linear(bits=8, step=0.1)
    layer = model[0]
    with torch.no_grad():
        layer.weight.fill_(-12.8)  # every integer weight at qmin
    tracker = OscillationTracker(model, momentum=0.5, threshold=0.2)
    for value in (12.7, -12.8, 12.7):
        with torch.no_grad():
            layer.weight.fill_(value)
        tracker.update()
    assert torch.equal(tracker.state["0"]["frequency"], torch.full((3, 4), 0.5 * 0.5 + 0.5))
    assert tracker.summary()["0"] == {"oscillating": 1.0, "frozen": 0.0}
    assert "average" not in tracker.state["0"]  # kept only for freezing


def test_freezing_pins_oscillating_weights_to_their_average_integer():
    model = _quantized_linear(step=0.1)
    layer = model[0]
    with torch.no_grad():
        layer.weight.zero_()
    tracker = OscillationTracker(model, momentum=0.5, threshold=0.2, freeze_threshold=0.4)
    for value in [0.1, 0.0, 0.1, 0.0, 0.1]:
        with torch.no_grad():
            layer.weight[0, 0] = value
        tracker.update()
    assert bool(tracker.state["0"]["frozen"][0, 0]) and tracker.summary()["0"]["frozen"] == pytest.approx(1 / 12)
    pinned = layer.weight[0, 0].item()
    assert pinned == pytest.approx(round(tracker.state["0"]["average"][0, 0].item()) * 0.1)
    with torch.no_grad():
        layer.weight[0, 0] = 0.3  # an optimizer step tries to move it
    tracker.update()
    assert layer.weight[0, 0].item() == pytest.approx(pinned)


def test_objective_loss_adds_distillation_and_regularizer():
    torch.manual_seed(0)
    student = _quantized_linear()
    teacher = nn.Sequential(nn.Linear(4, 3))
    x = torch.randn(5, 4)
    logits = student(x)
    label_loss = torch.nn.functional.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
    objective = QATObjective(student, QATSettings(distill_weight=0.25, distill_temperature=2.0, regularizer_weight=1.0),
                             teacher=teacher)
    with torch.no_grad():
        expected = (0.75 * label_loss + 0.25 * distillation_loss(logits, teacher(x), 2.0)
                    + objective.regularizer_weight(0.5) * bin_regularizer(student))
    assert objective.loss(logits, label_loss, x, progress=0.5).item() == pytest.approx(expected.item(), rel=1e-5)
    assert math.isclose(objective.loss(logits, label_loss, x, progress=0.0).item(),
                        (0.75 * label_loss + 0.25 * distillation_loss(logits, teacher(x), 2.0)).item(), rel_tol=1e-5)
