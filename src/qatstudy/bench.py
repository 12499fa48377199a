"""Local deployment benchmark: onnxruntime on CPU, latency percentiles, throughput and memory; and side-by-side
latency of several models, for ratios.

Imports neither torch nor timm, so the process's memory is the runtime's and the model's.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np

from .backends import ONNXRUNTIME, predictor


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        return _status_bytes("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def benchmark_onnx(
    onnx_path: str | Path,
    input_shape: tuple[int, ...],
    batch_sizes: list[int],
    *,
    threads: int,
    warmup: int,
    iterations: int,
    seed: int = 0,
    backend: str = ONNXRUNTIME,
) -> list[dict]:
    """One row per batch size, on `backend` (qatstudy.backends). Peak memory: the process's peak RSS above its RSS
    before loading the model. `model_bytes` is what the runtime loads and `onnx_bytes` the ONNX file: the same file
    here, not for TensorRT (an engine built from an ONNX file)."""
    _reset_peak_rss()
    try:
        baseline = _status_bytes("VmRSS")
    except (OSError, KeyError):
        baseline = _peak_rss_bytes()
    predict = predictor(backend, onnx_path, threads)
    onnx_bytes = Path(onnx_path).stat().st_size
    rng = np.random.default_rng(seed)
    rows = []
    for batch in sorted(batch_sizes):
        x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
        for _ in range(warmup):
            predict(x)
        times = []
        for _ in range(iterations):
            start = time.perf_counter()
            predict(x)
            times.append((time.perf_counter() - start) * 1000.0)
        times_ms = np.asarray(times)
        rows.append(
            {
                "backend": backend,
                "batch": batch,
                "threads": threads,
                "iterations": iterations,
                "latency_ms_p50": float(np.percentile(times_ms, 50)),
                "latency_ms_p99": float(np.percentile(times_ms, 99)),
                "latency_ms_mean": float(times_ms.mean()),
                "throughput_ips": float(batch * 1000.0 / times_ms.mean()),
                "model_bytes": onnx_bytes,
                "onnx_bytes": onnx_bytes,
                "peak_mem_bytes": _peak_rss_bytes() - baseline,
            }
        )
    return rows


def interleaved_latency(
    onnx_paths: dict[str, str | Path],
    input_shape: tuple[int, ...],
    batch: int,
    *,
    threads: int,
    warmup: int,
    rounds: int,
    iterations: int,
    seed: int = 0,
    backend: str = ONNXRUNTIME,
) -> dict[str, dict]:
    """Median latency of several models timed in turns on the same batch, for ratios between them.

    Each of `rounds` rounds runs every model `iterations` times, so load from other processes falls on all of
    them alike. Per model: the p50 wall-clock milliseconds, and the p50 CPU milliseconds of this process (all its
    threads), which other processes' load inflates far less than wall-clock time."""
    predictors = {name: predictor(backend, path, threads) for name, path in onnx_paths.items()}
    x = np.random.default_rng(seed).standard_normal((batch, *input_shape)).astype(np.float32)
    for predict in predictors.values():
        for _ in range(warmup):
            predict(x)
    wall = {name: [] for name in predictors}
    cpu = {name: [] for name in predictors}
    for _ in range(rounds):
        for name, predict in predictors.items():
            for _ in range(iterations):
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                predict(x)
                wall[name].append(time.perf_counter() - start_wall)
                cpu[name].append(time.process_time() - start_cpu)
    return {
        name: {
            "batch": batch,
            "threads": threads,
            "runs": len(wall[name]),
            "wall_ms_p50": 1000.0 * float(np.median(wall[name])),
            "cpu_ms_p50": 1000.0 * float(np.median(cpu[name])),
        }
        for name in predictors
    }
