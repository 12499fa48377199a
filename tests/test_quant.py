"""Tests of the LSQ quantizer, layer wrapping, calibration, export mode and size accounting."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qatstudy.quant import (
    LSQQuantizer,
    QuantConv2d,
    QuantLinear,
    QuantScheme,
    calibrate,
    export_mode,
    init_asymmetric_range,
    init_step_size,
    integer_range,
    model_size_bytes,
    quant_modules,
    quantize_model,
    quantizers,
    reestimate_batchnorm,
)

BITS = list(range(2, 9))


def _tiny_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 5),
    )


def _batches(n: int = 3, seed: int = 0, shape=(4, 1, 8, 8)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def _calibrated_cnn(scheme: QuantScheme, seed: int = 0, method: str = "mse") -> nn.Module:
    torch.manual_seed(seed)
    model = quantize_model(_tiny_cnn(), scheme)
    calibrate(model, _batches(seed=seed), method=method)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# 1. forward pass equals PyTorch's reference fake quantization


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("signed", [True, False])
def test_per_tensor_forward_matches_torch_fake_quantize(bits, signed):
    qmin, qmax = integer_range(bits, signed)
    g = torch.Generator().manual_seed(bits + 100 * signed)
    # many step sizes and a small tensor (a large LSQ gradient scale), values beyond both limits
    for step in (torch.rand(40, generator=g) * 0.5 + 0.01).tolist():
        q = LSQQuantizer(bits, signed=signed)
        q.init_step(torch.tensor(step))
        assert (q.qmin, q.qmax) == (qmin, qmax)
        step = q.step.item()  # the float32 value
        x = (torch.rand(64, generator=g) * 2 - 1) * 3 * step * 2 ** (bits - 1)
        x[:2] = torch.tensor([(qmin - 3) * step, (qmax + 3) * step])
        ref = torch.fake_quantize_per_tensor_affine(x, step, 0, qmin, qmax)
        torch.testing.assert_close(q(x), ref, rtol=0, atol=0, msg=lambda m, s=step: f"step {s}: {m}")


@pytest.mark.parametrize("bits", BITS)
def test_per_channel_forward_matches_torch_fake_quantize(bits):
    channels = 64
    g = torch.Generator().manual_seed(100 + bits)
    steps = torch.rand(channels, generator=g) * 0.5 + 0.01
    q = LSQQuantizer(bits, signed=True, channel_axis=0, num_channels=channels)
    q.init_step(steps)
    qmin, qmax = integer_range(bits, True)
    s = steps.reshape(-1, 1, 1, 1)
    w = (torch.rand(channels, 3, 3, 3, generator=g) * 2 - 1) * 3 * s * 2 ** (bits - 1)
    assert (w < qmin * s).any() and (w > qmax * s).any()
    ref = torch.fake_quantize_per_channel_affine(w, steps, torch.zeros(channels, dtype=torch.int32), 0, qmin, qmax)
    torch.testing.assert_close(q(w), ref, rtol=0, atol=0)


def test_rounding_is_half_to_even_with_identity_gradient_inside_the_range():
    """As ONNX QuantizeLinear rounds; and values on the clamp bounds still pass their gradient."""
    q = LSQQuantizer(8, signed=True)
    q.init_step(torch.tensor(1.0))
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, -128.0, 127.0], requires_grad=True)
    y = q(x)
    assert torch.equal(y, torch.tensor([0.0, 2.0, 2.0, -0.0, -2.0, -128.0, 127.0]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_integer_range():
    assert integer_range(2, True) == (-2, 1)
    assert integer_range(2, False) == (0, 3)
    assert integer_range(4, True) == (-8, 7)
    assert integer_range(8, True) == (-128, 127)
    assert integer_range(8, False) == (0, 255)


@pytest.mark.parametrize("bits", [1, 9])
def test_bit_width_out_of_range(bits):
    with pytest.raises(ValueError):
        LSQQuantizer(bits)


# ---------------------------------------------------------------------------------------------
# 2. gradients follow LSQ


def _lsq_expected_grads(x, step, qmin, qmax, upstream, g_scale):
    """Reference per-element LSQ gradients (Esser et al. 2020, eq. 3) and the input gradient."""
    v = x / step
    inside = (v >= qmin) & (v <= qmax)
    d_step = torch.where(
        v < qmin, torch.full_like(v, qmin), torch.where(v > qmax, torch.full_like(v, qmax), torch.round(v) - v)
    )
    d_x = inside.to(x.dtype)
    return upstream * d_x, upstream * d_step * g_scale


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_per_tensor_gradients_follow_lsq(bits, signed):
    step = 0.05
    q = LSQQuantizer(bits, signed=signed)
    q.init_step(torch.tensor(step))
    qmin, qmax = integer_range(bits, signed)
    g = torch.Generator().manual_seed(bits + 10 * signed)
    x = ((torch.rand(6, 50, generator=g) * 2 - 1) * 2 * step * 2 ** (bits - 1)).requires_grad_()
    upstream = torch.randn(6, 50, generator=g)
    (q(x) * upstream).sum().backward()

    g_scale = 1.0 / math.sqrt(x.numel() * qmax)
    exp_dx, exp_ds = _lsq_expected_grads(x.detach(), torch.tensor(step), qmin, qmax, upstream, g_scale)
    v = x.detach() / step
    assert ((v < qmin) | (v > qmax)).any() and ((v > qmin) & (v < qmax)).any()
    torch.testing.assert_close(x.grad, exp_dx, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(q.step.grad, exp_ds.sum().reshape(1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bits", [3, 8])
def test_per_channel_gradients_follow_lsq(bits):
    channels = 4
    g = torch.Generator().manual_seed(bits)
    steps = torch.tensor([0.02, 0.05, 0.1, 0.3])
    q = LSQQuantizer(bits, signed=True, channel_axis=0, num_channels=channels)
    q.init_step(steps)
    qmin, qmax = integer_range(bits, True)
    s = steps.reshape(-1, 1, 1)
    w = ((torch.rand(channels, 6, 7, generator=g) * 2 - 1) * 2 * s * 2 ** (bits - 1)).requires_grad_()
    upstream = torch.randn(channels, 6, 7, generator=g)
    (q(w) * upstream).sum().backward()

    per_step = w.numel() // channels
    g_scale = 1.0 / math.sqrt(per_step * qmax)
    exp_dw, exp_ds = _lsq_expected_grads(w.detach(), s, qmin, qmax, upstream, g_scale)
    torch.testing.assert_close(w.grad, exp_dw, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(q.step.grad, exp_ds.sum(dim=(1, 2)), rtol=1e-4, atol=1e-6)


def test_per_channel_gradient_uses_per_channel_count_not_total():
    """Guard against using the whole tensor's numel: that would shrink the step gradient."""
    q = LSQQuantizer(4, signed=True, channel_axis=0, num_channels=2)
    q.init_step(torch.tensor([1.0, 1.0]))
    w = torch.full((2, 8), 100.0, requires_grad=True)  # all clipped to qmax = 7
    q(w).sum().backward()
    expected = 8 * 7 / math.sqrt(8 * 7)
    torch.testing.assert_close(q.step.grad, torch.full((2,), expected))


