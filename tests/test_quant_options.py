"""Quantizer options beyond the default: LSQ+ offset, per-tensor weights, module-dependent bits."""

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from helpers import export_quantized
from qatstudy import quant
from qatstudy.models import create_model
from qatstudy.quant import LSQQuantizer, QuantScheme


def _asymmetric(bits: int, step: float, offset: float) -> LSQQuantizer:
    q = LSQQuantizer(bits, asymmetric=True)
    q.init_step(torch.tensor([step]), torch.tensor([offset]))
    return q


@pytest.mark.parametrize("bits", range(2, 9))
def test_asymmetric_forward_matches_torch_affine_fake_quant(bits):
    torch.manual_seed(bits)
    x = torch.randn(4096) * 3 + 1
    step, zero_point = 0.37, 3
    q = _asymmetric(bits, step, -zero_point * step)  # LSQ+ offset beta = -z * s
    expected = torch.fake_quantize_per_tensor_affine(x, step, zero_point, 0, 2**bits - 1)
    assert torch.allclose(q(x), expected, atol=1e-6)
    assert not q.signed and q.qmin == 0 and q.qmax == 2**bits - 1


def test_asymmetric_offset_gradient_follows_lsq_plus():
    bits, step, offset = 3, 0.5, -1.0
    q = _asymmetric(bits, step, offset)
    x = torch.tensor([-3.0, -1.1, -0.2, 0.4, 1.3, 2.6, 5.0])
    q(x).sum().backward()
    lo, hi = offset, offset + (2**bits - 1) * step
    clipped = ((x < lo) | (x > hi)).float()
    g = 1.0 / math.sqrt(x.numel() * (2**bits - 1))
    # d x_hat / d beta is 0 inside the range (x_hat follows x) and 1 where clipped, times LSQ's scale
    assert q.offset.grad.item() == pytest.approx(clipped.sum().item() * g, rel=1e-5)


def test_asymmetric_quantizer_refuses_signed():
    q = LSQQuantizer(4, asymmetric=True)
    with pytest.raises(ValueError, match="unsigned"):
        q.signed = True


@pytest.mark.parametrize("method", quant.CALIBRATION_METHODS)
def test_asymmetric_init_covers_skewed_data_better_than_symmetric(method):
    torch.manual_seed(0)
    x = torch.nn.functional.gelu(torch.randn(1, 20000) * 2)  # post-GELU: skewed, min about -0.17
    step, offset = quant.init_asymmetric_range(x, 4, method)
    asym = _asymmetric(4, float(step), float(offset))
    sym = LSQQuantizer(4, signed=True)
    sym.init_step(quant.init_step_size(x, 4, True, method))
    with torch.no_grad():
        assert ((asym(x) - x) ** 2).mean() < ((sym(x) - x) ** 2).mean()
    if method == "minmax":
        assert float(offset) == pytest.approx(float(x.min())) and float(offset + 15 * step) == pytest.approx(
            float(x.max())
        )


def test_mse_asymmetric_init_beats_minmax_with_outliers():
    torch.manual_seed(1)
    x = torch.cat([torch.rand(1, 20000), torch.tensor([[25.0]])], dim=1)
    errors = {}
    for method in ("minmax", "mse"):
        step, offset = quant.init_asymmetric_range(x, 3, method)
        with torch.no_grad():
            errors[method] = float(((_asymmetric(3, float(step), float(offset))(x) - x) ** 2).mean())
    assert errors["mse"] < 0.5 * errors["minmax"]


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_mse_asymmetric_init_keeps_a_relu_floor_and_matches_unsigned(bits):
    # post-ReLU: 70% exact zeros and an exponential tail. The asymmetric family contains the unsigned symmetric
    # quantizer (offset 0), so its MSE init must do at least as well, and keep the floor at zero
    torch.manual_seed(bits)
    x = torch.where(torch.rand(1, 20000) < 0.7, 0.0, torch.empty(1, 20000).exponential_(2.0))
    step, offset = quant.init_asymmetric_range(x, bits, "mse")
    unsigned = LSQQuantizer(bits, signed=False)
    unsigned.init_step(quant.init_step_size(x, bits, False, "mse"))
    with torch.no_grad():
        asym_error = float(((_asymmetric(bits, float(step), float(offset))(x) - x) ** 2).mean())
        unsigned_error = float(((unsigned(x) - x) ** 2).mean())
    assert float(offset) == 0.0
    assert asym_error <= unsigned_error * 1.001


def _small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 16),
        nn.GELU(),
        nn.Linear(16, 10),
    )


