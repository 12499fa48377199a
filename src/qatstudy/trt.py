"""TensorRT through trtexec: the shell scripts the device runs, and parsers for what they print.

Text in, text out: no TensorRT, no GPU, no subprocesses, so everything here is tested on recorded output.
The formats are trtexec's (TensorRT 8.6 to 10.x, samples/common/sampleReporting.cpp, sampleEngines.cpp,
sampleInference.cpp, logging.h) and Jetson Linux's (tegrastats, nvpmodel, jetson_clocks,
/etc/nv_tegra_release); nvidia-smi's CSV stands in for tegrastats on a desktop GPU.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

# The config's trt settings that shape every engine, and those that shape its benchmark (rule params). An engine's
# float precision (fp16 or fp32) is a path wildcard of its own (rules/trt.smk).
BUILD_SETTINGS = ("strongly_typed", "workspace_mib")
BENCH_SETTINGS = (
    "warmup_ms",
    "duration_s",
    "iterations",
    "cuda_graph",
    "data_transfers",
    "spin_wait",
    "power_interval_ms",
    "power_rails",
)

# File names in a job's scratch folder on the device.
ONNX_FILE = "model.onnx"
ENGINE_FILE = "model.engine"
TRTEXEC_LOG = "trtexec.log"
TIMES_FILE = "times.json"
PROFILE_FILE = "profile.json"
LAYERS_FILE = "layers.json"
POWER_LOG = "power.log"
POWER_SOURCE = "power.source"

TRTEXEC_DIR = "/usr/src/tensorrt/bin"  # where JetPack installs trtexec, which is not on the default PATH
PERCENTILES = (50, 90, 99)
PROBE_MARK = "@@qatstudy "
REMOTE_EXIT_SSH = 255  # ssh's own failure status; a script's 255 is reported as 254 so the two never mix


# ----------------------------------------------------------------------------------------- commands


def shape_spec(batch: int, image_shape, input_name: str = "input") -> str:
    return f"{input_name}:" + "x".join(str(d) for d in (batch, *image_shape))


def precision_flags(settings: dict, quantized: bool) -> list[str]:
    """--fp16 lets layers outside Q/DQ pairs run in half precision; --int8 lets the layers between Q/DQ pairs
    (explicit quantization) run in INT8, which weakly typed networks in TensorRT 8.x and 10.x need. A strongly
    typed network takes every type from the ONNX file and accepts no precision flag."""
    if settings["strongly_typed"]:
        return ["--stronglyTyped"]
    return (["--fp16"] if settings["float_precision"] == "fp16" else []) + (["--int8"] if quantized else [])


def precision_label(settings: dict, quantized: bool) -> str:
    if settings["strongly_typed"]:
        return "strongly-typed"
    return "+".join((["int8"] if quantized else []) + [settings["float_precision"]])


def build_args(settings: dict, *, quantized: bool, batch: int, image_shape) -> list[str]:
    """trtexec arguments that build one engine for one batch size (a static optimization profile)."""
    shape = shape_spec(batch, image_shape)
    return [
        f"--onnx={ONNX_FILE}",
        f"--saveEngine={ENGINE_FILE}",
        f"--minShapes={shape}",
        f"--optShapes={shape}",
        f"--maxShapes={shape}",
        f"--memPoolSize=workspace:{settings['workspace_mib']}M",
        *precision_flags(settings, quantized),
        "--skipInference",
        "--profilingVerbosity=detailed",
        f"--exportLayerInfo={LAYERS_FILE}",
    ]


def bench_args(settings: dict, *, batch: int, image_shape) -> list[str]:
    """trtexec arguments that time an engine, then profile its layers in a separate run (the per-layer profiler
    adds synchronisations, so it stays out of the timed run)."""
    return [
        f"--loadEngine={ENGINE_FILE}",
        f"--shapes={shape_spec(batch, image_shape)}",
        f"--warmUp={settings['warmup_ms']}",
        f"--duration={settings['duration_s']}",
        f"--iterations={settings['iterations']}",
        "--percentile=" + ",".join(map(str, PERCENTILES)),
        f"--exportTimes={TIMES_FILE}",
        "--separateProfileRun",
        f"--exportProfile={PROFILE_FILE}",
        *(["--useCudaGraph"] if settings["cuda_graph"] else []),
        *([] if settings["data_transfers"] else ["--noDataTransfers"]),
        *(["--useSpinWait"] if settings["spin_wait"] else []),
    ]


def _quote(args) -> str:
    return " ".join(shlex.quote(str(a)) for a in args)


def probe_script(trtexec: str = "trtexec") -> str:
    """A POSIX shell script that prints what identifies the device, one marked section each; anything missing
    (no nvpmodel on a desktop GPU, jetson_clocks without root) leaves its section empty."""
    return f"""\
