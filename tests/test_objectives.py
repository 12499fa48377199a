"""QAT additions: distillation, bin regularizer, oscillation tracking and freezing."""

import math

import pytest
import torch
from torch import nn

from qatstudy import quant
from qatstudy.objectives import QATObjective, bin_regularizer, distillation_loss
from qatstudy.quant.oscillation import OscillationTracker
from qatstudy.stage_settings import QATSettings


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


def _reference_binreg(weight: torch.Tensor, step: float, bits: int) -> float:
    """Huang et al.'s BinReg.dampening_loss (HuangOwen/Quantization-Variation, util_loss.py), for one per-tensor
    step, written out as in the reference code: in weight units."""
    qn, qp = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    w_fp_clip = torch.clamp(weight / step, qn, qp) * step
    w_q = torch.round(torch.clamp(weight / step, qn, qp)) * step
    loss = ((w_q - w_fp_clip) ** 2).mean()
    for quant_bin in range(qn, qp + 1):
        in_bin = w_fp_clip[torch.round(w_q / step) == quant_bin]
        if in_bin.numel() > 1:
            loss = loss + torch.var(in_bin)
    return float(loss)


def test_bin_regularizer_is_the_reference_formula_in_step_units():
    """Per-bin variance term included: for a per-tensor step s the study's term is the reference's divided by s^2."""
    torch.manual_seed(0)
    step, bits = 0.05, 3
    model = quant.quantize_model(
        nn.Sequential(nn.Linear(16, 8, bias=False)), quant.QuantScheme(bits, 8, weight_per_channel=False)
    )
    layer = model[0]
    layer.weight_quantizer.init_step(torch.tensor([step]))
    with torch.no_grad():
        layer.weight.copy_(torch.randn(8, 16) * 0.12)  # some weights clip at both ends of the 3-bit range
    expected = _reference_binreg(layer.weight.detach(), step, bits) / step**2
    assert bin_regularizer(model).item() == pytest.approx(expected, rel=1e-5)


def test_bin_regularizer_variance_term_alone_separates_spread_bins():
    """Two layouts with the same distances to their bin centres: weights spread to both sides of a centre (a
    variance) against weights all on one side (no variance)."""
    model = _quantized_linear(step=0.1)
    layer = model[0]
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.13, 0.07, 0.13, 0.07]] * 3))  # bin 1, at +-0.3 steps
    spread = bin_regularizer(model).item()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.13, 0.13, 0.13, 0.13]] * 3))
    one_sided = bin_regularizer(model).item()
    assert one_sided == pytest.approx(0.09, rel=1e-5)  # the squared distance alone
    assert spread == pytest.approx(0.09 + 0.09 * 12 / 11, rel=1e-5)  # + the unbiased variance of 12 values at +-0.3


def test_regularizer_weight_starts_after_a_quarter_and_follows_a_cosine():
    objective = QATObjective(_quantized_linear(), QATSettings(regularizer_weight=2.0))
    assert objective.regularizer_weight(0.0) == 0.0 and objective.regularizer_weight(0.25) == 0.0
    assert objective.regularizer_weight(0.625) == pytest.approx(1.0)
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
    expected = 0.5 * (0.5 * 0.5 + 0.5) + 0.5  # flips on the 2nd, 3rd and 4th updates, EMA with momentum 0.5
    for measure in ("weight", "integer"):  # the step never moved: both measures agree
        frequency = tracker.state["0"][f"{measure}_frequency"]
        assert frequency[0, 0].item() == pytest.approx(expected)
        assert frequency[0, 1].item() == 0.0 and frequency[1:].abs().sum() == 0
    assert tracker.summary()["0"]["oscillating"] == pytest.approx(1 / 12)


def test_step_size_jitter_flips_integers_but_is_not_weight_oscillation():
    """Weights that never move, on a step that shrinks and grows: every integer flips back and forth (Nagel et al.'s
    measure counts it), but no weight oscillates."""
    model = _quantized_linear(step=0.1)
    layer = model[0]
    with torch.no_grad():
        layer.weight.fill_(0.25)  # 2.5 steps of 0.1: a bin edge, where any step change moves the integer
    tracker = OscillationTracker(model, momentum=0.5, threshold=0.2)
    for step in (0.09, 0.11, 0.09, 0.11):  # integers 3, 2, 3, 2
        layer.weight_quantizer.init_step(torch.full((3,), step))
        tracker.update()
    summary = tracker.summary()["0"]
    assert summary["integer_flips"] == 1.0 and summary["oscillating"] == 0.0


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
    assert torch.equal(tracker.state["0"]["weight_frequency"], torch.full((3, 4), 0.5 * 0.5 + 0.5))
    assert tracker.summary()["0"] == {"oscillating": 1.0, "integer_flips": 1.0, "frozen": 0.0}
    assert "average" not in tracker.state["0"]  # kept only for freezing


