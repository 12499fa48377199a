"""Q/DQ layouts of an exported model for two runtimes, from the same trained integers and step sizes.

The reference export (export.py) puts a clamp and a QuantizeLinear/DequantizeLinear pair wherever training had a
quantizer: on the inputs of every Conv, Gemm and MatMul (and, when quantized, of the attention matmuls), with
weights stored as int8 initializers behind a DequantizeLinear. It computes exactly what PyTorch's fake
quantization computes, but neither runtime runs it as integer arithmetic as it stands:

- `cpu_layout` (onnxruntime on CPU). onnxruntime's QDQ transformer replaces DQ(x), DQ(w) -> Conv -> Q by
  QLinearConv and DQ(x), DQ(w), DQ(bias) -> Gemm by QGemm, but only when activations are uint8 (its x86 path),
  biases are int32 behind a DequantizeLinear and a Conv's output goes straight into a QuantizeLinear. So: batch
  norm is folded into the convolution before it (the per-channel weight step takes the BN factor, the stored
  integers stay the trained ones); signed b-bit activations move into uint8 with zero point 2^(b-1); each Conv's
  output is quantized by the next layer's own input quantizer where only clamps (ReLU, ReLU6, the b-bit clamp)
  lie between them, the clamps becoming an integer Clip after the QuantizeLinear; a Linear on token sequences
  (MatMul + bias Add) becomes a Gemm on rows; biases become int32. All of that is exact (up to the int32 bias
  rounding). A Conv whose output feeds anything else (residual adds, pooling, the token stream) gets a new 8-bit
  quantizer calibrated on the model's own activations: the one approximation of this layout. Weights are stored
  so that onnxruntime's uint8 x int8 kernels cannot saturate (widen_overflowing_weights).
- `trt_layout` (TensorRT). TensorRT reads only symmetric INT8 Q/DQ with zero point 0 and fuses the rest itself.
  Activations of up to 7 bits fit int8 exactly whatever their zero point (unsigned ones on [0, 127]); unsigned
  8-bit activations ([0, 255] steps) do not, and are exported with twice the step: one bit of resolution less than
  trained. MatMul/Gemm
  weights of 4 bits or fewer become TensorRT's weight-only INT4 where its block sizes fit (`int4_weights`).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper, version_converter

from .ort_sessions import session
from .quant.calibrate import init_asymmetric_range

U8_MIN, U8_MAX = 0, 255
INT32_MAX = np.iinfo(np.int32).max
FUSED_OPS = (
    "QLinearConv",
    "MatMulIntegerToFloat",
    "QLinearMatMul",
    "QGemm",
    "QLinearAdd",
    "QLinearMul",
    "QLinearGlobalAveragePool",
    "QLinearAveragePool",
    "QLinearConcat",
)
FLOAT_LAYER_OPS = ("Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm", "FusedGemm")


class Graph:
    """A model's graph with its constants as numpy arrays and its edges, for rewriting in place."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        constants = [n for n in self.graph.node if n.op_type == "Constant"]
        for node in constants:  # Constant nodes become initializers: one place to look values up
            value = next(a.t for a in node.attribute if a.name == "value")
            self.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(value), node.output[0]))
            self.graph.node.remove(node)
        self.values = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        del self.graph.value_info[:]  # inferred types that rewriting changes (int8 -> uint8); runtimes re-infer
        self._names = itertools.count()

    def producer(self, name: str) -> onnx.NodeProto | None:
        return next((n for n in self.graph.node if name in n.output), None)

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return [n for n in self.graph.node if name in n.input]

    def is_graph_output(self, name: str) -> bool:
        return any(o.name == name for o in self.graph.output)

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers(name)
        return users[0] if len(users) == 1 and not self.is_graph_output(name) else None

    def constant(self, name: str) -> np.ndarray | None:
        return self.values.get(name)

    def optional_constant(self, node: onnx.NodeProto, index: int, default=None) -> np.ndarray | None:
        """The constant at `node`'s optional input `index` (a zero point, a bias), or `default` where it is absent."""
        return self.constant(node.input[index]) if len(node.input) > index and node.input[index] else default

    def add_constant(self, value: np.ndarray, hint: str) -> str:
        name = f"{hint}_{next(self._names)}"
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        self.values[name] = np.asarray(value)
        return name

    def fresh(self, hint: str) -> str:
        return f"{hint}_{next(self._names)}"

    def insert_after(self, anchor: onnx.NodeProto, nodes: list[onnx.NodeProto]) -> None:
        index = list(self.graph.node).index(anchor) + 1
        for offset, node in enumerate(nodes):
            self.graph.node.insert(index + offset, node)

    def drop_unused_constants(self) -> None:
        used = {name for node in self.graph.node for name in node.input} | {o.name for o in self.graph.output}
        for init in [i for i in self.graph.initializer if i.name not in used]:
            self.graph.initializer.remove(init)
            self.values.pop(init.name, None)


