"""CPU inference backends for a deployed ONNX file, each as a function from an input batch to logits: onnxruntime
and OpenVINO (Intel's runtime for x86 INT8, which fuses Q/DQ pairs into integer kernels as TensorRT does with the
same explicit-quantization file). Also: OpenVINO's record of the precision each compiled layer runs in, and
deployed accuracy on the test split, read from the split file without torch (the benchmark's process keeps its
memory to the runtime's and the model's)."""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .ort_sessions import session

ONNXRUNTIME = "onnxruntime-cpu"
OPENVINO = "openvino-cpu"
# OpenVINO CPU plugin layer types that hold a model's weights: the ones a quantized model should run in integers
COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")
INTEGER_PRECISIONS = ("u8", "i8", "u4", "i4")

Predict = Callable[[np.ndarray], np.ndarray]


def openvino_model(path: str | Path, threads: int):
    """The file compiled for OpenVINO's CPU plugin. Float parts run in f32: on CPUs with bf16 (AVX-512 BF16, AMX)
    OpenVINO would otherwise run them in bf16, and the FP32 baseline would not be FP32."""
    import openvino as ov  # only the OpenVINO jobs load it

    config = {
        "INFERENCE_NUM_THREADS": max(1, threads),
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
    }
    return ov.Core().compile_model(str(path), "CPU", config)


def openvino_predictor(compiled) -> Predict:
    """A function from an input batch to the logits of an OpenVINO compiled model (openvino_model)."""
    request, output = compiled.create_infer_request(), compiled.output(0)
    return lambda x: request.infer({0: x})[output]


def predictor(backend: str, path: str | Path, threads: int) -> Predict:
    """A function from an input batch (float32, NCHW) to the model's logits on `backend`."""
    if backend == ONNXRUNTIME:
        sess = session(path, threads)
        return lambda x: sess.run(None, {"input": x})[0]
    if backend == OPENVINO:
        return openvino_predictor(openvino_model(path, threads))
    raise ValueError(f"unknown backend {backend!r}: one of {ONNXRUNTIME}, {OPENVINO}")


def precision_census(compiled) -> dict:
    """How many of the compiled model's compute layers (COMPUTE_LAYERS) run in each precision, from OpenVINO's
    runtime graph: `layers` maps "<layer type> <precision>" to a count; `integer_compute_layers` of
    `compute_layers` run in an integer precision. A float island in a quantized model shows as a compute layer in
    f32."""
    counts = collections.Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer_type = info["layerType"].astype(str)
        if layer_type in COMPUTE_LAYERS:
            counts[layer_type, info["runtimePrecision"].astype(str)] += 1
    return {
        "layers": {f"{layer} {precision}": n for (layer, precision), n in sorted(counts.items())},
        "compute_layers": sum(counts.values()),
        "integer_compute_layers": sum(n for (_, precision), n in counts.items() if precision in INTEGER_PRECISIONS),
    }


def test_split(data: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The test images, normalised as training normalised them (qatstudy.batches.Splits), and their labels."""
    with np.load(data) as splits:
        mean = splits["mean"].reshape(1, -1, 1, 1)
        std = splits["std"].reshape(1, -1, 1, 1)
        x = ((splits["x_test"].astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
        return x, splits["y_test"].astype(np.int64)


def predictions(predict: Predict, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """The argmax class of every image."""
    return np.concatenate(
        [predict(x[start : start + batch_size]).argmax(axis=1) for start in range(0, len(x), batch_size)]
    )


def top1(predicted: np.ndarray, labels: np.ndarray) -> float:
    """The share of correct classes, in %."""
    return 100.0 * int((predicted == labels).sum()) / len(labels)


def deployed_accuracy(predict: Predict, reference: Predict, data: str | Path) -> dict:
    """Test top-1 (%) on `predict`, and the share of test images on which its class agrees with `reference`'s."""
    x, y = test_split(data)
    predicted, expected = predictions(predict, x), predictions(reference, x)
    return {
        "deployed_top1": top1(predicted, y),
        "agreement": float((predicted == expected).mean()),
    }