PATH="$PATH:{TRTEXEC_DIR}"
section() {{ printf '%s%s\\n' '{PROBE_MARK}' "$1"; }}
section nv_tegra_release; cat /etc/nv_tegra_release 2>/dev/null
section nvpmodel; nvpmodel -q 2>/dev/null || sudo -n nvpmodel -q 2>/dev/null
section jetson_clocks; jetson_clocks --show 2>/dev/null || sudo -n jetson_clocks --show 2>/dev/null
section trtexec; command -v {shlex.quote(trtexec)} && {shlex.quote(trtexec)} --help 2>&1 | head -n 1
section gpu; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null
section system; uname -srm; hostname
exit 0
"""


def trtexec_script(args, inputs: list[str], *, trtexec: str = "trtexec", power_interval_ms: int | None = None) -> str:
    """A POSIX shell script that unpacks a tar stream of the `inputs` files from stdin into a fresh scratch folder,
    runs trtexec there (sampling power with tegrastats, or nvidia-smi, every `power_interval_ms` if given), and
    writes a tar stream of every file it produced to stdout. Its exit status is trtexec's; the scratch folder is
    removed whatever happens."""
    sampler = (
        ""
        if power_interval_ms is None
        else f"""\
sampler=
if command -v tegrastats >/dev/null 2>&1; then
  echo tegrastats > {POWER_SOURCE}
  tegrastats --interval {int(power_interval_ms)} --logfile {POWER_LOG} >/dev/null 2>&1 & sampler=$!
elif command -v nvidia-smi >/dev/null 2>&1; then
  echo nvidia-smi > {POWER_SOURCE}
  nvidia-smi --query-gpu=timestamp,power.draw --format=csv,noheader,nounits -lms {int(power_interval_ms)} \\
    > {POWER_LOG} 2>/dev/null & sampler=$!
fi
"""
    )
    stop = (
        ""
        if power_interval_ms is None
        else 'if [ -n "$sampler" ]; then kill "$sampler" 2>/dev/null; wait "$sampler"; fi\n'
    )
    return f"""\