def _oscillate(tracker, layer, values, progress: float = 0.5) -> None:
    for value in values:
        with torch.no_grad():
            layer.weight[0, 0] = value
        tracker.update(progress)


def test_freezing_holds_the_integer_not_the_latent_weight():
    """Nagel et al.: a frozen weight is its held integer (the rounded average) times the CURRENT step, and its
    latent weight gets no gradient."""
    model = _quantized_linear(step=0.1)
    layer = model[0]
    with torch.no_grad():
        layer.weight.zero_()
    tracker = OscillationTracker(model, momentum=0.5, threshold=0.2, freeze_threshold=0.4)
    _oscillate(tracker, layer, [0.1, 0.0, 0.1, 0.0, 0.1])
    state = tracker.state["0"]
    assert bool(state["frozen"][0, 0]) and tracker.summary()["0"]["frozen"] == pytest.approx(1 / 12)
    held = state["target"][0, 0].item()
    q = layer.weight_quantizer
    with torch.no_grad():
        layer.weight[0, 0] = 0.3  # the optimizer moves the latent weight: the forward pass does not see it
    w_hat = q(layer.weight)
    assert w_hat[0, 0].item() == pytest.approx(held * 0.1)
    q.init_step(torch.full((3,), 0.2))  # the step learns on: the held integer times the new step
    assert q(layer.weight)[0, 0].item() == pytest.approx(held * 0.2)
    layer.weight.grad = None
    q(layer.weight).sum().backward()
    assert layer.weight.grad[0, 0] == 0 and layer.weight.grad[0, 1] != 0
    assert q.step.grad[0] != 0  # the held integer still carries the step's gradient


def test_freezing_waits_a_quarter_of_training_and_skips_wide_layers():
    model = _quantized_linear(step=0.1)
    layer = model[0]
    with torch.no_grad():
        layer.weight.zero_()
    tracker = OscillationTracker(model, momentum=0.5, threshold=0.2, freeze_threshold=0.4)
    _oscillate(tracker, layer, [0.1, 0.0, 0.1, 0.0, 0.1], progress=0.2)
    assert not tracker.state["0"]["frozen"].any()
    wide = OscillationTracker(_quantized_linear(bits=8), freeze_threshold=0.4, freeze_max_bits=4)
    assert "frozen" not in wide.state["0"]


def test_written_held_integers_survive_release_and_a_checkpoint():
    model = _quantized_linear(step=0.1)
    layer = model[0]
    with torch.no_grad():
        layer.weight.zero_()
    tracker = OscillationTracker(model, momentum=0.5, threshold=0.2, freeze_threshold=0.4)
    _oscillate(tracker, layer, [0.1, 0.0, 0.1, 0.0, 0.1])
    with torch.no_grad():
        layer.weight[0, 0] = 0.33
    held = layer.weight_quantizer(layer.weight).detach()
    tracker.write_held()
    tracker.release()
    assert layer.weight_quantizer.held_mask is None
    assert torch.equal(layer.weight_quantizer(layer.weight).detach(), held)


def test_objective_loss_adds_distillation_and_regularizer():
    torch.manual_seed(0)
    student = _quantized_linear()
    teacher = nn.Sequential(nn.Linear(4, 3))
    x = torch.randn(5, 4)
    logits = student(x)
    label_loss = torch.nn.functional.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
    objective = QATObjective(
        student, QATSettings(distill_weight=0.25, distill_temperature=2.0, regularizer_weight=1.0), teacher=teacher
    )
    with torch.no_grad():
        expected = (
            0.75 * label_loss
            + 0.25 * distillation_loss(logits, teacher(x), 2.0)
            + objective.regularizer_weight(0.5) * bin_regularizer(student)
        )
    assert objective.loss(logits, label_loss, x, progress=0.5).item() == pytest.approx(expected.item(), rel=1e-5)
    assert math.isclose(
        objective.loss(logits, label_loss, x, progress=0.0).item(),
        (0.75 * label_loss + 0.25 * distillation_loss(logits, teacher(x), 2.0)).item(),
        rel_tol=1e-5,
    )
