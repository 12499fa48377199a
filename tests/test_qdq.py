"""The Q/DQ layout rewrites (qatstudy.qdq) on hand-built graphs: each one that claims exactness keeps every value,
checked by running the graph before and after in onnxruntime without its optimizations."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qatstudy import ort_sessions, qdq

RNG = np.random.default_rng(0)
F = TensorProto.FLOAT


def _run(model: onnx.ModelProto, x: np.ndarray, outputs: dict[str, int] | None = None) -> list[np.ndarray]:
    """onnxruntime with no graph optimization: the graph's own arithmetic; `outputs` adds tensors (name: type)."""
    model = copy.deepcopy(model)
    for name, elem_type in (outputs or {}).items():
        model.graph.output.append(helper.make_tensor_value_info(name, elem_type, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def _init(value, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _conv_graph(
    *, in_bits: int, w_bits: int, gamma: np.ndarray, weight: np.ndarray | None = None, next_bits: int | None = 4
) -> onnx.ModelProto:
    """x -> b-bit clamp -> Q/DQ (int8) -> Conv (int8 per-channel weights) -> BN -> ReLU -> [4-bit clamp -> Q/DQ]
    -> y, as the export writes a quantized conv and the next layer's input quantizer."""
    channels = len(gamma)
    lo, hi = -(2 ** (in_bits - 1)), 2 ** (in_bits - 1) - 1
    if weight is None:
        weight = RNG.integers(-(2 ** (w_bits - 1)), 2 ** (w_bits - 1), (channels, 2, 3, 3)).astype(np.int8)
    s_x, s_y = 0.05, 0.1
    inits = [
        _init(np.float32(s_x), "s_x"),
        _init(np.int8(0), "z8"),
        _init(np.float32(lo * s_x), "x_lo"),
        _init(np.float32(hi * s_x), "x_hi"),
        _init(weight, "w"),
        _init(RNG.uniform(0.01, 0.03, channels).astype(np.float32), "s_w"),
        _init(np.zeros(channels, np.int8), "z_w"),
        _init(gamma.astype(np.float32), "gamma"),
        _init(RNG.normal(0, 0.2, channels).astype(np.float32), "beta"),
        _init(RNG.normal(0, 0.2, channels).astype(np.float32), "mean"),
        _init(RNG.uniform(0.5, 2, channels).astype(np.float32), "var"),
    ]
    nodes = [
        helper.make_node("Clip", ["x", "x_lo", "x_hi"], ["x_c"]),
        helper.make_node("QuantizeLinear", ["x_c", "s_x", "z8"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "s_x", "z8"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w", "s_w", "z_w"], ["w_dq"], axis=0),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv", "gamma", "beta", "mean", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["relu"]),
    ]
    out = "relu"
    if next_bits is not None:
        inits += [
            _init(np.float32(s_y), "s_y"),
            _init(np.uint8(0), "z_u8"),
            _init(np.float32(0), "y_lo"),
            _init(np.float32((2**next_bits - 1) * s_y), "y_hi"),
        ]
        nodes += [
            helper.make_node("Clip", ["relu", "y_lo", "y_hi"], ["y_c"]),
            helper.make_node("QuantizeLinear", ["y_c", "s_y", "z_u8"], ["y_q"]),
            helper.make_node("DequantizeLinear", ["y_q", "s_y", "z_u8"], ["y"]),
        ]
        out = "y"
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2, 6, 6])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [None, channels, 6, 6])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _x(n: int = 16) -> np.ndarray:
    return RNG.normal(0, 0.3, (n, 2, 6, 6)).astype(np.float32)


def test_fold_batchnorm_keeps_the_integers_and_the_function():
    gamma = np.array([1.5, -0.7, 0.3, -2.0])
    model = _conv_graph(in_bits=8, w_bits=4, gamma=gamma, next_bits=None)
    g = qdq.Graph(copy.deepcopy(model))
    assert qdq.fold_batchnorm(g) == (1, 0)
    assert "BatchNormalization" not in [n.op_type for n in g.graph.node]
    wdq = g.producer(next(n for n in g.graph.node if n.op_type == "Conv").input[1])
    folded, before = g.constant(wdq.input[0]), numpy_helper.to_array(model.graph.initializer[4])
    np.testing.assert_array_equal(folded, before * np.sign(gamma).reshape(-1, 1, 1, 1).astype(np.int8))
    x = _x()
    np.testing.assert_allclose(_run(g.model, x)[0], _run(model, x)[0], rtol=1e-5, atol=1e-5)


def test_batchnorm_stays_where_negating_an_8_bit_weight_would_overflow():
    weight = RNG.integers(-100, 100, (2, 2, 3, 3)).astype(np.int8)
    weight[1, 0, 0, 0] = -128  # the channel whose BN factor is negative: +128 does not fit int8
    model = _conv_graph(in_bits=8, w_bits=8, gamma=np.array([1.0, -1.0]), weight=weight, next_bits=None)
    g = qdq.Graph(model)
    assert qdq.fold_batchnorm(g) == (0, 1)
    assert "BatchNormalization" in [n.op_type for n in g.graph.node]


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_signed_activations_move_into_uint8_exactly(bits):
    model = _conv_graph(in_bits=bits, w_bits=4, gamma=np.ones(3), next_bits=None)
    g = qdq.Graph(copy.deepcopy(model))
    assert qdq.signed_to_uint8(g) == 1
    q = next(n for n in g.graph.node if n.op_type == "QuantizeLinear")
    zero = g.constant(q.input[2])
    assert zero.dtype == np.uint8 and int(zero) == 2 ** (bits - 1)  # -qmin: b-bit values in 0 .. 2^b - 1
    x = 30 * _x()  # beyond the 8-bit range too
    before, after = _run(model, x, {"x_dq": F})[1], _run(g.model, x, {"x_dq": F, "x_q": TensorProto.UINT8})[1:]
    np.testing.assert_array_equal(after[0], before)
    assert after[1].max() == 2**bits - 1 and after[1].min() == 0


@pytest.mark.parametrize("bits", [8, 4])
def test_output_quantizer_moves_up_with_its_clamps_as_an_integer_clip(bits):
    """Conv -> BN -> ReLU -> b-bit clamp -> Q becomes Conv -> Q -> integer Clip: the same integers."""
    model = _conv_graph(in_bits=8, w_bits=4, gamma=np.array([1.0, -0.5, 2.0]), next_bits=bits)
    g = qdq.Graph(copy.deepcopy(model))
    qdq.fold_batchnorm(g)
    assert qdq.quantize_outputs(g, [], "mse") == (1, 0)  # reused, nothing to calibrate
    ops = [n.op_type for n in g.graph.node]
    assert ops[ops.index("Conv") + 1] == "QuantizeLinear"
    assert ("Relu" in ops, ops.count("Clip")) == (False, 1 + (bits < 8))  # the input clamp, and 4 bits' top
    x = 4 * _x(64)
    before, after = _run(model, x)[0], _run(g.model, x)[0]
    step = 0.1
    assert (after == before).mean() > 0.999 and np.abs(after - before).max() <= step * 1.0001
    if bits < 8:
        assert after.max() == pytest.approx((2**bits - 1) * step)  # saturated at the 4-bit top, as before


def test_new_output_quantizer_is_calibrated_on_the_batches():
    model = _conv_graph(in_bits=8, w_bits=4, gamma=np.ones(3), next_bits=None)
    g = qdq.Graph(copy.deepcopy(model))
    qdq.fold_batchnorm(g)
    batches = [_x(32) for _ in range(3)]
    assert qdq.quantize_outputs(g, batches, "minmax") == (0, 1)
    dq = next(n for n in g.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == "relu")
    scale, zero = float(g.constant(dq.input[1])), int(g.constant(dq.input[2]))
    largest = max(float(_run(model, x)[0].max()) for x in batches)
    assert zero == 0 and scale == pytest.approx(largest / 255, rel=1e-5)  # ReLU output: min/max range from 0
    with pytest.raises(ValueError, match="at least one batch"):
        unfolded = qdq.Graph(copy.deepcopy(model))
        qdq.quantize_outputs(unfolded, [], "minmax")


@pytest.mark.parametrize(
    "w_bits, a_bits, spread, widened", [(4, 4, 8, False), (2, 8, 32, False), (8, 4, 1, False), (8, 8, 1, True)]
)
def test_weights_are_spread_or_widened_so_no_int16_pair_sum_can_saturate(w_bits, a_bits, spread, widened):
    weight = RNG.integers(-(2 ** (w_bits - 1)), 2 ** (w_bits - 1), (3, 2, 3, 3)).astype(np.int8)
    weight[0, 0, 0, 0] = -(2 ** (w_bits - 1))
    model = _conv_graph(in_bits=a_bits, w_bits=w_bits, gamma=np.ones(3), weight=weight, next_bits=None)
    g = qdq.Graph(copy.deepcopy(model))
    qdq.signed_to_uint8(g)
    assert qdq.spread_low_bit_weights(g) == (spread > 1)
    assert qdq.widen_overflowing_weights(g) == widened
    wdq = next(n for n in g.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == "w_dq")
    stored, zero = g.constant(wdq.input[0]), g.constant(wdq.input[2])
    assert stored.dtype == (np.uint8 if widened else np.int8)
    integers = stored.astype(np.int32) - zero.astype(np.int32).reshape(-1, 1, 1, 1)
    np.testing.assert_array_equal(integers, weight.astype(np.int32) * spread)
    largest_input = 2**a_bits - 1  # in its uint8 container
    if not widened:
        assert 2 * largest_input * np.abs(integers).max() <= 32767
    np.testing.assert_array_equal(
        _run(g.model, np.zeros((1, 2, 6, 6), np.float32), {"w_dq": F})[1],
        _run(model, np.zeros((1, 2, 6, 6), np.float32), {"w_dq": F})[1],
    )


def test_cpu_layout_runs_as_integer_kernels_and_matches_the_graph():
    """The whole layout on the hand-built conv: onnxruntime runs one QLinearConv, and its result is the reference
    graph's to one 4-bit step (the int32 bias is rounded to the accumulator's step)."""
    model = _conv_graph(in_bits=8, w_bits=4, gamma=np.array([1.0, -0.5, 2.0, 0.8]), next_bits=4)
    layout, report = qdq.cpu_layout(model, [], "mse")
    assert report["bn_folded"] == 1 and report["outputs_reused"] == 1 and report["biases_int32"] == 1
    assert ort_sessions.optimized_op_counts(layout).get("QLinearConv") == 1
    x = 4 * _x(64)
    fused = ort_sessions.session(layout).run(None, {"x": x})[0]
    before = _run(model, x)[0]
    assert (fused == before).mean() > 0.99 and np.abs(fused - before).max() <= 0.1 * 1.0001


NO_TRANSPOSE_INT4 = {"transposes_before_quantizers": 0, "weights_int4": 0}


def test_batchnorm_whose_folded_bias_int32_cannot_hold_stays():
    """A batch norm with |gamma| / sigma = 1e-7 would fold into a weight step 1e7 times smaller but keep its beta:
    at the product step that bias needs more than 2^31 steps, and onnxruntime's fused convolution computed that
    channel as 0 instead of its beta. The norm stays; the convolution's output gets a calibrated quantizer."""
    model = _conv_graph(in_bits=8, w_bits=4, gamma=np.array([1.0, -0.5, 1e-7, 0.8]), next_bits=4)
    x = 4 * _x(64)
    layout, report = qdq.cpu_layout(model, [x], "mse")
    assert (report["bn_folded"], report["bn_left"], report["outputs_calibrated"]) == (0, 1, 1)
    before, after = _run(model, x)[0], ort_sessions.session(layout).run(None, {"x": x})[0]
    assert (after[:, 2] == before[:, 2]).all()  # the tiny channel: its beta, a constant
    assert (after == before).mean() > 0.95 and np.abs(after - before).max() <= 0.1 * 1.0001


def test_bias_int32_cannot_hold_is_refused():
    model = _conv_graph(in_bits=8, w_bits=4, gamma=np.ones(2), next_bits=None)
    g = qdq.Graph(model)
    conv = next(n for n in g.graph.node if n.op_type == "Conv")
    qdq._set_input(conv, 2, g.add_constant(np.array([0.0, 1e9], np.float32), "bias"))
    with pytest.raises(ValueError, match="more than int32 holds"):
        qdq.quantize_biases(g)


@pytest.mark.parametrize("values", [(2.0, 3.0), (-3.0, -2.0)])
def test_calibrated_range_away_from_zero_is_widened_to_reach_it(values):
    """A uint8 range must hold 0; calibrated values all above (or all below) it get a range from 0 to their far
    end, not a zero point clipped to 0 (or 255) that cuts that end off."""
    low, high = values
    params = qdq._calibrated_params(np.linspace(low, high, 1000).astype(np.float32), "minmax")
    representable = (np.array([qdq.U8_MIN, qdq.U8_MAX]) - int(params.zero_point)) * params.scale
    assert representable[0] <= min(low, 0.0) + 1e-6 and representable[1] >= max(high, 0.0) - 1e-6
    assert params.scale == pytest.approx(3.0 / 255, rel=1e-6)


def test_trt_layout_has_only_int8_zero_point_0():
    model = _conv_graph(in_bits=4, w_bits=4, gamma=np.ones(2), next_bits=8)
    layout, report = qdq.trt_layout(model)
    assert report == {"unsigned_to_int8": 1, "unsigned_8bit_halved": 1, "weights_transposed": 0, **NO_TRANSPOSE_INT4}
    g = qdq.Graph(layout)
    for node in g.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert g.constant(node.input[2]).dtype == np.int8 and not g.constant(node.input[2]).any()
    seven_bits = _conv_graph(in_bits=4, w_bits=4, gamma=np.ones(2), next_bits=7)
    small, report = qdq.trt_layout(seven_bits)
    assert report == {"unsigned_to_int8": 1, "unsigned_8bit_halved": 0, "weights_transposed": 0, **NO_TRANSPOSE_INT4}
    x = 4 * _x()
    np.testing.assert_array_equal(_run(small, x)[0], _run(seven_bits, x)[0])  # 0 .. 127 fits: exact


def _linear_graph(layers: list[tuple[str, int, int]]) -> onnx.ModelProto:
    """x (tokens) -> Q/DQ -> one linear layer per (kind, in, w_bits), each with per-channel int8 weights, as the
    export writes them: "matmul" as DQ(w) -> Transpose -> MatMul (a Linear on token sequences), "gemm" as
    Gemm(transB=1) on rows (reshaped back after). Each layer has as many outputs as inputs, so they chain."""
    width = layers[0][1]
    inits = [_init(np.float32(0.05), "s_x"), _init(np.int8(0), "z8")]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s_x", "z8"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "s_x", "z8"], ["h0"]),
    ]
    for i, (kind, k, w_bits) in enumerate(layers):
        assert k == width
        weight = RNG.integers(-(2 ** (w_bits - 1)), 2 ** (w_bits - 1), (k, k)).astype(np.int8)  # [out, in]
        inits += [
            _init(weight, f"w{i}"),
            _init(RNG.uniform(0.01, 0.03, k).astype(np.float32), f"s{i}"),
            _init(np.zeros(k, np.int8), f"z{i}"),
            _init(RNG.normal(0, 0.1, k).astype(np.float32), f"b{i}"),
        ]
        nodes.append(helper.make_node("DequantizeLinear", [f"w{i}", f"s{i}", f"z{i}"], [f"w{i}_dq"], axis=0))
        if kind == "matmul":
            nodes += [
                helper.make_node("Transpose", [f"w{i}_dq"], [f"w{i}_t"], perm=[1, 0]),
                helper.make_node("MatMul", [f"h{i}", f"w{i}_t"], [f"m{i}"]),
                helper.make_node("Add", [f"m{i}", f"b{i}"], [f"h{i + 1}"]),
            ]
        else:
            inits.append(_init(np.array([-1, k], np.int64), f"rows{i}"))
            inits.append(_init(np.array([0, -1, k], np.int64), f"tokens{i}"))
            nodes += [
                helper.make_node("Reshape", [f"h{i}", f"rows{i}"], [f"r{i}"]),
                helper.make_node("Gemm", [f"r{i}", f"w{i}_dq", f"b{i}"], [f"g{i}"], transB=1),
                helper.make_node("Reshape", [f"g{i}", f"tokens{i}"], [f"h{i + 1}"]),
            ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", F, [None, 3, width])],
        [helper.make_tensor_value_info(f"h{len(layers)}", F, [None, 3, width])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_trt_layout_stores_4_bit_matmul_and_gemm_weights_as_blocked_int4_exactly():
    """TensorRT's weight-only INT4: a 4-bit (or narrower) weight of a MatMul or Gemm whose reduction size 128 or 64
    divides becomes INT4 with a step per output channel repeated over the blocks; an 8-bit weight, or a reduction
    size neither divides, stays int8."""
    model = _linear_graph([("matmul", 128, 4), ("gemm", 128, 2), ("matmul", 128, 8)])
    layout, report = qdq.trt_layout(model)
    assert (report["weights_transposed"], report["weights_int4"]) == (2, 2)
    assert layout.opset_import[0].version == qdq.INT4_OPSET
    x = RNG.normal(0, 0.3, (4, 3, 128)).astype(np.float32)
    np.testing.assert_array_equal(_run(layout, x)[0], _run(model, x)[0])
    g, original = qdq.Graph(layout), qdq.Graph(copy.deepcopy(model))
    weights = [n for n in g.graph.node if n.op_type == "DequantizeLinear" and g.constant(n.input[0]) is not None]
    assert [str(g.constant(n.input[0]).dtype) for n in weights] == ["int4", "int4", "int8"]
    matmul, gemm = weights[:2]
    # the MatMul's weight is stored transposed, [in, out], blocked along its rows; the Gemm's [out, in] along columns
    assert (qdq._attr(matmul, "axis", 1), qdq._attr(matmul, "block_size", 0)) == (0, 128)
    assert (qdq._attr(gemm, "axis", 1), qdq._attr(gemm, "block_size", 0)) == (1, 128)
    np.testing.assert_array_equal(g.constant(matmul.input[0]).astype(np.int8), original.constant("w0").T)
    np.testing.assert_array_equal(g.constant(matmul.input[1]), original.constant("s0")[None, :])
    np.testing.assert_array_equal(g.constant(gemm.input[1]), original.constant("s1")[:, None])
    assert not g.constant(gemm.input[2]).astype(np.int8).any()

    narrow = _linear_graph([("gemm", 64, 4), ("matmul", 64, 3)])
    layout, report = qdq.trt_layout(narrow)
    assert report["weights_int4"] == 2
    assert {qdq._attr(n, "block_size", 0) for n in layout.graph.node if n.op_type == "DequantizeLinear"} == {0, 64}
    x = RNG.normal(0, 0.3, (4, 3, 64)).astype(np.float32)
    np.testing.assert_array_equal(_run(layout, x)[0], _run(narrow, x)[0])

    unblockable = _linear_graph([("gemm", 96, 4)])
    layout, report = qdq.trt_layout(unblockable)
    assert report["weights_int4"] == 0 and layout.opset_import[0].version == 17  # 96: neither 64 nor 128 divides