PATH="$PATH:{TRTEXEC_DIR}"
work=$(mktemp -d "${{TMPDIR:-/tmp}}/qatstudy-trt.XXXXXX") || exit 3
trap 'rm -rf "$work"' EXIT
trap 'exit 130' HUP INT TERM PIPE
cd "$work" && tar xf - || exit 3
{sampler}{shlex.quote(trtexec)} {_quote(args)} > {TRTEXEC_LOG} 2>&1
status=$?
{stop}rm -f {_quote(inputs)}
tar cf - . || exit 3
[ "$status" -eq {REMOTE_EXIT_SSH} ] && status=254
exit "$status"
"""


# ------------------------------------------------------------------------------------------- parsing


def version_from_number(number: int) -> str:
    """trtexec's banner number: major*1000 + minor*100 + patch up to TensorRT 8 (8601 is 8.6.1), and
    major*10000 + minor*100 + patch since (100300 is 10.3.0)."""
    major, rest = divmod(number, 10000 if number >= 10000 else 1000)
    minor, patch = divmod(rest, 100)
    return f"{major}.{minor}.{patch}"


_BANNER = re.compile(r"&&&& (RUNNING|PASSED|FAILED) TensorRT\.trtexec \[TensorRT v(\d+)\]")
_LOG_LINE = re.compile(r"^(?:\[(?P<time>\d\d/\d\d/\d{4}-\d\d:\d\d:\d\d)\] )?\[(?P<severity>[VIWEF])\] (?P<message>.*)$")
_STAT = re.compile(r"(min|max|mean|median|percentile\(([\d.]+)%\)) = (\S+) ms")
_SUMMARY_STATS = {
    "Latency": "latency_ms",
    "Enqueue Time": "enqueue_ms",
    "H2D Latency": "h2d_ms",
    "GPU Compute Time": "gpu_compute_ms",
    "D2H Latency": "d2h_ms",
}
_NUMBER = r"([-+\d.eE]+|nan|inf)"
_SCALARS = {  # message pattern -> report key
    re.compile(rf"^Throughput: {_NUMBER} qps"): "throughput_qps",
    re.compile(rf"^Total Host Walltime: {_NUMBER} s"): "host_walltime_s",
    re.compile(rf"^Total GPU Compute Time: {_NUMBER} s"): "gpu_compute_total_s",
    re.compile(rf"^Created engine with size: {_NUMBER} MiB"): "engine_mib",
    re.compile(rf"^Engine built in {_NUMBER} sec"): "build_s",
    re.compile(rf"^Created execution context with device memory size: {_NUMBER} MiB"): "context_device_mib",
    re.compile(rf"^Only allocated device memory enough for .*: {_NUMBER} MiB"): "context_device_mib",
}


def parse_stats(text: str) -> dict[str, float]:
    """'min = 0.7 ms, max = 1.1 ms, mean = ..., median = ..., percentile(90%) = ... ms' as {min, max, mean,
    median, p90, ...}."""
    stats = {}
    for name, percentile, value in _STAT.findall(text):
        key = f"p{float(percentile):g}" if percentile else name
        stats[key] = float(value)
    return stats


def _log_time(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%m/%d/%Y-%H:%M:%S")


def parse_trtexec_log(text: str) -> dict:
    """What one trtexec run printed: versions, device, engine size, build time, the performance summary, and its
    warnings and errors. Keys are absent where the run did not print them (a build prints no summary)."""
    report: dict = {"warnings": [], "errors": []}
    for line in text.splitlines():
        banner = _BANNER.search(line)
        if banner:
            report.setdefault("trt_version", version_from_number(int(banner.group(2))))
            if banner.group(1) != "RUNNING":
                report["status"] = banner.group(1).lower()
            continue
        match = _LOG_LINE.match(line.strip())
        if not match:
            continue
        message, severity = match["message"].strip(), match["severity"]
        if severity == "W" and message not in report["warnings"]:
            report["warnings"].append(message)
        elif severity in "EF":
            report["errors"].append(message)
        if severity != "I":
            continue
        if message.startswith("TensorRT version: "):
            report["trt_version"] = message.split(": ", 1)[1].split()[0]  # the library's, over the banner's
        elif message.startswith("Selected Device: "):
            report["device_name"] = message.split(": ", 1)[1]
        elif message.startswith("Compute Capability: "):
            report["compute_capability"] = message.split(": ", 1)[1]
        elif message == "Starting inference" and match["time"]:
            report["inference_started"] = _log_time(match["time"])
        elif message == "=== Performance summary ===" and match["time"]:
            report["timed_run_ended"] = _log_time(match["time"])  # printed right after the timed run
        else:
            name = message.split(": ", 1)[0]
            if name in _SUMMARY_STATS:
                report[_SUMMARY_STATS[name]] = parse_stats(message)
                continue
            for pattern, key in _SCALARS.items():
                found = pattern.match(message)
                if found:
                    report[key] = float(found.group(1))
    return report


def parse_export_times(text: str) -> list[dict[str, float]]:
    """--exportTimes: one record per timed query (warm-up excluded) with startEnqMs, ..., h2dMs, computeMs,
    d2hMs and latencyMs."""
    records = json.loads(text)
    if not isinstance(records, list) or not all("latencyMs" in r and "computeMs" in r for r in records):
        raise ValueError("not a trtexec --exportTimes file (expected a list of records with latencyMs and computeMs)")
    return records


# ----------------------------------------------------------------------------------------------- power


@dataclass(frozen=True)
class PowerSample:
    time: datetime | None
    rails_mw: dict[str, float]
    stamp_s: float = 0.0  # the span a time stamp covers: tegrastats stamps whole seconds


_TEGRA_TIME = re.compile(r"^(\d\d-\d\d-\d{4} \d\d:\d\d:\d\d) ")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)mW/(\d+)mW")
NVIDIA_SMI_RAIL = "GPU_BOARD"  # nvidia-smi's power.draw


def parse_tegrastats(text: str) -> list[PowerSample]:
    """tegrastats lines as printed on Jetson Orin (JetPack 5 and 6): an optional 'MM-DD-YYYY HH:MM:SS' stamp, then
    statistics, then each power rail as 'NAME <instant>mW/<average>mW'. Only the instant value is kept; the
    average is tegrastats' own running mean since it started."""
    samples = []
    for line in text.splitlines():
        rails = {name: float(instant) for name, instant, _average in _RAIL.findall(line)}
        if not rails:
            continue
        stamp = _TEGRA_TIME.match(line)
        samples.append(
            PowerSample(datetime.strptime(stamp.group(1), "%m-%d-%Y %H:%M:%S") if stamp else None, rails, stamp_s=1.0)
        )
    return samples