def _attr(node: onnx.NodeProto, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _set_input(node: onnx.NodeProto, index: int, name: str) -> None:
    """Set `node`'s input `index`, appending it (behind empty optional inputs) where the node has fewer."""
    while len(node.input) <= index:
        node.input.append("")
    node.input[index] = name


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for a in [a for a in node.attribute if a.name == name]:
        node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


@dataclass
class _QParams:
    """Scale and zero point (constants) of a per-tensor activation QuantizeLinear or DequantizeLinear."""

    scale: float
    zero_point: np.ndarray  # 0-d, its dtype is the container

    @classmethod
    def of(cls, g: Graph, node: onnx.NodeProto) -> _QParams | None:
        scale = g.constant(node.input[1])
        zero = g.optional_constant(node, 2, np.array(0, np.uint8))
        if scale is None or zero is None or scale.size != 1 or zero.size != 1:
            return None
        return cls(float(scale.reshape(())), zero.reshape(()))


def _weight_dq(g: Graph, name: str) -> onnx.NodeProto | None:
    """The DequantizeLinear of an 8-bit integer weight initializer that produces `name`, if any."""
    node = g.producer(name)
    if node is None or node.op_type != "DequantizeLinear" or g.constant(node.input[0]) is None:
        return None
    return node if g.constant(node.input[0]).dtype in (np.int8, np.uint8) else None


def _activation_dq(g: Graph, name: str) -> onnx.NodeProto | None:
    node = g.producer(name)
    if node is None or node.op_type != "DequantizeLinear" or g.constant(node.input[0]) is not None:
        return None
    return node


def quantized_layers(g: Graph, op_types=("Conv", "Gemm", "MatMul")) -> list[onnx.NodeProto]:
    """Nodes whose activation and weight inputs are both dequantized integers."""
    return [
        n
        for n in g.graph.node
        if n.op_type in op_types
        and len(n.input) >= 2
        and _activation_dq(g, n.input[0]) is not None
        and _weight_dq(g, n.input[1]) is not None
    ]


# ------------------------------------------------------------------------------------------ batch norm


def fold_batchnorm(g: Graph) -> tuple[int, int]:
    """Fold each BatchNormalization that follows a quantized Conv into it; returns (folded, left).

    With factor f = gamma / sqrt(var + eps) per channel, the folded weight step is step * |f| and the stored
    integer is negated where f < 0, so the integers stay the trained ones and the function is unchanged. A BN left
    in place has a channel with f = 0, would need -128 negated (an 8-bit weight at the bottom of its range), or has
    a channel whose folded bias int32 could not hold at the accumulator's step (`_bias_fits`)."""
    folded = left = 0
    for conv in quantized_layers(g, ("Conv",)):
        bn = g.only_consumer(conv.output[0])
        wdq = _weight_dq(g, conv.input[1])
        if bn is None or bn.op_type != "BatchNormalization" or len(g.consumers(wdq.output[0])) != 1:
            continue
        gamma, beta, mean, var = (g.constant(name) for name in bn.input[1:5])
        if any(v is None for v in (gamma, beta, mean, var)):
            continue
        factor = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + _attr(bn, "epsilon", 1e-5))
        q = g.constant(wdq.input[0])
        sign = np.where(factor < 0, -1, 1).reshape(-1, *[1] * (q.ndim - 1))
        if np.any(factor == 0) or np.any((sign < 0) & (q == -128)):
            left += 1
            continue
        step = np.broadcast_to(g.constant(wdq.input[1]).astype(np.float64), factor.shape)
        bias = np.asarray(g.optional_constant(conv, 2, 0.0), np.float64)
        conv_bias = (bias - mean.astype(np.float64)) * factor + beta.astype(np.float64)
        if not _bias_fits(conv_bias, _QParams.of(g, _activation_dq(g, conv.input[0])), step * np.abs(factor)):
            left += 1
            continue
        wdq.input[0] = g.add_constant((q.astype(np.int16) * sign).astype(np.int8), "w_folded")
        wdq.input[1] = g.add_constant((step * np.abs(factor)).astype(np.float32), "w_step_folded")
        _set_input(wdq, 2, g.add_constant(np.zeros(factor.shape, np.int8), "w_zero"))
        _set_attr(wdq, "axis", 0)
        _set_input(conv, 2, g.add_constant(conv_bias.astype(np.float32), "conv_bias_folded"))
        conv.output[0] = bn.output[0]
        g.graph.node.remove(bn)
        folded += 1
    return folded, left