# ---------------------------------------------------------------------------------------------
# 3. export mode computes the same function


@pytest.mark.parametrize("bits", [8, 3])
def test_export_mode_matches_training_forward(bits):
    model = _calibrated_cnn(QuantScheme(bits, bits))
    assert any(not q.signed for _, q in quantizers(model))  # the unsigned Q/DQ path is covered
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(7)) * 1.5
    with torch.no_grad():
        ref = model(x)
        with export_mode(model) as m:
            assert m is model
            assert all(q.export_mode for _, q in quantizers(model))
            out = model(x)
    assert torch.equal(out, ref), (out - ref).abs().max()
    assert not any(q.export_mode for _, q in quantizers(model))


@pytest.mark.parametrize("bits", [2, 5, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_export_forward_single_quantizer(bits, signed):
    g = torch.Generator().manual_seed(bits)
    q = LSQQuantizer(bits, signed=signed)
    q.init_step(torch.tensor(0.0731))
    x = torch.randn(3000, generator=g) * 0.0731 * 2**bits
    ref = q(x)
    q.export_mode = True
    assert torch.equal(q(x), ref)

    qc = LSQQuantizer(bits, signed=True, channel_axis=0, num_channels=3)
    qc.init_step(torch.tensor([0.01, 0.2, 0.7]))
    w = torch.randn(3, 40, generator=g) * 2**bits * 0.2
    ref = qc(w)
    qc.export_mode = True
    assert torch.equal(qc(w), ref)


def test_a_step_pushed_below_zero_quantizes_and_exports_as_its_magnitude():
    """Adam can move a small 8-bit step through zero; the quantizer must keep meaning |step|."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(3, 40, generator=g)
    positive = LSQQuantizer(8, signed=True, channel_axis=0, num_channels=3)
    positive.init_step(torch.tensor([0.01, 0.02, 0.03]))
    flipped = LSQQuantizer(8, signed=True, channel_axis=0, num_channels=3)
    flipped.init_step(torch.tensor([0.01, 0.02, 0.03]))
    with torch.no_grad():
        flipped.step.mul_(torch.tensor([-1.0, 1.0, -1.0]))
    ref = positive(w)
    assert torch.equal(flipped(w), ref)
    assert torch.equal(flipped.to_integer(w), positive.to_integer(w))
    flipped.export_mode = True
    assert torch.equal(flipped(w), ref)


def test_export_mode_restored_after_exception():
    model = _calibrated_cnn(QuantScheme(4, 4))
    with pytest.raises(KeyError):
        with export_mode(model):
            raise KeyError("boom")
    assert not any(q.export_mode for _, q in quantizers(model))


# ---------------------------------------------------------------------------------------------
# 4. wrapping


def _count_layers(model):
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


def _check_wrapped(make_model):
    torch.manual_seed(0)
    fp32 = make_model()
    n_layers = _count_layers(fp32)
    assert n_layers > 0
    fp32_state = fp32.state_dict()

    torch.manual_seed(1)
    model = make_model()
    assert quantize_model(model, QuantScheme(4, 8)) is model
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert type(m) is QuantConv2d
        if isinstance(m, nn.Linear):
            assert type(m) is QuantLinear
    assert len(list(quant_modules(model))) == n_layers
    assert len(list(quantizers(model))) == 2 * n_layers
    for _, m in quant_modules(model):
        assert m.weight_quantizer.bits == 4 and m.weight_quantizer.channel_axis == 0
        assert m.weight_quantizer.step.numel() == m.weight.shape[0]
        assert m.input_quantizer.bits == 8 and m.input_quantizer.channel_axis is None

    keys = set(model.state_dict())
    assert set(fp32_state) <= keys
    result = model.load_state_dict(fp32_state, strict=False)
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if k in fp32_state]
    assert all(("quantizer" in k) for k in result.missing_keys)
    for k, v in fp32_state.items():
        assert torch.equal(model.state_dict()[k], v), k
    return model


def test_quantize_model_hand_built():
    _check_wrapped(_tiny_cnn)


def test_quantize_model_timm_resnet():
    timm = pytest.importorskip("timm")
    model = _check_wrapped(lambda: timm.create_model("resnet10t", num_classes=10, in_chans=1))
    calibrate(model, [torch.randn(2, 1, 32, 32)], method="minmax")
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_quantize_model_without_layers_raises():
    with pytest.raises(ValueError):
        quantize_model(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3)), QuantScheme(4, 4))


def test_wrapped_layer_computes_quantized_conv():
    torch.manual_seed(0)
    model = quantize_model(nn.Sequential(nn.Conv2d(2, 3, 3)), QuantScheme(4, 4))
    calibrate(model, [torch.randn(2, 2, 6, 6)], method="minmax")
    conv = model[0]
    x = torch.randn(2, 2, 6, 6)
    expected = nn.functional.conv2d(conv.input_quantizer(x), conv.weight_quantizer(conv.weight), conv.bias)
    assert torch.equal(model(x), expected)
    assert not torch.equal(model(x), nn.functional.conv2d(x, conv.weight, conv.bias))


# ---------------------------------------------------------------------------------------------
# 5. calibration


def _relu_model():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_calibrate_initialises_all_and_picks_signedness(method):
    torch.manual_seed(0)
    model = quantize_model(_tiny_cnn(), QuantScheme(4, 4))
    model.train()
    batches = _batches(n=2)
    assert calibrate(model, batches, method=method) == 8
    assert model.training  # mode restored
    for name, q in quantizers(model):
        assert bool(q.initialized), name
        assert (q.step > 0).all(), name
    layers = dict(quant_modules(model))
    assert layers["0"].input_quantizer.signed  # raw normal input has negatives
    assert not layers["3"].input_quantizer.signed  # after ReLU
    assert layers["7"].input_quantizer.signed is False  # after ReLU + average pool: non-negative
    # weight quantizers stay signed, and input quantizers are back in place (no leftover hooks)
    for _, m in quant_modules(model):
        assert m.weight_quantizer.signed
        assert isinstance(m.input_quantizer, LSQQuantizer)
        assert not m._forward_pre_hooks


def test_calibrate_minmax_steps():
    torch.manual_seed(0)
    model = quantize_model(_relu_model(), QuantScheme(8, 8))
    x = torch.randn(32, 8)
    calibrate(model, [x], method="minmax")
    first, second = model[0], model[2]
    torch.testing.assert_close(first.input_quantizer.step, x.abs().max().reshape(1) / 127)
    torch.testing.assert_close(first.weight_quantizer.step, first.weight.detach().abs().amax(dim=1) / 127)
    assert not second.input_quantizer.signed


def test_calibrate_observes_float_activations():
    """calibrate's docstring: activation ranges are observed on the float model, all quantizers bypassed."""
    torch.manual_seed(0)
    model = quantize_model(_relu_model(), QuantScheme(2, 8))
    x = torch.randn(64, 8)
    with torch.no_grad():
        float_hidden = torch.relu(nn.functional.linear(x, model[0].weight, model[0].bias))
    calibrate(model, [x], method="minmax")
    expected = float_hidden.max().reshape(1) / 255  # unsigned 8-bit
    torch.testing.assert_close(model[2].input_quantizer.step, expected)


def _quant_error(x, step, bits, signed):
    qmin, qmax = integer_range(bits, signed)
    return ((torch.clamp(torch.round(x / step), qmin, qmax) * step - x) ** 2).mean()


def test_mse_beats_minmax_on_heavy_tailed_tensor():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(20000, generator=g) - 0.5
    x = -torch.sign(u) * torch.log1p(-2 * u.abs())  # Laplace(0, 1)
    x[:4] = torch.tensor([20.0, -18.0, 25.0, -22.0])  # outliers
    rows = x[None, :]
    s_minmax = init_step_size(rows, 4, True, "minmax")
    s_mse = init_step_size(rows, 4, True, "mse")
    torch.testing.assert_close(s_minmax, torch.tensor([25.0 / 7]))
    e_minmax = _quant_error(x, s_minmax, 4, True)
    e_mse = _quant_error(x, s_mse, 4, True)
    assert s_mse < s_minmax
    assert e_mse < 0.5 * e_minmax
    assert e_mse <= _quant_error(x, init_step_size(rows, 4, True, "percentile"), 4, True)

    # Student-t with 3 degrees of freedom: no planted outliers, mse still wins
    normal = torch.randn(20000, generator=g)
    chi2 = torch.randn(20000, 3, generator=g).pow(2).sum(1)
    t = (normal / torch.sqrt(chi2 / 3))[None, :]
    assert _quant_error(t, init_step_size(t, 4, True, "mse"), 4, True) < _quant_error(
        t, init_step_size(t, 4, True, "minmax"), 4, True
    )


def test_mse_beats_minmax_through_calibrate():
    torch.manual_seed(1)
    x = torch.distributions.Laplace(0.0, 1.0).sample((256, 8))
    x[0, 0] = 50.0
    errors = {}
    for method in ("minmax", "mse"):
        torch.manual_seed(0)
        model = quantize_model(nn.Sequential(nn.Linear(8, 4)), QuantScheme(4, 4))
        calibrate(model, [x], method=method)
        q = model[0].input_quantizer
        errors[method] = ((q(x) - x) ** 2).mean().item()
    assert errors["mse"] < errors["minmax"]


def test_init_step_size_per_row():
    x = torch.tensor([[1.0, -2.0, 0.5], [0.1, 0.2, -0.3]])
    torch.testing.assert_close(init_step_size(x, 3, True, "minmax"), torch.tensor([2.0 / 3, 0.3 / 3]))
    torch.testing.assert_close(init_step_size(x.abs(), 3, False, "minmax"), torch.tensor([2.0 / 7, 0.3 / 7]))
    assert init_step_size(x, 3, True, "mse").shape == (2,)


def test_unknown_method_raises():
    model = quantize_model(_relu_model(), QuantScheme(4, 4))
    with pytest.raises(ValueError, match="calibration method"):
        calibrate(model, [torch.randn(2, 8)], method="kl")
    with pytest.raises(ValueError):
        init_step_size(torch.randn(2, 5), 4, True, "entropy")


def test_calibrate_zero_batches_raises():
    model = quantize_model(_relu_model(), QuantScheme(4, 4))
    with pytest.raises(ValueError):
        calibrate(model, [], method="minmax")
    with pytest.raises(ValueError):
        calibrate(model, iter(()), method="minmax")
    for _, m in quant_modules(model):
        assert isinstance(m.input_quantizer, LSQQuantizer)
        assert not m._forward_pre_hooks


def test_quantizer_before_calibration_raises():
    model = quantize_model(_relu_model(), QuantScheme(4, 4))
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 8))
    with pytest.raises(RuntimeError):
        LSQQuantizer(4)(torch.randn(3))