def parse_nvidia_smi_power(text: str) -> list[PowerSample]:
    """`nvidia-smi --query-gpu=timestamp,power.draw --format=csv,noheader,nounits` lines:
    '2024/06/12 10:00:00.123, 35.21' (watts); lines without a number ([N/A]) are skipped."""
    samples = []
    for line in text.splitlines():
        stamp, _, watts = line.partition(",")
        try:
            samples.append(
                PowerSample(
                    datetime.strptime(stamp.strip(), "%Y/%m/%d %H:%M:%S.%f"), {NVIDIA_SMI_RAIL: float(watts) * 1000.0}
                )
            )
        except ValueError:
            continue
    return samples


def parse_power_log(text: str | None, source: str | None) -> list[PowerSample]:
    if not text or not source:
        return []
    return parse_tegrastats(text) if source.strip() == "tegrastats" else parse_nvidia_smi_power(text)


def timed_window(report: dict, warmup_ms: float) -> tuple[datetime, datetime] | None:
    """The wall-clock span that surely lies inside trtexec's timed run. Its log stamps are whole seconds: the run
    started within a second after the 'Starting inference' stamp plus the warm-up, and ended no earlier than the
    stamp of the summary printed after it."""
    if "inference_started" not in report or "timed_run_ended" not in report:
        return None
    return (report["inference_started"] + timedelta(seconds=1, milliseconds=warmup_ms), report["timed_run_ended"])