def _bias_fits(bias: np.ndarray, x_params: _QParams | None, weight_step: np.ndarray) -> bool:
    """Whether int32 holds `bias` at the accumulator's step (input step x weight step), however finely
    spread_low_bit_weights later divides the weight step. The fold divides a channel's weight step by |gamma| /
    sigma but not its beta: at |gamma| / sigma = 1e-6 the bias needs more than 2^31 steps, and onnxruntime's
    fused convolution then computes that channel wrong (an int32 that wrapped around; a float bias it quantizes
    itself)."""
    if x_params is None:
        return True
    finest = x_params.scale * np.asarray(weight_step, np.float64) / WEIGHT_SPREAD_LIMIT
    return bool(np.all(np.abs(bias) / finest <= INT32_MAX))


# ----------------------------------------------------------------------------------- activation containers


def _requantize_pairs(g: Graph, convert) -> int:
    """Apply `convert(node, params) -> (scale, zero_point) | None` to every activation QuantizeLinear whose
    consumers are all DequantizeLinear nodes with the same parameters, and give those the same; returns how many
    changed."""
    changed = 0
    for q in [n for n in g.graph.node if n.op_type == "QuantizeLinear"]:
        params = _QParams.of(g, q)
        users = g.consumers(q.output[0])
        if (
            params is None
            or not users
            or any(u.op_type != "DequantizeLinear" or _QParams.of(g, u) != params for u in users)
        ):
            continue
        new = convert(q, params)
        if new is None:
            continue
        scale, zero = g.add_constant(np.float32(new[0]), "act_scale"), g.add_constant(new[1], "act_zero")
        for node in [q, *users]:
            node.input[1], node.input[2] = scale, zero
        changed += 1
    return changed


def _clamped_range(g: Graph, q: onnx.NodeProto, params: _QParams) -> tuple[int, int]:
    """The integers (before the zero point) that QuantizeLinear `q` can produce: its container's range, narrowed by
    the b-bit clamp the export puts in front of it."""
    clamp = _input_clamp(g, q)
    lo, hi = _integer_bounds(g, [clamp] if clamp is not None else [], params)
    return lo - int(params.zero_point), hi - int(params.zero_point)


def signed_to_uint8(g: Graph) -> int:
    """Signed activations in [qmin, qmax] (int8, zero point 0) move into uint8 with zero point -qmin: the same
    values, exactly, as the integers 0 .. 2^b - 1 (so a b-bit activation stays below 2^b in its container)."""

    def convert(q, p: _QParams):
        if p.zero_point.dtype != np.int8 or int(p.zero_point) != 0:
            return None
        return p.scale, np.array(-_clamped_range(g, q, p)[0], np.uint8)

    return _requantize_pairs(g, convert)


# ---------------------------------------------------------------------------------------- layer outputs


_CLAMPS = ("Relu", "Clip")


def _clamp_chain(g: Graph, name: str) -> tuple[list[onnx.NodeProto], str]:
    """The Relu / constant-bound Clip nodes that follow `name` one after another, each the only consumer of the
    previous tensor, and the tensor at the chain's end."""
    chain = []
    while (
        (node := g.only_consumer(name)) is not None
        and node.op_type in _CLAMPS
        and all(g.constant(b) is not None for b in node.input[1:] if b)
    ):
        chain.append(node)
        name = node.output[0]
    return chain, name


def _float_bounds(g: Graph, node: onnx.NodeProto) -> tuple[float | None, float | None]:
    """The (lower, upper) bounds a Relu or a Clip with constant bounds applies; None where it has none."""
    if node.op_type == "Relu":
        return 0.0, None
    names = list(node.input[1:3]) + [""] * (3 - len(node.input))
    return tuple(float(g.constant(name)) if name else None for name in names)


def _integer_bounds(g: Graph, chain: list[onnx.NodeProto], params: _QParams) -> tuple[int, int]:
    """The clamps of `chain`, applied before QuantizeLinear, as bounds on its integers: rounding is monotone, so
    round(clip(x, lo, hi) / s) = clip(round(x / s), round(lo / s), round(hi / s))."""
    info = np.iinfo(params.zero_point.dtype)
    lo, hi, zero = info.min, info.max, int(params.zero_point)
    for node in chain:
        low, high = _float_bounds(g, node)
        if low is not None:
            lo = max(lo, zero + int(np.round(np.float32(low) / np.float32(params.scale))))
        if high is not None:
            hi = min(hi, zero + int(np.round(np.float32(high) / np.float32(params.scale))))
    return max(lo, info.min), min(hi, info.max)