# ---------------------------------------------------------------------------------------------
# 6. model size


def test_model_size_bytes_exact_tiny_model():
    # Conv2d(1,4,3): weight 36, bias 4. BatchNorm2d(4): weight, bias, running mean/var 4 each
    # (num_batches_tracked is an integer). Linear(4,3): weight 12, bias 3.
    def make():
        return nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
        )

    fp32_floats = 36 + 4 + 4 * 4 + 12 + 3
    assert model_size_bytes(make()) == {"fp32_bytes": fp32_floats * 4, "packed_bytes": fp32_floats * 4}

    for w_bits, expected_packed_bits in [
        # quantized weights + (4 + 3 weight steps + 2 activation steps) * 32 + other floats * 32
        (4, (36 + 12) * 4 + (4 + 3 + 2) * 32 + (4 + 16 + 3) * 32),
        (3, (36 + 12) * 3 + (4 + 3 + 2) * 32 + (4 + 16 + 3) * 32),
    ]:
        model = quantize_model(make(), QuantScheme(w_bits, 8))
        sizes = model_size_bytes(model)
        assert sizes["fp32_bytes"] == fp32_floats * 4  # step sizes are not part of the FP32 model
        assert sizes["packed_bytes"] == math.ceil(expected_packed_bits / 8)
    assert model_size_bytes(quantize_model(make(), QuantScheme(4, 8)))["packed_bytes"] == 152