def test_per_tensor_weights_have_one_step_and_match_torch():
    torch.manual_seed(0)
    model = quant.quantize_model(_small_cnn(), QuantScheme(4, 8, weight_per_channel=False))
    quant.calibrate(model, [torch.randn(16, 1, 8, 8)], method="minmax")
    conv = model[2]
    assert conv.weight_quantizer.step.numel() == 1 and conv.weight_quantizer.channel_axis is None
    s = float(conv.weight_quantizer.step)
    expected = torch.fake_quantize_per_tensor_affine(conv.weight.detach(), s, 0, -8, 7)
    assert torch.equal(conv.weight_quantizer(conv.weight).detach(), expected)
    assert s == pytest.approx(float(conv.weight.abs().max()) / 7, rel=1e-6)


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [
        ("resnet10t", {"channels": [8, 16, 32, 64]}),
        ("vit_convstem_tiny", {"embed_dim": 16, "depth": 1, "num_heads": 2}),
    ],
)
def test_first_last_bits_apply_to_stem_and_head_only(arch, kwargs):
    model = create_model(arch, num_classes=10, in_chans=1, kwargs=kwargs)
    quant.quantize_model(model, QuantScheme(3, 3, first_last_bits=8))
    layers = list(quant.quant_modules(model))
    bits = {name: (m.weight_quantizer.bits, m.input_quantizer.bits) for name, m in layers}
    first, last = layers[0][0], layers[-1][0]
    assert bits.pop(first) == (8, 8) and bits.pop(last) == (8, 8)
    assert set(bits.values()) == {(3, 3)}
    assert last == ("fc" if arch == "resnet10t" else "head")
    assert first.startswith("conv1" if arch == "resnet10t" else "patch_embed")


def test_depthwise_input_bits_apply_to_depthwise_inputs_only():
    model = create_model("mobilenetv2_050", num_classes=10, in_chans=1)
    quant.quantize_model(model, QuantScheme(4, 4, first_last_bits=8, depthwise_input_bits=8))
    layers = dict(quant.quant_modules(model))
    depthwise = {name for name, m in layers.items() if quant.is_depthwise(m)}
    assert len(depthwise) == 17 and all(name.endswith("conv_dw") for name in depthwise)
    assert {(m.weight_quantizer.bits, m.input_quantizer.bits) for name, m in layers.items() if name in depthwise} == {
        (4, 8)
    }
    assert (layers["conv_stem"].input_quantizer.bits, layers["classifier"].input_quantizer.bits) == (8, 8)
    others = [m for name, m in layers.items() if name not in depthwise | {"conv_stem", "classifier"}]
    assert {(m.weight_quantizer.bits, m.input_quantizer.bits) for m in others} == {(4, 4)}


def test_residual_bits_quantize_every_resnet_shortcut_signed():
    """One signed quantizer per block on the shortcut of the residual add (after the downsampling layers where
    there are some); the FP32 weights keep their names; the shortcut output is the quantizer's."""
    torch.manual_seed(0)
    fp32 = create_model("resnet10t", num_classes=10, in_chans=1)  # layer1 keeps its width: no downsampling
    model = quant.quantize_model(
        create_model("resnet10t", num_classes=10, in_chans=1), QuantScheme(4, 4, residual_bits=8)
    )
    missing, unexpected = model.load_state_dict(fp32.state_dict(), strict=False)
    quantizer_state = {f"{name}.{key}" for name, q in quant.quantizers(model) for key in q.state_dict()}
    assert not unexpected and set(missing) == quantizer_state
    shortcuts = {
        name: q
        for name, q in quant.quantizers(model)
        if name.split(".")[-1] not in ("weight_quantizer", "input_quantizer")
    }
    assert sorted(shortcuts) == [
        "layer1.0.downsample",
        "layer2.0.downsample.3",
        "layer3.0.downsample.3",
        "layer4.0.downsample.3",
    ]
    quant.calibrate(model.eval(), [torch.randn(16, 1, 28, 28)], method="mse")
    # layer1's shortcut follows a ReLU and max-pool, so its input is never negative: it stays signed anyway
    assert all(q.bits == 8 and q.signed for q in shortcuts.values())
    block, seen = model.layer2[0], {}
    block.downsample[-1].register_forward_hook(lambda _m, _i, out: seen.setdefault("shortcut", out))
    block(torch.relu(torch.randn(2, 64, 7, 7)))
    step = float(block.downsample[-1].step)
    assert torch.allclose(seen["shortcut"] / step, torch.round(seen["shortcut"] / step), atol=1e-4)
    # the sensitivity analysis wraps named layers only: no shortcut quantizers then
    named = quant.quantize_model(
        create_model("resnet10t", num_classes=10, in_chans=1),
        QuantScheme(4, 4, residual_bits=8),
        names=["layer1.0.conv1"],
    )
    assert [name for name, _ in quant.quantizers(named)] == [
        "layer1.0.conv1.weight_quantizer",
        "layer1.0.conv1.input_quantizer",
    ]