def power_summary(
    samples: list[PowerSample], window: tuple[datetime, datetime] | None, rails: list[str] | None = None
) -> dict | None:
    """Mean power over the samples taken inside `window` (all of them where none is: a run shorter than the
    samples' resolution). The power of an inference is the sum of `rails`; by default VDD_IN, the module's input,
    where the module reports it (Orin NX, Orin Nano), else the sum of every rail reported (AGX Orin:
    VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0)."""
    if not samples:
        return None
    start, end = window if window else (None, None)
    inside = [
        s for s in samples if start and s.time and start <= s.time and s.time + timedelta(seconds=s.stamp_s) <= end
    ]
    used = inside or samples
    names = sorted({name for s in used for name in s.rails_mw})
    means = {name: float(np.mean([s.rails_mw[name] for s in used if name in s.rails_mw])) for name in names}
    summed = list(rails) if rails else (["VDD_IN"] if "VDD_IN" in means else names)
    missing = [name for name in summed if name not in means]
    if missing:
        raise ValueError(
            f"trt.power_rails names {', '.join(missing)}, which the device does not report "
            f"(it reports {', '.join(names)})"
        )
    return {
        "power_w": sum(means[name] for name in summed) / 1000.0,
        "power_rails": summed,
        "rail_mean_mw": means,
        "power_samples": len(used),
        "power_window": "timed run" if inside else "whole trtexec run",
    }


# ------------------------------------------------------------------------------------------ the device


def parse_l4t_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 3.0, GCID: ..., BOARD: generic, ...' is L4T 36.3.0."""
    match = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def parse_nvpmodel(text: str) -> dict | None:
    """`nvpmodel -q`: 'NV Power Mode: MAXN' and, on the next line, the mode's number."""
    match = re.search(r"NV Power Mode:\s*(\S+)(?:\s*\n\s*(\d+))?", text)
    if not match:
        return None
    return {"name": match.group(1), "id": int(match.group(2)) if match.group(2) else None}


def parse_jetson_clocks(text: str) -> dict | None:
    """`jetson_clocks --show`: the GPU's and memory controller's (EMC) min/max/current frequencies in Hz, and
    whether the GPU runs at its maximum (clocks locked by `sudo jetson_clocks`)."""
    clocks = {}
    for unit, low, high, current in re.findall(
        r"^(GPU|EMC) MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)", text, re.MULTILINE
    ):
        clocks[unit.lower()] = {"min_hz": int(low), "max_hz": int(high), "current_hz": int(current)}
    if not clocks:
        return None
    if "gpu" in clocks:
        clocks["gpu_at_max"] = clocks["gpu"]["current_hz"] == clocks["gpu"]["max_hz"]
    return clocks


def parse_probe(text: str) -> dict:
    """probe_script's output as the device record every result carries."""
    sections: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if line.startswith(PROBE_MARK):
            name = line[len(PROBE_MARK) :].strip()
            sections[name] = ""
        elif name:
            sections[name] += line + "\n"
    release = sections.get("nv_tegra_release", "").strip()
    trtexec_lines = sections.get("trtexec", "").strip().splitlines()
    banner = _BANNER.search(sections.get("trtexec", ""))
    system = sections.get("system", "").strip().splitlines()
    return {
        "l4t": parse_l4t_release(release),
        "nv_tegra_release": release.splitlines()[0] if release else None,
        "power_mode": parse_nvpmodel(sections.get("nvpmodel", "")),
        "clocks": parse_jetson_clocks(sections.get("jetson_clocks", "")),
        "trtexec": trtexec_lines[0] if trtexec_lines and not trtexec_lines[0].startswith("&&&&") else None,
        "trt_version": version_from_number(int(banner.group(2))) if banner else None,
        "gpu": sections.get("gpu", "").strip() or None,
        "system": system[0] if system else None,
        "hostname": system[1] if len(system) > 1 else None,
    }


def check_trt_version(actual: str | None, expected: str | None, where: str) -> None:
    """`expected` is a prefix of dotted components: '10.3' accepts 10.3.0 and 10.3.1, not 10.30.0."""
    if expected is None:
        return
    if actual is None:
        raise RuntimeError(
            f"could not read the TensorRT version of trtexec on {where} (is trtexec installed? "
            f"JetPack puts it in {TRTEXEC_DIR}; QATSTUDY_TRTEXEC names another)"
        )
    wanted = str(expected).split(".")
    if actual.split(".")[: len(wanted)] != wanted:
        raise RuntimeError(
            f"{where} has TensorRT {actual}, but trt.expected_version is {expected}: install the "
            "expected JetPack, or change trt.expected_version once the results are known comparable"
        )