def _quantize_clamped(
    g: Graph, source: str, chain: list[onnx.NodeProto], params: _QParams, out: str
) -> list[onnx.NodeProto]:
    """QuantizeLinear of `source` with `params`, then an integer Clip doing what the float clamps of `chain` did
    before quantization (none where they only repeat the container's saturation), ending in tensor `out`."""
    scale, zero = g.add_constant(np.float32(params.scale), "scale"), g.add_constant(params.zero_point, "zero")
    lo, hi = _integer_bounds(g, chain, params)
    info = np.iinfo(params.zero_point.dtype)
    if (lo, hi) == (info.min, info.max):
        return [helper.make_node("QuantizeLinear", [source, scale, zero], [out])]
    quantized = g.fresh(f"{source}_q")
    bounds = [g.add_constant(np.array(v, params.zero_point.dtype), "int_clip") for v in (lo, hi)]
    return [
        helper.make_node("QuantizeLinear", [source, scale, zero], [quantized]),
        helper.make_node("Clip", [quantized, *bounds], [out]),
    ]


def _input_clamp(g: Graph, q: onnx.NodeProto) -> onnx.NodeProto | None:
    """The constant-bound Clip whose only consumer is QuantizeLinear `q` (the export's b-bit clamp), if any."""
    clamp = g.producer(q.input[0])
    if (
        clamp is None
        or clamp.op_type != "Clip"
        or g.only_consumer(clamp.output[0]) is not q
        or any(g.constant(b) is None for b in clamp.input[1:] if b)
    ):
        return None
    return clamp


@dataclass
class _OutputPlan:
    conv: onnx.NodeProto
    chain: list[onnx.NodeProto]
    end: str  # the tensor at the end of the clamp chain
    quantizer: onnx.NodeProto | None  # the next layer's QuantizeLinear, when it is the chain's only consumer


def _plan_output(g: Graph, conv: onnx.NodeProto) -> _OutputPlan:
    chain, end = _clamp_chain(g, conv.output[0])
    q = g.only_consumer(end)
    if q is not None and (
        q.op_type != "QuantizeLinear" or _QParams.of(g, q) is None or _QParams.of(g, q).zero_point.dtype != np.uint8
    ):
        q = None
    return _OutputPlan(conv, chain, end, q)


def _calibrated_params(values: np.ndarray, method: str) -> _QParams:
    """uint8 parameters for a tensor from sample values, by the study's calibration method (quant.calibrate's
    asymmetric 8-bit range: min/max, percentile, or the range with the least squared error)."""
    step, offset = init_asymmetric_range(torch.from_numpy(values)[None, :], 8, method)
    low = float(offset[0])
    high = low + U8_MAX * float(step[0])
    # a uint8 zero point holds a range that contains 0; a calibrated range entirely above (or below) it is widened
    # to reach 0, keeping its far end (clipping the zero point instead shifted the range and cut that end off)
    low, high = min(low, 0.0), max(high, 0.0)
    scale = np.float32(max((high - low) / U8_MAX, 1e-8))
    return _QParams(float(scale), np.array(np.clip(np.round(-low / scale), U8_MIN, U8_MAX), np.uint8))


SAMPLES_PER_TENSOR = 1 << 16


def observe(model: onnx.ModelProto, names: list[str], batches: Iterable[np.ndarray], seed: int = 0) -> dict:
    """A random sample (at most SAMPLES_PER_TENSOR values, always including the extremes) of each named tensor
    over the batches, running `model` in onnxruntime."""
    probe = copy.deepcopy(model)
    probe.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    sess = session(probe)
    rng = np.random.default_rng(seed)
    seen = {n: [] for n in names}
    for x in batches:
        for n, v in zip(names, sess.run(names, {sess.get_inputs()[0].name: x})):
            v = v.ravel()
            seen[n].append(np.concatenate([[v.min(), v.max()], rng.choice(v, min(v.size, SAMPLES_PER_TENSOR))]))
    if names and not seen[names[0]]:
        raise ValueError("calibrating the layout's output quantizers needs at least one batch")
    samples = {}
    for n, parts in seen.items():
        v = np.concatenate(parts)
        keep = rng.choice(v.size, min(v.size, SAMPLES_PER_TENSOR), replace=False)
        samples[n] = np.concatenate([[v.min(), v.max()], v[keep]]).astype(np.float32)
    return samples