def test_scheme_validates_bits_and_parses_tags_with_options():
    assert QuantScheme.from_tag("w4a8", act_asymmetric=True) == QuantScheme(4, 8, act_asymmetric=True)
    with pytest.raises(ValueError, match="first_last_bits"):
        QuantScheme(4, 4, first_last_bits=9)
    with pytest.raises(ValueError, match="residual_bits"):
        QuantScheme(4, 4, residual_bits=1)
    with pytest.raises(ValueError, match="depthwise_input_bits"):
        QuantScheme(4, 4, depthwise_input_bits=9)
    with pytest.raises(ValueError, match="w_bits"):
        QuantScheme(1, 4)


def test_asymmetric_per_tensor_mixed_model_exports_to_matching_onnx():
    torch.manual_seed(0)
    model = quant.quantize_model(
        _small_cnn(), QuantScheme(4, 4, weight_per_channel=False, act_asymmetric=True, first_last_bits=8)
    ).eval()
    quant.calibrate(model, [torch.randn(32, 1, 8, 8)], method="mse")
    x = torch.randn(16, 1, 8, 8)
    expected, exported = export_quantized(model, x)
    actual = ort.InferenceSession(exported, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert np.abs(actual - expected).max() < 1e-4
    assert (actual.argmax(1) == expected.argmax(1)).all()


def test_model_size_counts_offsets_as_fp32_quantizer_state():
    model = quant.quantize_model(nn.Sequential(nn.Linear(64, 32)), QuantScheme(4, 4, act_asymmetric=True))
    sizes = quant.model_size_bytes(model)
    # weights at 4 bits + 32 steps + bias + activation step and offset, all FP32
    assert sizes["packed_bytes"] == 64 * 32 // 2 + 4 * (32 + 32 + 1 + 1)
    assert sizes["fp32_bytes"] == 4 * (64 * 32 + 32)


def _calibrated_input(values: torch.Tensor, bits: int, method: str = "mse") -> LSQQuantizer:
    layer = quant.quantize_model(nn.Sequential(nn.Linear(values.shape[1], 2)), QuantScheme(8, bits))[0]
    quant.calibrate(nn.Sequential(layer), [values], method=method)
    return layer.input_quantizer


@pytest.mark.parametrize("bits", [2, 3, 4, 6])
def test_calibration_gives_post_gelu_inputs_a_zero_point_near_the_bottom(bits):
    """GELU's output dips to -0.17: its zero point leaves a few levels below zero and most above, where the signed
    range would spend half of them on negatives; a ReLU output stays unsigned, a symmetric input near the middle."""
    torch.manual_seed(bits)
    gelu = torch.nn.functional.gelu(torch.randn(512, 64) * 2)
    q = _calibrated_input(gelu, bits)
    assert 0 <= int(q.zero_point) < 2 ** (bits - 2)
    assert q(gelu).min() < 0 or int(q.zero_point) == 0  # negative levels exist exactly when z > 0
    assert int(_calibrated_input(torch.relu(gelu), bits).zero_point) == 0
    symmetric = _calibrated_input(torch.randn(512, 64), bits).zero_point
    assert abs(int(symmetric) - 2 ** (bits - 1)) <= max(1, 2 ** (bits - 3))


def test_post_gelu_zero_point_quantizes_with_less_error_than_the_signed_range():
    torch.manual_seed(0)
    gelu = torch.nn.functional.gelu(torch.randn(512, 64) * 2)
    calibrated = _calibrated_input(gelu, 3)
    signed = LSQQuantizer(3, signed=True)
    signed.init_step(quant.init_step_size(gelu.reshape(1, -1), 3, True, "mse"))
    errors = [float(((q(gelu) - gelu) ** 2).mean()) for q in (calibrated, signed)]
    assert errors[0] < 0.7 * errors[1]


def test_8_bit_inputs_keep_the_zero_points_tensorrt_holds():
    torch.manual_seed(0)
    gelu = torch.nn.functional.gelu(torch.randn(512, 64) * 2)
    assert int(_calibrated_input(gelu, 8).zero_point) == 128
    assert int(_calibrated_input(torch.relu(gelu), 8).zero_point) == 0


@pytest.mark.parametrize("bits,zero_point", [(4, 2), (3, 1), (8, 40)])
def test_zero_point_quantizer_exports_exactly(bits, zero_point):
    """Below 8 bits an offset range fits int8 with zero point 0 behind its clamp; an 8-bit one is a uint8 Q/DQ with
    the zero point itself: either way onnxruntime computes the fake-quant values."""
    layer = quant.quantize_model(nn.Sequential(nn.Linear(16, 4)), QuantScheme(8, bits))[0]
    quant.calibrate(nn.Sequential(layer), [torch.randn(64, 16)], method="minmax")
    layer.input_quantizer.set_zero_point(zero_point)
    layer.input_quantizer.init_step(torch.tensor([0.11]))
    x = torch.randn(32, 16) * 2
    expected, onnx_bytes = export_quantized(nn.Sequential(layer).eval(), x)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], expected, atol=1e-5)
    assert layer.input_quantizer.qmin == -zero_point and layer.input_quantizer.qmax == 2**bits - 1 - zero_point
