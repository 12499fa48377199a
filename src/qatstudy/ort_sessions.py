"""onnxruntime sessions configured the same way for accuracy runs and benchmarks."""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

# onnxruntime fuses DequantizeLinear(integer weight) -> MatMul into MatMulNBits when the MatMul's other input is float
# (an LSQ+ activation, shifted back by its offset after its DequantizeLinear; the TensorRT file's INT4 weights). Its
# accuracy level is the type the kernel computes in: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8, and this session
# option sets it for the fused nodes, default 4: the float activations re-quantized to int8 per block, which is not
# the function the file states (about 15% of a W4A4 LSQ+ ViT's check images changed prediction). fp32 computes
# DQ(w) x a as written.
MATMULNBITS_ACCURACY_KEY = "session.qdq_matmulnbits_accuracy_level"
MATMULNBITS_ACCURACY_FP32 = "1"


def _options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.set_denormal_as_zero", "1")  # denormals slow CPUs tenfold
    options.add_session_config_entry(MATMULNBITS_ACCURACY_KEY, MATMULNBITS_ACCURACY_FP32)
    return options


def _source(model: onnx.ModelProto | str | Path):
    return model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)


def session(model: onnx.ModelProto | str | Path, threads: int = 1) -> ort.InferenceSession:
    return ort.InferenceSession(_source(model), _options(threads), providers=["CPUExecutionProvider"])


def optimized_op_counts(model: onnx.ModelProto | str | Path) -> dict[str, int]:
    """How many nodes of each type the graph onnxruntime actually runs has: after its optimizations, fused Q/DQ
    groups appear as QLinearConv, QGemm, MatMulIntegerToFloat and the like."""
    options = _options(1)
    options.log_severity_level = 3  # it warns that an optimized model is specific to this machine: known
    with tempfile.TemporaryDirectory() as folder:
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        ort.InferenceSession(_source(model), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    return dict(collections.Counter(node.op_type for node in optimized.graph.node))