def quantize_outputs(g: Graph, batches: Iterable[np.ndarray], method: str) -> tuple[int, int]:
    """Put a uint8 QuantizeLinear on the output of every quantized Conv; returns (reused, calibrated).

    Where the next layer's input quantizer follows through clamps only, that quantizer moves up to the output
    (exact). Elsewhere a new 8-bit quantizer, calibrated by min/max on `batches`, quantizes the tensor at the end
    of the clamp chain and a DequantizeLinear restores it for its consumers."""
    plans = [_plan_output(g, conv) for conv in quantized_layers(g, ("Conv",))]
    new = [p for p in plans if p.quantizer is None]
    samples = observe(g.model, [p.end for p in new], batches) if new else {}
    for plan in plans:
        if plan.quantizer is not None:
            nodes = _quantize_clamped(
                g, plan.conv.output[0], plan.chain, _QParams.of(g, plan.quantizer), plan.quantizer.output[0]
            )
            removed = [*plan.chain, plan.quantizer]
        else:
            params = _calibrated_params(samples[plan.end], method)
            quantized = g.fresh(f"{plan.end}_q")
            plan.conv.output[0] = g.fresh(f"{plan.end}_float")  # plan.end is now the DequantizeLinear's
            nodes = _quantize_clamped(g, plan.conv.output[0], plan.chain, params, quantized)
            nodes.append(
                helper.make_node("DequantizeLinear", [quantized, nodes[0].input[1], nodes[0].input[2]], [plan.end])
            )
            removed = plan.chain
        g.insert_after(plan.conv, nodes)
        for node in removed:
            g.graph.node.remove(node)
    return len(plans) - len(new), len(new)


def clamps_to_integer(g: Graph) -> int:
    """Each remaining b-bit clamp in front of a QuantizeLinear becomes an integer Clip behind it (on a quarter of the
    bytes; none at 8 bits, where it repeats the container's saturation); returns how many moved."""
    count = 0
    for q in [n for n in g.graph.node if n.op_type == "QuantizeLinear"]:
        params, clamp = _QParams.of(g, q), _input_clamp(g, q)
        if params is None or clamp is None:
            continue
        nodes = _quantize_clamped(g, clamp.input[0], [clamp], params, q.output[0])
        g.insert_after(q, nodes)
        g.graph.node.remove(q)
        g.graph.node.remove(clamp)
        count += 1
    return count


# ------------------------------------------------------------------------------------------------ weights


def fold_weight_transposes(g: Graph) -> int:
    """DQ(w) -> Transpose -> MatMul (how torch exports a Linear on 3-d inputs) becomes DQ(w transposed) -> MatMul,
    the pattern onnxruntime fuses; returns how many."""
    count = 0
    for t in [n for n in g.graph.node if n.op_type == "Transpose"]:
        dq = _weight_dq(g, t.input[0])
        if (
            dq is None
            or len(g.consumers(dq.output[0])) != 1
            or list(_attr(t, "perm", [1, 0])) != [1, 0]
            or g.constant(dq.input[0]).ndim != 2
        ):
            continue
        dq.input[0] = g.add_constant(np.ascontiguousarray(g.constant(dq.input[0]).T), "w_transposed")
        if g.constant(dq.input[1]).size > 1:
            _set_attr(dq, "axis", 1 - _attr(dq, "axis", 1))
        dq.output[0] = t.output[0]
        g.graph.node.remove(t)
        count += 1
    return count


def _static_dims(shapes: dict, name: str) -> list[int] | None:
    """The dimensions of tensor `name` after the first, if shape inference found them all."""
    dims = shapes.get(name)
    if dims is None or len(dims) < 3 or any(not isinstance(d, int) for d in dims[1:]):
        return None
    return dims[1:]


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, list]:
    inferred = onnx.shape_inference.infer_shapes(model)
    return {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in itertools.chain(inferred.graph.value_info, inferred.graph.input, inferred.graph.output)
    }


