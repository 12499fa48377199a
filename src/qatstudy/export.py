"""ONNX export: FP32 and Q/DQ graphs, simplified with onnxsim, checked, and evaluated in onnxruntime.

Quantized layers export as clamp + QuantizeLinear/DequantizeLinear in 8-bit containers (see
LSQQuantizer._export_forward). After simplification each weight QuantizeLinear is folded into
an integer initializer, so the file stores weights as int8 and only DequantizeLinear remains. That reference
graph is written in two layouts (qdq.py): `model.onnx` for onnxruntime on CPU, which fuses it into integer
kernels, and `model_trt.onnx` (explicit INT8 quantization, weight-only INT4 where TensorRT takes it) for
TensorRT.
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

from . import qdq, quant
from .backends import ONNXRUNTIME, predictions, predictor, test_split, top1
from .batches import Splits
from .calibration import calibration_batches
from .checkpoints import load_checkpoint
from .io import atomic_path
from .ort_sessions import optimized_op_counts, session

OPSET = 17
CALIBRATION_BATCH = 128


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
        for init in [
            i
            for i in model.graph.initializer
            if i.name not in used and i.name not in {o.name for o in model.graph.output}
        ]:
            model.graph.initializer.remove(init)
        for node in [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] not in used]:
            model.graph.node.remove(node)
    return len(folded)


def _qdq_counts(model: onnx.ModelProto) -> tuple[int, int]:
    counts = op_counts(model)
    return counts.get("QuantizeLinear", 0), counts.get("DequantizeLinear", 0)


def _logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return session(model).run(None, {"input": x})[0]


MAX_DIFFERING_SHARE = 0.01  # of the check images: one flipped rounding moves one image's logits, not a broken graph


def _differs(actual: np.ndarray, expected: np.ndarray, tolerance: float) -> float | None:
    """The largest difference, if more than MAX_DIFFERING_SHARE of the images have a logit differing by more than
    `tolerance` x the largest expected logit; else None. Float re-association can put an activation on the other
    side of a rounding boundary and move that image's logits (a W8A8 ViT's exact export: by 0.46, largest logit
    4.34), which a maximum over all images would take for a broken graph."""
    per_image = np.abs(actual - expected).reshape(len(expected), -1).max(axis=1)
    if np.mean(per_image > tolerance * float(np.abs(expected).max())) > MAX_DIFFERING_SHARE:
        return float(per_image.max())
    return None


def simplify(exported: onnx.ModelProto, x: np.ndarray, *, tolerance: float, what: str) -> onnx.ModelProto:
    """onnxsim's simplification, checked: it keeps every QuantizeLinear and DequantizeLinear node and the outputs
    on `x` (`_differs`: re-associated float arithmetic can flip a rounding)."""
    simplified, ok = onnxsim.simplify(exported)
    if not ok:
        raise RuntimeError(f"onnxsim could not validate the simplified graph of {what}")
    if _qdq_counts(simplified) != _qdq_counts(exported):
        raise RuntimeError(
            f"onnxsim changed the Q/DQ nodes of {what}: (QuantizeLinear, DequantizeLinear) "
            f"{_qdq_counts(exported)} became {_qdq_counts(simplified)}"
        )
    if (diff := _differs(_logits(simplified, x), _logits(exported, x), tolerance)) is not None:
        raise RuntimeError(f"onnxsim changed the outputs of {what} by {diff:.3g}")
    return simplified


MIN_AGREEMENT = 0.99  # share of check images whose argmax must equal PyTorch's, for a graph meant to be exact
# The onnxruntime layout is not exact (new 8-bit output quantizers; qdq.cpu_layout), nor is the TensorRT layout
# where it halves unsigned 8-bit activations. Measured on the default study's W2A2 checkpoints (512 validation
# images): onnxruntime layout 93.2% (ResNet) and 95.3% (ViT), TensorRT layout 99.8% and 100%. A broken graph
# agrees by chance (a mobilevit_xxs layout agreed on 48.5% of images at the same top-1 as PyTorch).
MIN_APPROXIMATE_AGREEMENT = 0.85


def _compare(actual: np.ndarray, expected: np.ndarray, labels: np.ndarray) -> dict:
    return {
        "max_abs_diff_vs_torch": float(np.abs(actual - expected).max()),
        "argmax_agreement_vs_torch": float((actual.argmax(1) == expected.argmax(1)).mean()),
        "check_top1": 100.0 * float((actual.argmax(1) == labels).mean()),
    }


def check_predictions(
    what: str, actual: np.ndarray, expected: np.ndarray, labels: np.ndarray, *, minimum: float
) -> dict:
    """`_compare`'s figures for `actual` logits against PyTorch's `expected`, and a RuntimeError saying by how much
    it missed where fewer than `minimum` of the images have PyTorch's argmax: equal top-1 figures do not make equal
    predictions."""
    check = _compare(actual, expected, labels)
    agreement = check["argmax_agreement_vs_torch"]
    if agreement < minimum:
        torch_top1 = 100.0 * float((expected.argmax(1) == labels).mean())
        raise RuntimeError(
            f"{what} predicts as PyTorch's fake-quant model on {100 * agreement:.1f}% of {len(expected)} validation "
            f"images, {100 * (minimum - agreement):.1f} points short of the {100 * minimum:.1f}% required (top-1 "
            f"{check['check_top1']:.1f}%, PyTorch {torch_top1:.1f}%)"
        )
    return check


def _exported(model: torch.nn.Module, shape) -> onnx.ModelProto:
    """`model` in export mode (quantizers as clamp + Q/DQ), traced to ONNX with a dynamic batch and checked."""
    buffer = io.BytesIO()
    with quant.export_mode(model), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(
            model,
            (torch.zeros(1, *shape),),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    exported = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(exported)
    return exported


def _reference(
    exported: onnx.ModelProto, x: np.ndarray, expected: np.ndarray, labels: np.ndarray, *, tolerance: float, what
) -> tuple[onnx.ModelProto, int, dict]:
    """The simplified graph with integer weights (the layouts' common source), how many weight quantizers folded,
    and its check against PyTorch: it must compute what PyTorch computes (`_differs`, and MIN_AGREEMENT)."""
    reference = simplify(exported, x, tolerance=tolerance, what=what)
    folded = fold_weight_quantizers(reference)
    onnx.checker.check_model(reference)
    actual = _logits(reference, x)
    if (diff := _differs(actual, expected, tolerance)) is not None:
        raise RuntimeError(
            f"ONNX output differs from PyTorch by {diff:.3g} (largest logit {np.abs(expected).max():.3g}) for {what}"
        )
    check = check_predictions(f"the exported graph of {what}", actual, expected, labels, minimum=MIN_AGREEMENT)
    return reference, folded, check


def _is_exact(name: str, layout: dict) -> bool:
    """Whether a layout computes the trained model's function (qdq's module docstring)."""
    return name == "trt" and layout["unsigned_8bit_halved"] == 0


def _check_layout(name: str, graph: onnx.ModelProto, layout: dict, x, expected, labels, *, tolerance: float, what):
    """A layout's check: the argmax of MIN_AGREEMENT of the images where it is exact (and `_differs`' logit
    tolerance), of MIN_APPROXIMATE_AGREEMENT elsewhere."""
    actual = _logits(graph, x)
    exact = _is_exact(name, layout)
    if exact and (diff := _differs(actual, expected, tolerance)) is not None:
        raise RuntimeError(f"the {name} layout of {what} differs from PyTorch by {diff:.3g}")
    minimum = MIN_AGREEMENT if exact else MIN_APPROXIMATE_AGREEMENT
    return {
        **check_predictions(f"the {name} layout of {what}", actual, expected, labels, minimum=minimum),
        "agreement_required": minimum,
    }


def export_onnx(
    checkpoint: str | Path,
    out_path: str | Path,
    trt_path: str | Path,
    *,
    data: str | Path,
    calib_images: int = 1024,
    calib_method: str = "mse",
    check_batch: int = 512,
    tolerance: float = 0.05,
    seed: int = 0,
) -> dict:
    """Export a checkpoint as the onnxruntime layout (`out_path`) and the TensorRT layout (`trt_path`), both
    simplified and checked against PyTorch on `check_batch` validation images; the onnxruntime layout's new
    output quantizers calibrate on `calib_images` training images of `data` by `calib_method` (qdq.cpu_layout).

    Every check compares predictions image by image (`check_predictions`). The reference graph (Q/DQ where training
    quantized) must compute what PyTorch computes: float round-off upstream of a quantizer (LayerNorm, softmax) can
    move a value across a rounding boundary and flip one integer step, so an image's logits may differ, but more
    than MAX_DIFFERING_SHARE of the images differing by over `tolerance` x the largest logit means a broken export
    (`_differs`), and so does an argmax differing on more than 1 - MIN_AGREEMENT of them. The TensorRT layout is
    held to the same where it is exact; the onnxruntime layout (new 8-bit output quantizers) and a TensorRT layout
    that halved unsigned 8-bit steps are not exact, and at 2 or 3 bits one flipped step changes many images'
    predictions, so they must agree on MIN_APPROXIMATE_AGREEMENT of the images: that catches a broken layout, not
    a small loss, which the test split's top-1 (measured separately, for accuracy.csv) and the agreement recorded
    here show. Nothing is written unless every check passes.
    """
    model, ckpt = load_checkpoint(checkpoint)
    exported = _exported(model, ckpt["image_shape"])
    splits = Splits(data)
    x, labels = splits.x["val"][:check_batch], splits.y["val"][:check_batch].numpy()  # real images, as calibrated
    with torch.no_grad():
        expected = model(x).numpy()
    x = x.numpy()
    what = str(checkpoint)
    reference, folded, reference_check = _reference(exported, x, expected, labels, tolerance=tolerance, what=what)
    batches = (
        b.numpy() for b in calibration_batches(splits, images=calib_images, batch_size=CALIBRATION_BATCH, seed=seed)
    )
    flavours = {"cpu": qdq.cpu_layout(reference, batches, calib_method), "trt": qdq.trt_layout(reference)}
    checks = {
        name: _check_layout(name, graph, layout, x, expected, labels, tolerance=tolerance, what=what)
        for name, (graph, layout) in flavours.items()
    }
    for (graph, _), path in zip(flavours.values(), (out_path, trt_path)):
        with atomic_path(path) as tmp:
            onnx.save(graph, str(tmp))
    ort_ops = optimized_op_counts(flavours["cpu"][0])
    exported_q = _qdq_counts(exported)[0]
    return {
        **checks["cpu"],
        "check_torch_top1": 100.0 * float((expected.argmax(1) == labels).mean()),
        "check_images": len(x),
        "reference_argmax_agreement_vs_torch": reference_check["argmax_agreement_vs_torch"],
        "onnx_bytes": Path(out_path).stat().st_size,
        "opset": OPSET,
        **quant.model_size_bytes(model),
        "quantize_nodes_exported": exported_q,
        "quantize_nodes_simplified": exported_q,
        "weight_quantizers_folded": folded,
        "dequantize_nodes": _qdq_counts(reference)[1],
        "nodes_exported": len(exported.graph.node),
        "nodes_simplified": len(reference.graph.node),
        "layout": flavours["cpu"][1],
        "ort_ops": {op: n for op, n in sorted(ort_ops.items()) if op in qdq.FUSED_OPS + qdq.FLOAT_LAYER_OPS},
        "trt_onnx_bytes": Path(trt_path).stat().st_size,
        "trt_layout": flavours["trt"][1],
        **{f"trt_{k}": v for k, v in checks["trt"].items()},
    }


def onnx_top1(onnx_path: str | Path, data: str | Path, *, threads: int = 1, batch_size: int = 500) -> float:
    """Deployed accuracy: top-1 of the ONNX model on the test split, in onnxruntime."""
    x, y = test_split(data)
    return top1(predictions(predictor(ONNXRUNTIME, onnx_path, threads), x, batch_size), y)