def layer_precisions(layer_info: str) -> dict[str, int]:
    """Layers per precision, read from --exportLayerInfo with detailed profiling verbosity: the data type named in
    each layer's first input format ('Thirty-two wide channel vectorized row major Int8 format', 'Row major linear
    FP16 format', 'Float', ...). Reformatting and no-op layers count too."""
    counts: dict[str, int] = {}
    for layer in json.loads(layer_info).get("Layers", []):
        if not isinstance(layer, dict):  # layer names only: profilingVerbosity was not detailed
            continue
        inputs = layer.get("Inputs") or [{}]
        fmt = str(inputs[0].get("Format/Datatype", "")).lower()
        precision = next(
            (
                name
                for name, words in (
                    ("int8", ("int8",)),
                    ("fp8", ("fp8",)),
                    ("bf16", ("bf16",)),
                    ("fp16", ("fp16", "half")),
                    ("fp32", ("fp32", "float")),
                    ("int32", ("int32",)),
                )
                if any(w in fmt for w in words)
            ),
            "other",
        )
        counts[precision] = counts.get(precision, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------- results


def bench_row(
    report: dict,
    times: list[dict],
    power: dict | None,
    *,
    batch: int,
    engine_bytes: int,
    onnx_bytes: int,
    precision: str,
) -> dict:
    """One bench.csv row (the columns bench_cpu writes, backend 'tensorrt') plus TensorRT's own measures.

    Latency is per query of `batch` images, from --exportTimes (trtexec's latency: host-to-device copy, GPU
    compute, device-to-host copy; no copies with --noDataTransfers). Throughput is trtexec's queries per second
    times the batch. The model is the engine, built from an ONNX file of `onnx_bytes`. Memory is on the device: the
    engine plus its execution context's scratch memory. Energy per
    image is the mean power during the timed run over the images per second."""
    latency = np.asarray([t["latencyMs"] for t in times], dtype=float)
    compute = np.asarray([t["computeMs"] for t in times], dtype=float)
    throughput_ips = report["throughput_qps"] * batch
    context_bytes = int(round(report.get("context_device_mib", 0.0) * 2**20))
    row = {
        "backend": "tensorrt",
        "batch": batch,
        "threads": None,
        "iterations": len(times),
        "latency_ms_p50": float(np.percentile(latency, 50)),
        "latency_ms_p99": float(np.percentile(latency, 99)),
        "latency_ms_mean": float(latency.mean()),
        "throughput_ips": throughput_ips,
        "model_bytes": engine_bytes,
        "onnx_bytes": onnx_bytes,
        "peak_mem_bytes": engine_bytes + context_bytes,
        "gpu_compute_ms_p50": float(np.percentile(compute, 50)),
        "gpu_compute_ms_p99": float(np.percentile(compute, 99)),
        "precision": precision,
        "context_device_bytes": context_bytes,
        "trtexec_summary": {
            k: report[k]
            for k in ("throughput_qps", "latency_ms", "gpu_compute_ms", "enqueue_ms", "host_walltime_s")
            if k in report
        },
        "power_w": None,
        "energy_mj_per_image": None,
    }
    if power:
        row.update(power)
        row["energy_mj_per_image"] = power["power_w"] / throughput_ips * 1000.0
    return row


def log_tail(text: str, lines: int = 20) -> str:
    """The lines that say why a trtexec run failed: from its first error on (the parser's explanation follows
    its [E] lines unprefixed), else the end of its output."""
    output = text.strip().splitlines()
    first_error = next((i for i, line in enumerate(output) if re.search(r"\] \[[EF]\] |^\[[EF]\] ", line)), None)
    return "\n".join(output[first_error:][:lines] if first_error is not None else output[-lines:])