def matmuls_to_gemm(g: Graph) -> int:
    """A quantized MatMul on a 3-d (or higher) input followed by its bias Add, as torch exports a Linear on token
    sequences, becomes Reshape -> Gemm -> Reshape, which onnxruntime fuses into one QGemm that adds the bias in its
    int32 accumulator (MatMulIntegerToFloat leaves a separate float Add, as costly as the matmul at these sizes).
    The Reshape goes in front of the activation's QuantizeLinear, which must feed only this MatMul; returns how
    many."""
    shapes = _inferred_shapes(g.model)
    count = 0
    for matmul in quantized_layers(g, ("MatMul",)):
        add = g.only_consumer(matmul.output[0])
        dq = _activation_dq(g, matmul.input[0])
        wdq = _weight_dq(g, matmul.input[1])
        weight = g.constant(wdq.input[0])
        if add is None or add.op_type != "Add" or g.only_consumer(dq.output[0]) is not matmul or weight.ndim != 2:
            continue
        bias_name = next((i for i in add.input if i != matmul.output[0]), None)
        bias = g.constant(bias_name)
        path = [g.producer(dq.input[0])]  # DQ <- [integer Clip <-] QuantizeLinear
        if path[0] is not None and path[0].op_type == "Clip":
            path.append(g.producer(path[0].input[0]))
        q = path[-1]
        in_dims, out_dims = _static_dims(shapes, matmul.input[0]), _static_dims(shapes, add.output[0])
        if (
            bias is None
            or bias.shape != (weight.shape[1],)
            or q is None
            or q.op_type != "QuantizeLinear"
            or in_dims is None
            or out_dims is None
            or any(g.only_consumer(n.output[0]) is None for n in path)
        ):
            continue
        flat = g.fresh(f"{q.input[0]}_rows")
        before = helper.make_node(
            "Reshape", [q.input[0], g.add_constant(np.array([-1, in_dims[-1]], np.int64), "rows_shape")], [flat]
        )
        g.graph.node.insert(list(g.graph.node).index(q), before)
        q.input[0] = flat
        product = g.fresh(f"{add.output[0]}_rows")
        gemm = helper.make_node("Gemm", [dq.output[0], wdq.output[0], bias_name], [product])
        after = helper.make_node(
            "Reshape", [product, g.add_constant(np.array([-1, *out_dims], np.int64), "shape")], [add.output[0]]
        )
        g.insert_after(add, [gemm, after])
        g.graph.node.remove(matmul)
        g.graph.node.remove(add)
        count += 1
    return count


WEIGHT_SPREAD_LIMIT = 64  # 2 x 255 x 64 <= 32767: no uint8 x int8 pair sum can saturate (widen_overflowing_weights)


def spread_low_bit_weights(g: Graph) -> int:
    """Multiply each layer's integer weights by the largest power of two k that keeps them within +-64, dividing
    their step by k: the same values exactly, but the layer's accumulator counts in steps of
    input step x weight step / k, so its int32 bias (which must use that step) is rounded k times more finely.
    Low-bit weights use a small part of int8 (4-bit: +-8); without this the bias rounding of the first
    convolution alone cost a 4-bit ViT 0.2 points. Returns how many layers changed."""
    count = 0
    for layer in quantized_layers(g):
        wdq = _weight_dq(g, layer.input[1])
        q = g.constant(wdq.input[0])
        largest = int(np.abs(q.astype(np.int16)).max())
        if q.dtype != np.int8 or largest == 0 or 2 * largest > WEIGHT_SPREAD_LIMIT:
            continue
        k = 2 ** int(np.floor(np.log2(WEIGHT_SPREAD_LIMIT / largest)))
        wdq.input[0] = g.add_constant((q.astype(np.int16) * k).astype(np.int8), "w_spread")
        wdq.input[1] = g.add_constant((g.constant(wdq.input[1]) / np.float32(k)).astype(np.float32), "w_step_spread")
        count += 1
    return count


U8S8_PAIR_LIMIT = 2**15 - 1


def _activation_max(g: Graph, dq: onnx.NodeProto) -> int:
    """The largest integer an activation DequantizeLinear can receive in its container."""
    source = g.producer(dq.input[0])
    if source is not None and source.op_type == "Clip" and (top := g.optional_constant(source, 2)) is not None:
        return int(top)  # the integer clamp after a quantized layer output
    if source is not None and source.op_type == "QuantizeLinear":
        params = _QParams.of(g, source)
        return int(params.zero_point) + _clamped_range(g, source, params)[1]
    return int(np.iinfo(g.optional_constant(dq, 2, np.zeros((), np.uint8)).dtype).max)


def widen_overflowing_weights(g: Graph) -> int:
    """On x86 without VNNI, onnxruntime's uint8 x int8 kernels add two products in a saturating int16 (vpmaddubsw),
    so x * w + x' * w' can clip when activations reach 8 bits and weights 8 bits. Layers where 2 * max(x) * max|w|
    can exceed 32767 get their weights as uint8 with zero point 128 (the uint8 x uint8 kernels widen to int16 first:
    exact, but slower); returns how many. Weights of 7 bits or fewer, or activations of 7 bits or fewer, never
    need it."""
    count = 0
    for layer in quantized_layers(g):
        wdq = _weight_dq(g, layer.input[1])
        q = g.constant(wdq.input[0])
        if (
            q.dtype == np.uint8
            or 2 * _activation_max(g, _activation_dq(g, layer.input[0])) * int(np.abs(q.astype(np.int16)).max())
            <= U8S8_PAIR_LIMIT
        ):
            continue
        zero = g.optional_constant(wdq, 2, np.zeros((), np.int8))
        wdq.input[0] = g.add_constant((q.astype(np.int16) + 128).astype(np.uint8), "w_uint8")
        _set_input(wdq, 2, g.add_constant((zero.astype(np.int16) + 128).astype(np.uint8), "w_zero_uint8"))
        count += 1
    return count