def test_model_size_weight_part_is_one_eighth_at_4_bits():
    model = quantize_model(nn.Sequential(nn.Linear(256, 256, bias=False)), QuantScheme(4, 4))
    sizes = model_size_bytes(model)
    assert sizes["fp32_bytes"] == 256 * 256 * 4
    assert sizes["packed_bytes"] == 256 * 256 // 2 + (256 + 1) * 4
    assert sizes["packed_bytes"] - (256 + 1) * 4 == sizes["fp32_bytes"] // 8


# ---------------------------------------------------------------------------------------------
# 7. checkpoint round trip


def test_checkpoint_round_trip(tmp_path):
    scheme = QuantScheme(3, 4)
    model = _calibrated_cnn(scheme, seed=0)
    signs = {n: q.signed for n, q in quantizers(model)}
    assert not all(signs.values())  # the fresh model below defaults to signed: must be restored
    path = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), path)

    torch.manual_seed(123)
    fresh = quantize_model(_tiny_cnn(), scheme).eval()
    assert all(q.signed for _, q in quantizers(fresh))
    fresh.load_state_dict(torch.load(path, weights_only=True))  # strict
    assert {n: q.signed for n, q in quantizers(fresh)} == signs
    assert {n: q.bits for n, q in quantizers(fresh)} == {n: q.bits for n, q in quantizers(model)}
    assert all(bool(q.initialized) for _, q in quantizers(fresh))

    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
        with export_mode(fresh):
            assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_step_size_initialisation_runs_on_the_data_device(method):
    # "meta" stands in for a GPU: a CPU search grid mixed into it fails as it would on CUDA
    rows = torch.empty(4, 10, device="meta")
    assert init_step_size(rows, 4, True, method).device.type == "meta"
    assert {t.device.type for t in init_asymmetric_range(rows, 4, method)} == {"meta"}


