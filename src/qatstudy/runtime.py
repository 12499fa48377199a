"""onnxruntime sessions configured the same way for accuracy runs and benchmarks."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort


def session(model: onnx.ModelProto | str | Path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.set_denormal_as_zero", "1")  # denormals slow CPUs tenfold
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
