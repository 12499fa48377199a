"""The CPU backends on the export tests' models: OpenVINO runs the TensorRT-layout file as onnxruntime does, its
precision census tells integer from float layers, and the benchmark names the backend it timed."""

from __future__ import annotations

import pytest

from qatstudy import backends, bench
from test_export import IMAGE_SHAPE, QUANT_LAYERS, art  # noqa: F401  (the module-scoped fixture)


@pytest.mark.parametrize("tag", ["fp32", "w8a8", "w4a4"])
def test_openvino_predicts_as_onnxruntime_on_the_same_file(art, tag):  # noqa: F811
    path = art["trt"][tag]
    predict = backends.predictor(backends.OPENVINO, path, threads=1)
    reference = backends.predictor(backends.ONNXRUNTIME, path, threads=1)
    accuracy = backends.deployed_accuracy(predict, reference, art["data"])
    assert accuracy["agreement"] >= 0.95  # 40 test images: at most two may differ at a rounding tie
    assert 0 <= accuracy["deployed_top1"] <= 100


def test_openvino_census_counts_the_layers_that_run_in_integers(art):  # noqa: F811
    fp32 = backends.precision_census(backends.openvino_model(art["trt"]["fp32"], threads=1))
    assert (fp32["compute_layers"], fp32["integer_compute_layers"]) == (QUANT_LAYERS, 0)
    assert all(layer.endswith(" f32") for layer in fp32["layers"])
    w8a8 = backends.precision_census(backends.openvino_model(art["trt"]["w8a8"], threads=1))
    assert (w8a8["compute_layers"], w8a8["integer_compute_layers"]) == (QUANT_LAYERS, QUANT_LAYERS)


def test_test_split_is_normalised_as_for_training(art):  # noqa: F811
    x, y = backends.test_split(art["data"])
    expected = art["splits"]
    assert x.shape == tuple(expected.x["test"].shape) and (y == expected.y["test"].numpy()).all()
    assert abs(x - expected.x["test"].numpy()).max() < 1e-5


@pytest.mark.parametrize("backend", [backends.ONNXRUNTIME, backends.OPENVINO])
def test_benchmark_rows_name_the_backend(art, backend):  # noqa: F811
    rows = bench.benchmark_onnx(
        art["trt"]["w8a8"], IMAGE_SHAPE, [1, 4], threads=1, warmup=1, iterations=3, backend=backend
    )
    assert [(r["backend"], r["batch"]) for r in rows] == [(backend, 1), (backend, 4)]
    assert all(r["latency_ms_p99"] >= r["latency_ms_p50"] > 0 for r in rows)


def test_an_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        backends.predictor("tensorrt", "model.onnx", threads=1)
