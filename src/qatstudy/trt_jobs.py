"""The TensorRT jobs: build an engine on the device, and benchmark engines there.

Each job first reads the device record (L4T release, TensorRT version, power mode, clocks) and checks the
TensorRT version; every result carries that record. Nothing is written until the device has answered and its
output has been parsed, and every file is written atomically, so a device that cannot be reached or a failed
build leaves no result behind.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from . import trt
from .io import atomic_path, read_json, write_json
from .provenance import with_tensorrt
from .records import BENCH_RUN_FIELDS
from .remote import Transport, pack, unpack


class TrtexecFailed(RuntimeError):
    """trtexec ran on the device but did not produce what was asked."""


def probe_device(transport: Transport, expected_version: str | None, log=print) -> dict:
    result = transport.run(trt.probe_script(transport.trtexec()), log=log)
    if result.returncode != 0:
        raise TrtexecFailed(
            f"reading the device record on {transport.describe()} failed (exit "
            f"{result.returncode}): {result.stderr.decode(errors='replace').strip()}"
        )
    device = trt.parse_probe(result.stdout.decode(errors="replace"))
    device["transport"] = transport.kind
    log(f"device on {transport.describe()}: {device}")
    if device["trt_version"] is None:
        raise TrtexecFailed(
            f"trtexec was not found on {transport.describe()} (looked on its PATH and in "
            f"{trt.TRTEXEC_DIR}; QATSTUDY_TRTEXEC names another path)"
        )
    trt.check_trt_version(device["trt_version"], expected_version, transport.describe())
    return device


def run_trtexec(
    transport: Transport,
    args: list[str],
    inputs: dict[str, bytes],
    wanted: list[str],
    *,
    power_interval_ms: int | None = None,
    log=print,
) -> tuple[dict, dict[str, bytes]]:
    """Copy `inputs` to a scratch folder on the device, run trtexec there, copy back what it wrote.
    Returns the parsed log and the files; raises unless trtexec passed and wrote every `wanted` file."""
    script = trt.trtexec_script(args, list(inputs), trtexec=transport.trtexec(), power_interval_ms=power_interval_ms)
    log(f"on {transport.describe()}: trtexec {' '.join(args)}")
    result = transport.run(script, pack(inputs), log=log)
    try:
        files = unpack(result.stdout)
    except tarfile.TarError:  # the script failed before it could pack anything
        files = {}
    text = files.get(trt.TRTEXEC_LOG, b"").decode(errors="replace")
    log(text)
    report = trt.parse_trtexec_log(text)
    missing = [name for name in wanted if name not in files]
    if result.returncode != 0 or report.get("status") != "passed" or missing:
        stderr = result.stderr.decode(errors="replace").strip()
        why = trt.log_tail(text) if text else stderr or "no output"
        raise TrtexecFailed(
            f"trtexec failed on {transport.describe()} (exit {result.returncode}"
            + (f", did not write {', '.join(missing)}" if missing else "")
            + f"):\n{why}"
        )
    return report, files


def build_engine(
    *,
    onnx: str,
    metrics: str,
    engine: str,
    record: str,
    layers: str,
    batch: int,
    settings: dict,
    trt_config: dict,
    provenance: dict | None = None,
    log=print,
) -> None:
    transport = Transport.from_environment(trt_config["transport"])
    device = probe_device(transport, trt_config["expected_version"], log)
    run_metrics = read_json(metrics)
    quantized = run_metrics["method"] != "fp32"
    args = trt.build_args(settings, quantized=quantized, batch=batch, image_shape=run_metrics["input_shape"])
    report, files = run_trtexec(
        transport, args, {trt.ONNX_FILE: Path(onnx).read_bytes()}, [trt.ENGINE_FILE, trt.LAYERS_FILE], log=log
    )
    layer_info = files[trt.LAYERS_FILE].decode(errors="replace")
    build = {
        **{k: run_metrics[k] for k in BENCH_RUN_FIELDS},
        "batch": batch,
        "input_shape": run_metrics["input_shape"],
        "precision": trt.precision_label(settings, quantized),
        "trtexec_args": args,
        "device": device,
        "trt_version": report.get("trt_version"),
        "device_name": report.get("device_name"),
        "compute_capability": report.get("compute_capability"),
        "build_s": report.get("build_s"),
        "engine_bytes": len(files[trt.ENGINE_FILE]),
        "onnx_bytes": Path(onnx).stat().st_size,
        "layer_precisions": trt.layer_precisions(layer_info),
        "warnings": report["warnings"],
        "provenance": with_tensorrt(provenance, device["trt_version"]),
    }
    with atomic_path(engine) as tmp:
        tmp.write_bytes(files[trt.ENGINE_FILE])
    with atomic_path(layers) as tmp:
        tmp.write_text(layer_info)
    write_json(record, build)  # last: the record says the engine beside it is whole
    log(f"engine: {build['engine_bytes']} bytes, layers by precision {build['layer_precisions']}")


def device_identity(device: dict) -> dict:
    """What an engine is tied to: the TensorRT version, and the Jetson's L4T release or the GPU's name (a driver
    update or another host with the same hardware and software runs the same engine)."""
    gpu_name = (device.get("gpu") or "").split(",")[0].strip() or None
    return {"trt_version": device.get("trt_version"), "l4t": device.get("l4t"), "gpu": gpu_name}


def check_same_device(build: dict, device: dict, where: str) -> None:
    """The host is not a rule param, so Snakemake does not rebuild engines when it changes: say so here."""
    built_on, here = device_identity(build["device"]), device_identity(device)
    if built_on != here:
        raise RuntimeError(
            f"the engine for batch {build['batch']} was built on another device ({built_on}) than "
            f"{where} ({here}): rebuild the engines there with `snakemake ... -R trt_build`"
        )


def benchmark_engines(
    *,
    engines: list[str],
    records: list[str],
    metrics: str,
    result: str,
    profiles: list[str],
    settings: dict,
    trt_config: dict,
    provenance: dict | None = None,
    log=print,
) -> None:
    transport = Transport.from_environment(trt_config["transport"])
    device = probe_device(transport, trt_config["expected_version"], log)
    builds = [read_json(r) for r in records]
    for build in builds:
        check_same_device(build, device, transport.describe())
    run_metrics = read_json(metrics)
    rows, layer_profiles = [], []
    for engine, build in zip(engines, builds):
        args = trt.bench_args(settings, batch=build["batch"], image_shape=build["input_shape"])
        report, files = run_trtexec(
            transport,
            args,
            {trt.ENGINE_FILE: Path(engine).read_bytes()},
            [trt.TIMES_FILE, trt.PROFILE_FILE],
            power_interval_ms=settings["power_interval_ms"],
            log=log,
        )
        samples = trt.parse_power_log(
            files.get(trt.POWER_LOG, b"").decode(errors="replace"), files.get(trt.POWER_SOURCE, b"").decode()
        )
        power = trt.power_summary(samples, trt.timed_window(report, settings["warmup_ms"]), settings["power_rails"])
        times = trt.parse_export_times(files[trt.TIMES_FILE].decode())
        row = trt.bench_row(
            report,
            times,
            power,
            batch=build["batch"],
            engine_bytes=build["engine_bytes"],
            onnx_bytes=build["onnx_bytes"],
            precision=build["precision"],
        )
        log(str(row))
        rows.append(row)
        layer_profiles.append(files[trt.PROFILE_FILE])
    for path, data in zip(profiles, layer_profiles):
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    write_json(
        result,
        {
            **{k: run_metrics[k] for k in BENCH_RUN_FIELDS},
            "device": device,
            "rows": rows,
            "provenance": with_tensorrt(provenance, device["trt_version"]),
        },
    )
