"""ONNX export: FP32 and Q/DQ graphs, simplified with onnxsim, checked, and evaluated in onnxruntime.

Quantized layers export as clamp + QuantizeLinear/DequantizeLinear in 8-bit containers (see
LSQQuantizer._export_forward). After simplification each weight QuantizeLinear is folded into
an integer initializer, so the file stores weights as int8 and only DequantizeLinear remains.
"""

from __future__ import annotations

import collections
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxsim
import torch
from onnx import numpy_helper

from . import quant
from .batches import Splits
from .io import atomic_path
from .runtime import session
from .stages import load_checkpoint

OPSET = 17


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(collections.Counter(node.op_type for node in model.graph.node))


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def fold_weight_quantizers(model: onnx.ModelProto) -> int:
    """Replace QuantizeLinear(constant) by its integer result as an initializer; returns how many."""
    constants = _constants(model)
    folded = []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or not all(name in constants for name in node.input if name):
            continue
        x, scale = constants[node.input[0]], constants[node.input[1]]
        # the zero point is optional in ONNX; absent, it is a uint8 zero
        has_zero_point = len(node.input) > 2 and node.input[2]
        zero_point = constants[node.input[2]] if has_zero_point else np.zeros((), np.uint8)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * x.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero_point.reshape(shape).astype(np.int32)
        else:
            zero = zero_point.astype(np.int32)
        info = np.iinfo(zero_point.dtype)
        q = np.clip(np.rint(x / scale) + zero, info.min, info.max).astype(zero_point.dtype)
        model.graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
        folded.append(node)
    for node in folded:
        model.graph.node.remove(node)
    if folded:  # drop constants no longer used by any node
        used = {name for node in model.graph.node for name in node.input}
        for init in [i for i in model.graph.initializer if i.name not in used and i.name not in
                     {o.name for o in model.graph.output}]:
            model.graph.initializer.remove(init)
        for node in [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] not in used]:
            model.graph.node.remove(node)
    return len(folded)


def export_onnx(checkpoint: str | Path, out_path: str | Path, *, check_batch: int = 8, tolerance: float = 0.05,
                seed: int = 0) -> dict:
    """Export a checkpoint to a simplified ONNX file; verifies onnxruntime reproduces PyTorch.

    Float round-off upstream of a quantizer (LayerNorm, softmax) can move a value across a
    rounding boundary and flip one integer step, so logits may differ slightly; a difference
    above `tolerance` x the largest logit means a broken export. Accuracy is compared separately.
    """
    model, ckpt = load_checkpoint(checkpoint)
    shape = ckpt["image_shape"]
    example = torch.zeros(1, *shape)
    buffer = io.BytesIO()
    with quant.export_mode(model), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    exported = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(exported)
    raw_counts = op_counts(exported)
    simplified, ok = onnxsim.simplify(exported)
    if not ok:
        raise RuntimeError(f"onnxsim could not validate the simplified graph of {checkpoint}")
    sim_counts = op_counts(simplified)
    folded = fold_weight_quantizers(simplified)
    onnx.checker.check_model(simplified)
    # the deployed graph must compute what PyTorch computes
    x = torch.randn(check_batch, *shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model(x).numpy()
    actual = session(simplified).run(None, {"input": x.numpy()})[0]
    max_diff = float(np.abs(actual - expected).max())
    if max_diff > tolerance * float(np.abs(expected).max()):
        raise RuntimeError(f"ONNX output differs from PyTorch by {max_diff:.3g} (largest logit "
                           f"{np.abs(expected).max():.3g}) for {checkpoint}")
    with atomic_path(out_path) as tmp:
        onnx.save(simplified, str(tmp))
    q = lambda counts: counts.get("QuantizeLinear", 0)  # noqa: E731
    return {"argmax_agreement_vs_torch": float((actual.argmax(1) == expected.argmax(1)).mean()), "onnx_bytes": Path(out_path).stat().st_size, "opset": OPSET, "max_abs_diff_vs_torch": max_diff,
            "quantize_nodes_exported": q(raw_counts), "quantize_nodes_simplified": q(sim_counts),
            "weight_quantizers_folded": folded, "dequantize_nodes": op_counts(simplified).get("DequantizeLinear", 0),
            "nodes_exported": sum(raw_counts.values()), "nodes_simplified": sum(op_counts(simplified).values())}


def onnx_top1(onnx_path: str | Path, data: str | Path, *, threads: int = 1, batch_size: int = 500) -> float:
    """Deployed accuracy: top-1 of the ONNX model on the test split, in onnxruntime."""
    splits = Splits(data)
    sess = session(onnx_path, threads)
    x, y = splits.x["test"].numpy(), splits.y["test"].numpy()
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = sess.run(None, {"input": x[start: start + batch_size]})[0]
        correct += int((logits.argmax(axis=1) == y[start: start + batch_size]).sum())
    return 100.0 * correct / len(y)