# ------------------------------------------------------------------------------------------------- biases


def quantize_biases(g: Graph) -> int:
    """Store each quantized Conv's and Gemm's float bias as int32 at step (input step x weight step) behind a
    DequantizeLinear, which onnxruntime's QLinearConv and QGemm take; returns how many. The rounding is at most
    half a product step, far below any activation step. A bias that int32 cannot hold at that step (which
    fold_batchnorm avoids) raises a ValueError naming the layer: cast, it would wrap around silently, and left
    float onnxruntime quantizes it itself, as wrongly."""
    count = 0
    for node in quantized_layers(g, ("Conv", "Gemm")):
        if len(node.input) < 3 or not node.input[2] or g.constant(node.input[2]) is None:
            continue
        wdq = _weight_dq(g, node.input[1])
        per_channel_axis = _attr(wdq, "axis", 1) if g.constant(wdq.input[1]).size > 1 else None
        output_axis = 0 if node.op_type == "Conv" or _attr(node, "transB", 0) == 1 else 1
        if (
            node.op_type == "Gemm"
            and (_attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0 or _attr(node, "transA", 0) != 0)
            or per_channel_axis not in (None, output_axis)
        ):
            continue
        x_params = _QParams.of(g, _activation_dq(g, node.input[0]))
        w_step = g.constant(wdq.input[1]).astype(np.float64)
        bias = g.constant(node.input[2]).astype(np.float64)
        step = np.broadcast_to(x_params.scale * w_step, bias.shape).astype(np.float32)
        steps = np.round(bias / step.astype(np.float64))
        if not np.all(np.abs(steps) <= INT32_MAX):
            raise ValueError(
                f"the bias of {node.op_type} {node.name or node.output[0]} needs up to {np.abs(steps).max():.3g} "
                f"steps of {step.min():.3g} (input step x weight step), more than int32 holds"
            )
        q = steps.astype(np.int32)
        out = g.fresh(f"{node.input[2]}_dq")
        dq = helper.make_node(
            "DequantizeLinear",
            [
                g.add_constant(q, "bias_int32"),
                g.add_constant(step, "bias_step"),
                g.add_constant(np.zeros(q.shape, np.int32), "bias_zero"),
            ],
            [out],
            axis=0,
        )
        g.graph.node.insert(list(g.graph.node).index(node), dq)
        node.input[2] = out
        count += 1
    return count


# --------------------------------------------------------------------------------------------- the layouts


def cpu_layout(
    model: onnx.ModelProto, batches: Iterable[np.ndarray], method: str = "mse"
) -> tuple[onnx.ModelProto, dict]:
    """The layout onnxruntime fuses into integer kernels (module docstring); `batches` (input images) calibrate
    the new output quantizers. Returns the rewritten copy and what was done."""
    g = Graph(copy.deepcopy(model))
    folded, left = fold_batchnorm(g)
    g.drop_unused_constants()  # the folded norms' parameters
    report = {"bn_folded": folded, "bn_left": left, "activations_to_uint8": signed_to_uint8(g)}
    report["outputs_reused"], report["outputs_calibrated"] = quantize_outputs(g, batches, method)
    report["clamps_to_integer"] = clamps_to_integer(g)
    report["weights_transposed"] = fold_weight_transposes(g)
    report["matmuls_to_gemm"] = matmuls_to_gemm(g)
    report["weights_spread"] = spread_low_bit_weights(g)
    report["weights_uint8"] = widen_overflowing_weights(g)
    report["biases_int32"] = quantize_biases(g)
    g.drop_unused_constants()
    onnx.checker.check_model(g.model)
    return g.model, report


INT4_BLOCK_SIZES = (128, 64)  # the block sizes TensorRT's INT4 weights take, largest (fewest scales) first
INT4_OPSET = 21  # the first opset with INT4 tensors and blocked DequantizeLinear


def _int4_block(g: Graph, node: onnx.NodeProto) -> tuple[onnx.NodeProto, int, int] | None:
    """(weight DequantizeLinear, reduction axis, block size) where `node`, a MatMul or Gemm, can take its weight as
    TensorRT's INT4: 2-d integers within [-8, 7] behind a DequantizeLinear of their own, zero point 0, a step per
    tensor or per output channel, a reduction size that a block size divides and an even last dimension."""
    wdq = _weight_dq(g, node.input[1]) if len(node.input) > 1 else None
    if wdq is None or len(g.consumers(wdq.output[0])) != 1:
        return None
    q, step = g.constant(wdq.input[0]), g.constant(wdq.input[1])
    zero = g.optional_constant(wdq, 2, np.zeros(()))
    reduction = 1 if node.op_type == "Gemm" and _attr(node, "transB", 0) else 0
    if (
        q.ndim != 2
        or q.min() < -8
        or q.max() > 7
        or np.any(zero != 0)
        or q.shape[-1] % 2
        or (step.size > 1 and _attr(wdq, "axis", 1) % 2 != 1 - reduction)
    ):
        return None
    block = next((b for b in INT4_BLOCK_SIZES if q.shape[reduction] % b == 0), None)
    return None if block is None else (wdq, reduction, block)