def test_reestimate_batchnorm_averages_the_quantized_statistics_and_restores_modes():
    model = _calibrated_cnn(QuantScheme(3, 3))
    model.train()
    bn = model[1]
    bn.momentum = 0.3
    batches = _batches(n=4, seed=5)
    with torch.no_grad():
        conv_out = torch.cat([model[0](x) for x in batches])  # the quantized conv's output feeds the norm
    assert reestimate_batchnorm(model, batches) == 1
    torch.testing.assert_close(bn.running_mean, conv_out.mean(dim=(0, 2, 3)))
    # cumulative average of each batch's unbiased variance, as torch computes it with momentum None
    per_batch = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in conv_out.split(4)])
    torch.testing.assert_close(bn.running_var, per_batch.mean(0))
    assert bn.momentum == 0.3 and model.training and all(m.training for m in model.modules())
    assert reestimate_batchnorm(quantize_model(nn.Sequential(nn.Linear(8, 4)), QuantScheme(4, 4)), []) == 0
    with pytest.raises(ValueError, match="at least one batch"):
        reestimate_batchnorm(model, [])


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_conv_on_data_input_gives_the_gradients_of_backprop_through_the_input(bits):
    """A first conv whose input needs no gradient takes its input step's gradient from a forward conv
    of the step's slope (the adjoint); output and every gradient must equal plain backprop's."""
    torch.manual_seed(bits)
    conv = quantize_model(nn.Sequential(nn.Conv2d(2, 6, 5, stride=2, padding=2)), QuantScheme(bits, bits))[0]
    x = torch.randn(3, 2, 12, 12) * 2
    calibrate(conv, [x], method="mse")
    upstream = torch.randn(3, 6, 6, 6)

    def gradients(x):
        conv.zero_grad()
        out = conv(x)
        (out * upstream).sum().backward()
        return out.detach(), {name: p.grad.clone() for name, p in conv.named_parameters()}

    assert (
        conv.input_quantizer.quantize_data(x) is not None
        and conv.input_quantizer.quantize_data(x.clone().requires_grad_()) is None
    )
    out, grads = gradients(x)
    reference_out, reference = gradients(x.clone().requires_grad_())  # plain backprop through the input
    assert torch.equal(out, reference_out)
    assert reference["input_quantizer.step"].abs().item() > 0
    for name in reference:
        torch.testing.assert_close(grads[name], reference[name], rtol=1e-4, atol=1e-6, msg=name)