def int4_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Store every MatMul/Gemm weight `_int4_block` accepts as INT4 with block scales (opset 21), TensorRT's
    weight-only INT4; returns the model (converted to opset 21 if any was) and how many. Each output channel's
    step is repeated over the blocks along the reduction axis, so the weights are exactly the trained ones."""
    g = Graph(model)
    if not any(_int4_block(g, n) for n in g.graph.node if n.op_type in ("MatMul", "Gemm")):
        return model, 0
    g = Graph(version_converter.convert_version(model, INT4_OPSET))
    count = 0
    for node in [n for n in g.graph.node if n.op_type in ("MatMul", "Gemm")]:
        if (found := _int4_block(g, node)) is None:
            continue
        wdq, reduction, block = found
        q, step = g.constant(wdq.input[0]), g.constant(wdq.input[1]).astype(np.float32)
        channels = np.broadcast_to(step.reshape(-1), (q.shape[1 - reduction],))
        scales = np.repeat(np.expand_dims(channels, reduction), q.shape[reduction] // block, axis=reduction)
        wdq.input[0] = g.add_constant(q.astype(ml_dtypes.int4), "w_int4")
        wdq.input[1] = g.add_constant(np.ascontiguousarray(scales), "w_block_step")
        _set_input(wdq, 2, g.add_constant(np.zeros(scales.shape, ml_dtypes.int4), "w_int4_zero"))
        _set_attr(wdq, "axis", reduction)
        _set_attr(wdq, "block_size", block)
        count += 1
    g.drop_unused_constants()
    return g.model, count


def quantize_before_transposes(g: Graph) -> int:
    """Q -> DQ -> Transpose on an activation (per-tensor parameters, each the only consumer of the one before)
    becomes Transpose -> Q -> DQ: the same values, since quantizing each element commutes with moving it; returns
    how many. The attention's K enters its matmul through a Transpose; at opset 21 onnxruntime's optimizer moves
    such a DequantizeLinear past the Transpose and writes a QuantizeLinear with a uint8 zero point for an int8
    output, and refuses the file (`output_dtype INT8 does not match y_zero_point type UINT8`)."""
    count = 0
    for t in [n for n in g.graph.node if n.op_type == "Transpose"]:
        dq = _activation_dq(g, t.input[0])
        if dq is None or g.only_consumer(dq.output[0]) is not t or _QParams.of(g, dq) is None:
            continue
        q = g.producer(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or g.only_consumer(q.output[0]) is not dq:
            continue
        out = t.output[0]
        t.input[0], t.output[0] = q.input[0], g.fresh(f"{out}_float")
        q.input[0], dq.output[0] = t.output[0], out
        g.graph.node.remove(t)
        g.graph.node.insert(list(g.graph.node).index(q), t)
        count += 1
    return count


def trt_layout(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """The layout TensorRT reads (module docstring): every activation Q/DQ symmetric int8 with zero point 0, and
    MatMul/Gemm weights that fit INT4 stored as INT4 (int4_weights). Returns the rewritten copy and how many
    quantizers moved, how many lost a bit (unsigned 8-bit) and how many weights are INT4."""
    g = Graph(copy.deepcopy(model))
    halved = []

    def convert(q: onnx.NodeProto, p: _QParams):
        if p.zero_point.dtype != np.uint8:
            return None
        low, top = _clamped_range(g, q, p)
        if low >= -128 and top <= 127:
            return p.scale, np.array(0, np.int8)
        halved.append(q.name)
        return 2 * p.scale, np.array(0, np.int8)

    moved = _requantize_pairs(g, convert)
    transposed = fold_weight_transposes(g)
    activations_transposed = quantize_before_transposes(g)
    g.drop_unused_constants()
    rewritten, int4 = int4_weights(g.model)
    onnx.checker.check_model(rewritten)
    return rewritten, {
        "unsigned_to_int8": moved,
        "unsigned_8bit_halved": len(halved),
        "weights_transposed": transposed,
        "transposes_before_quantizers": activations_transposed,
        "weights_int4": int4,
    }
