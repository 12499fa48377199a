"""Result tables, the summary tables (Markdown and LaTeX) and atomic writes, from hand-written run JSONs
laid out as the workflow writes them (runs/<model>/seed<seed>/<variant>/{metrics,onnx,bench_cpu}.json).
The charts have their own tests (test_charts.py)."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pandas as pd
import pytest

from qatstudy.aggregate import accuracy_table, bench_table, deployment_table, summary_markdown, summary_tables
from qatstudy.io import write_csv, write_text
from qatstudy.tables import latex_table, markdown_table

MODELS = {
    "resnet_t": ("cnn", "resnet10t", 1_234_567, 4_938_268),
    "vit_t": ("vit", "vit_convstem_tiny", 200_000, 800_000),
}
VARIANTS = {"fp32": ("fp32", 32, 32), "ptq_w4a4": ("ptq", 4, 4), "qat_w4a4": ("qat", 4, 4), "qat_w8a8": ("qat", 8, 8)}
DEPLOYED = ("fp32", "qat_w4a4", "qat_w8a8")
BASE_TOP1 = {"fp32": 90.0, "ptq_w4a4": 40.0, "qat_w4a4": 88.0, "qat_w8a8": 89.5}
BATCHES = (1, 64)
NOT_EXPORTED = ("vit_t", 1, "qat_w8a8")  # benchmarked but without an onnx.json


def top1(model: str, variant: str, seed: int) -> float:
    return BASE_TOP1[variant] - (5.0 if model == "vit_t" else 0.0) + 2.0 * seed


def packed(model: str, w_bits: int) -> int:
    fp32_bytes = MODELS[model][3]
    return fp32_bytes if w_bits == 32 else fp32_bytes * w_bits // 32 + 10_000


def onnx_bytes(model: str, w_bits: int) -> int:
    return MODELS[model][3] + 1000 if w_bits == 32 else MODELS[model][3] // 4 + 5000


def latency(model: str, w_bits: int, batch: int, seed: int) -> float:
    return (2.0 if model == "vit_t" else 1.0) * batch * (0.5 if w_bits < 32 else 1.0) + 0.1 * seed


def _write(path: Path, data: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return str(path)


def make_runs(root: Path, seeds=(0, 1)) -> dict[str, list[str]]:
    files = {"metrics": [], "onnx": [], "bench": []}
    for model, (family, arch, params, fp32_bytes) in MODELS.items():
        for seed in seeds:
            for variant, (method, w, a) in VARIANTS.items():
                folder = root / "runs" / model / f"seed{seed}" / variant
                identity = {
                    "model": model,
                    "family": family,
                    "arch": arch,
                    "kwargs": {},
                    "method": method,
                    "w_bits": w,
                    "a_bits": a,
                    "seed": seed,
                }
                metrics = {
                    **identity,
                    "input_shape": [1, 28, 28],
                    "params": params,
                    "val_top1": top1(model, variant, seed) + 1,
                    "test_top1": top1(model, variant, seed),
                    "fp32_bytes": fp32_bytes,
                    "packed_bytes": packed(model, w),
                }
                if method != "fp32":
                    metrics["quant"] = {
                        "w_bits": w,
                        "a_bits": a,
                        "first_last_bits": 8,
                        **({"depthwise_input_bits": 8} if model == "resnet_t" else {}),
                    }
                if method == "ptq":
                    metrics.update(calibration="mse", calib_images=512, calib_time_s=1.5)
                else:
                    metrics.update(
                        history=[
                            {
                                "epoch": 1,
                                "train_loss": 0.5,
                                "val_top1": 80.0,
                                "epoch_time_s": 1.0,
                                "images_per_s": 100.0,
                            }
                        ],
                        best_epoch=1,
                        train_time_s=1.0,
                    )
                if method == "qat":
                    metrics["objective"] = {
                        "distill_weight": 0.0,
                        "freeze_threshold": 0.02 if model == "vit_t" else None,
                    }
                files["metrics"].append(_write(folder / "metrics.json", metrics))
                if variant not in DEPLOYED:
                    continue
                if (model, seed, variant) != NOT_EXPORTED:
                    files["onnx"].append(
                        _write(
                            folder / "onnx.json",
                            {
                                "onnx_top1": top1(model, variant, seed) - 0.5,
                                "onnx_bytes": onnx_bytes(model, w),
                                "opset": 17,
                                "max_abs_diff_vs_torch": 1e-3,
                                "argmax_agreement_vs_torch": 1.0,
                            },
                        )
                    )
                rows = [
                    {
                        "backend": "onnxruntime-cpu",
                        "batch": b,
                        "threads": 1,
                        "iterations": 50,
                        "latency_ms_p50": latency(model, w, b, seed),
                        "latency_ms_p99": 1.5 * latency(model, w, b, seed),
                        "latency_ms_mean": 1.1 * latency(model, w, b, seed),
                        "throughput_ips": b * 1000 / (1.1 * latency(model, w, b, seed)),
                        "model_bytes": onnx_bytes(model, w),
                        "onnx_bytes": onnx_bytes(model, w),
                        "peak_mem_bytes": 3_000_000 + b * 1000,
                    }
                    for b in BATCHES
                ]
                files["bench"].append(
                    _write(
                        folder / "bench_cpu.json",
                        {
                            **{k: identity[k] for k in ("model", "family", "method", "w_bits", "a_bits", "seed")},
                            "packed_bytes": packed(model, w),
                            "rows": rows,
                        },
                    )
                )
    return files


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    files = make_runs(tmp_path_factory.mktemp("study"))
    shuffled = {k: random.Random(1).sample(v, len(v)) for k, v in files.items()}  # order must not matter
    return shuffled


@pytest.fixture(scope="module")
def tables(runs):
    return accuracy_table(runs["metrics"], runs["onnx"]), bench_table(runs["bench"])


# ---------------------------------------------------------------------------------------------
# 1. accuracy table


def test_accuracy_table_rows_and_onnx_columns(tables):
    acc, _ = tables
    required = ["model", "family", "method", "w_bits", "a_bits", "seed", "top1", "onnx_top1"]
    assert set(required) <= set(acc.columns)
    assert len(acc) == len(MODELS) * 2 * len(VARIANTS)
    assert not acc.duplicated(["model", "method", "w_bits", "a_bits", "seed"]).any()
    for r in acc.itertuples():
        variant = "fp32" if r.method == "fp32" else f"{r.method}_w{r.w_bits}a{r.a_bits}"
        assert r.family == MODELS[r.model][0] and r.arch == MODELS[r.model][1]
        assert r.top1 == top1(r.model, variant, r.seed)
        assert r.val_top1 == r.top1 + 1
        assert r.params == MODELS[r.model][2] and r.packed_bytes == packed(r.model, r.w_bits)
        exported = variant in DEPLOYED and (r.model, r.seed, variant) != NOT_EXPORTED
        if exported:
            assert r.onnx_top1 == top1(r.model, variant, r.seed) - 0.5
            assert r.onnx_bytes == onnx_bytes(r.model, r.w_bits)
        else:
            assert pd.isna(r.onnx_top1) and pd.isna(r.onnx_bytes)


def test_accuracy_table_quant_column(tables):
    acc, _ = tables
    assert acc[acc.method == "fp32"].quant.isna().all()
    quantized = acc[acc.method != "fp32"]
    assert set(quantized[quantized.model == "resnet_t"].quant) == {'{"depthwise_input_bits": 8, "first_last_bits": 8}'}
    assert set(quantized[quantized.model == "vit_t"].quant) == {'{"first_last_bits": 8}'}


def test_accuracy_table_objective_column(tables):
    acc, _ = tables
    assert acc[acc.method != "qat"].objective.isna().all()
    qat = acc[acc.method == "qat"]
    assert set(qat[qat.model == "vit_t"].objective) == {'{"distill_weight": 0.0, "freeze_threshold": 0.02}'}


def test_top1_note_names_quant_and_objective_options_that_differ_between_models(tables, tmp_path):
    acc, b = tables
    note = summary_tables(acc, b, qat_bits=4)["top1_by_bits"].note
    assert (
        "Quant options that differ between models (accuracy.csv, quant column): depthwise_input_bits: resnet_t 8, "
        "vit_t –. QAT objective options that differ between models (accuracy.csv, objective column): "
        "freeze_threshold: resnet_t –, vit_t 0.02."
    ) in note
    assert "first_last_bits" not in note and "distill_weight" not in note  # the same for both models
    alike = acc.assign(
        quant=acc.quant.where(acc.quant.isna(), '{"first_last_bits": 8}'),
        objective=acc.objective.where(acc.objective.isna(), '{"distill_weight": 0.0}'),
    )
    assert "options" not in summary_tables(alike, b, qat_bits=4)["top1_by_bits"].note


def test_accuracy_table_sorted(tables):
    acc, _ = tables
    keys = list(zip(acc.family, acc.model, acc.method, -acc.w_bits, acc.seed))
    assert keys == sorted(keys)
    assert acc.index.tolist() == list(range(len(acc)))
    assert acc.iloc[0][["model", "method", "seed"]].tolist() == ["resnet_t", "fp32", 0]


def test_accuracy_table_without_onnx_files(runs):
    acc = accuracy_table(runs["metrics"], [])
    assert len(acc) == len(runs["metrics"]) and acc.onnx_top1.isna().all()


# ---------------------------------------------------------------------------------------------
# 2. bench table


def test_bench_table(tables, runs):
    _, b = tables
    required = [
        "model",
        "family",
        "method",
        "w_bits",
        "a_bits",
        "backend",
        "batch",
        "latency_ms_p50",
        "latency_ms_p99",
        "throughput_ips",
        "model_bytes",
        "peak_mem_bytes",
    ]
    assert set(required) <= set(b.columns)
    assert len(b) == len(runs["bench"]) * len(BATCHES)
    assert sorted(set(b.batch)) == list(BATCHES)
    for r in b.itertuples():
        assert r.latency_ms_p50 == latency(r.model, r.w_bits, r.batch, r.seed)
        assert r.model_bytes == r.onnx_bytes == onnx_bytes(r.model, r.w_bits) and r.backend == "onnxruntime-cpu"
        assert r.packed_bytes == packed(r.model, r.w_bits)  # the b-bit store next to the file
        assert r.family == MODELS[r.model][0]
    keys = list(zip(b.family, b.model, b.method, -b.w_bits, b.batch))
    assert keys == sorted(keys)
    assert set(zip(b.method, b.precision)) == {("fp32", "fp32"), ("qat", "int8")}  # what onnxruntime computes in


def test_bench_table_keeps_tensorrt_precisions_apart(tmp_path):
    """The FP32 model's FP32 and FP16 engines are two rows of the deployment table, not one averaged."""
    identity = {
        "model": "resnet_t",
        "family": "cnn",
        "method": "fp32",
        "w_bits": 32,
        "a_bits": 32,
        "seed": 0,
        "packed_bytes": 100,
    }
    files = [
        _write(
            tmp_path / f"bench_trt_{p}.json",
            {
                **identity,
                "rows": [
                    {
                        "backend": "tensorrt",
                        "precision": p,
                        "batch": 1,
                        "threads": None,
                        "latency_ms_p50": ms,
                        "latency_ms_p99": ms,
                        "latency_ms_mean": ms,
                        "throughput_ips": 1000 / ms,
                        "model_bytes": 10,
                        "onnx_bytes": 20,
                        "peak_mem_bytes": 30,
                    }
                ],
            },
        )
        for p, ms in (("fp32", 0.4), ("fp16", 0.25))
    ]
    b = bench_table(files)
    assert list(b.precision) == ["fp16", "fp32"] and list(b.latency_ms_p50) == [0.25, 0.4]
    rows = _table(markdown_table(deployment_table(b)), "Model | Variant")
    assert [(r["Variant"], r["Backend"], r["Precision"], r["Latency p50 (ms)"]) for r in rows] == [
        ("FP32", "tensorrt", "fp16", "0.250"),
        ("FP32", "tensorrt", "fp32", "0.400"),
    ]


# ---------------------------------------------------------------------------------------------
# 3. summary markdown


def _table(text: str, first_header: str) -> list[dict[str, str]]:
    """Rows of the markdown table whose header starts with `first_header`, as header -> cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header), line
        rows.append(dict(zip(header, cells)))
    return rows


def _cell(row: dict[str, str], *must: str, exclude: tuple[str, ...] = ()) -> str:
    matches = [h for h in row if all(m in h for m in must) and not any(e in h for e in exclude)]
    assert len(matches) == 1, (must, list(row))
    return row[matches[0]]


def test_summary_markdown_two_seeds(tables):
    acc, b = tables
    text = summary_markdown(acc, b, qat_bits=4)
    rows = _table(text, "Model")
    assert [(r["Model"], r["Family"]) for r in rows] == [("resnet_t", "cnn"), ("vit_t", "vit")]
    resnet, vit = rows
    assert resnet["Parameters"] == "1,234,567" and vit["Parameters"] == "200,000"
    assert _cell(resnet, "FP32 top-1") == "91.00 ± 12.71 (n=2)"  # seeds 90 and 92: sd 1.41, t(1) 12.706
    assert _cell(resnet, "W4A4 QAT top-1", exclude=("ONNX",)) == "89.00 ± 12.71 (n=2)"
    assert _cell(resnet, "W4A4 QAT ONNX top-1") == "88.50 ± 12.71 (n=2)"
    assert _cell(vit, "W4A4 QAT top-1", exclude=("ONNX",)) == "84.00 ± 12.71 (n=2)"
    assert _cell(resnet, "FP32 size") == "4.938"
    assert _cell(resnet, "packed size") == f"{packed('resnet_t', 4) / 1e6:.3f}" == "0.627"
    assert _cell(resnet, "ONNX file") == f"{onnx_bytes('resnet_t', 4) / 1e6:.3f} ± 0.000 (n=2)"
    assert _cell(resnet, "reduction") == f"{100 * (1 - packed('resnet_t', 4) / 4_938_268):.1f}" == "87.3"
    assert _cell(vit, "reduction") == f"{100 * (1 - packed('vit_t', 4) / 800_000):.1f}"
    # the benchmark table: a row per model, variant, backend and batch, mean ± 95% t-interval over the two seeds
    bench_rows = _table(text, "Model | Variant")
    assert len(bench_rows) == len(b) // 2
    assert {r["Variant"] for r in bench_rows} == {"FP32", "QAT W4A4", "QAT W8A8"}
    one = next(r for r in bench_rows if r["Model"] == "vit_t" and r["Variant"] == "QAT W4A4" and r["Batch"] == "64")
    latencies = pd.Series([latency("vit_t", 4, 64, s) for s in (0, 1)])
    assert (
        _cell(one, "Latency p50")
        == f"{latencies.mean():.3f} ± {12.706 * latencies.std() / 2**0.5:.3f} (n=2)"
        == "64.050 ± 0.635 (n=2)"
    )
    throughputs = 64_000 / (1.1 * latencies)
    assert _cell(one, "Throughput") == f"{throughputs.mean():.0f} ± {12.706 * throughputs.std() / 2**0.5:.0f} (n=2)"
    assert _cell(one, "Model file") == f"{onnx_bytes('vit_t', 4) / 1e6:.3f} ± 0.000 (n=2)"
    assert [(r["Model"], r["Variant"], r["Batch"]) for r in bench_rows][:3] == [
        ("resnet_t", "FP32", "1"),
        ("resnet_t", "FP32", "64"),
        ("resnet_t", "QAT W8A8", "1"),
    ]
    # the top-1 by bits table: PTQ and QAT rows per model, FP32 and every bit-width as columns
    by_bits = _table(text, "Model | Family | Method")
    assert [(r["Model"], r["Method"]) for r in by_bits] == [
        ("resnet_t", "PTQ"),
        ("resnet_t", "QAT"),
        ("vit_t", "PTQ"),
        ("vit_t", "QAT"),
    ]
    assert list(by_bits[0])[3:] == ["FP32", "W8A8", "W4A4"]
    resnet_ptq, resnet_qat = by_bits[:2]
    assert resnet_ptq["FP32"] == resnet_qat["FP32"] == "91.00 ± 12.71 (n=2)"
    assert resnet_ptq["W4A4"] == "41.00 ± 12.71 (n=2)" and resnet_qat["W4A4"] == "89.00 ± 12.71 (n=2)"
    assert resnet_ptq["W8A8"] == "–"  # no PTQ W8A8 run in these fixtures


def test_summary_markdown_other_bits_and_one_seed(tmp_path):
    files = make_runs(tmp_path, seeds=(0,))
    acc, b = accuracy_table(files["metrics"], files["onnx"]), bench_table(files["bench"])
    text = summary_markdown(acc, b, qat_bits=8)
    rows = _table(text, "Model")
    resnet = rows[0]
    assert _cell(resnet, "FP32 top-1") == "90.00"  # a single seed: no ± part
    assert _cell(resnet, "W8A8 QAT top-1", exclude=("ONNX",)) == "89.50"
    assert _cell(resnet, "packed size") == f"{packed('resnet_t', 8) / 1e6:.3f}"
    assert _table(text, "Model | Family | Method")[0]["W4A4"] == "40.00"
    assert _cell(_table(text, "Model | Variant")[0], "Latency p50") == f"{latency('resnet_t', 32, 1, 0):.3f}"
    no_bench = summary_markdown(acc, b.iloc[0:0], qat_bits=8)
    assert "Latency" not in no_bench and "| resnet_t |" in no_bench


def test_summary_from_the_written_tables_is_the_summary_of_the_tables(tables, tmp_path):
    """The summary_tables rule reads accuracy.csv and bench.csv back (their writers' rules are apart, so that
    `snakemake bench` needs no accuracy run): its Markdown and LaTeX are those of the tables in memory."""
    acc, b = tables
    for bench in (b, b.iloc[0:0]):  # benchmarks, and none (bench.csv holds its header alone)
        write_csv(acc, tmp_path / "accuracy.csv")
        write_csv(bench, tmp_path / "bench.csv")
        acc_back, bench_back = pd.read_csv(tmp_path / "accuracy.csv"), pd.read_csv(tmp_path / "bench.csv")
        assert summary_markdown(acc_back, bench_back, qat_bits=4) == summary_markdown(acc, bench, qat_bits=4)
        expected = summary_tables(acc, bench, qat_bits=4)
        for name, table in summary_tables(acc_back, bench_back, qat_bits=4).items():
            assert latex_table(table, label=name) == latex_table(expected[name], label=name)


# ---------------------------------------------------------------------------------------------
# 4. atomic writes


def _leftovers(folder: Path) -> list[str]:
    return [n for n in os.listdir(folder) if n.endswith(".tmp") or n.startswith(".")]


def test_write_csv_atomic(tables, tmp_path, monkeypatch):
    acc, _ = tables
    dest = tmp_path / "accuracy.csv"
    dest.write_text("old content\n")

    def broken_to_csv(self, path, *args, **kwargs):
        Path(path).write_text("model,family\npartial")
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(pd.DataFrame, "to_csv", broken_to_csv)
        with pytest.raises(OSError, match="disk full"):
            write_csv(acc, dest)
    assert dest.read_text() == "old content\n"
    assert _leftovers(tmp_path) == []
    write_csv(acc, dest)
    back = pd.read_csv(dest)
    assert list(back.columns) == list(acc.columns) and len(back) == len(acc)
    assert back.top1.tolist() == acc.top1.tolist()
    assert _leftovers(tmp_path) == []


def test_write_text_atomic(tmp_path, monkeypatch):
    dest = tmp_path / "summary.md"
    dest.write_text("old summary\n")
    real = Path.write_text

    def broken_write_text(self, data, *args, **kwargs):
        real(self, data[:5])
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", broken_write_text)
        with pytest.raises(OSError, match="disk full"):
            write_text("new summary\n", dest)
    assert dest.read_text() == "old summary\n"
    assert _leftovers(tmp_path) == []
    write_text("new summary\n", dest)
    assert dest.read_text() == "new summary\n" and _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# 5. oscillation table


def test_oscillation_table_has_a_row_per_qat_epoch_and_layer(tmp_path):
    from qatstudy.aggregate import oscillation_table

    history = [
        {
            "epoch": e,
            "oscillating_share": 0.1 * e,
            "frozen_share": 0.0,
            "layers": {"conv1": {"oscillating": 0.2 * e, "frozen": 0.0}, "fc": {"oscillating": 0.0, "frozen": 0.0}},
        }
        for e in (1, 2)
    ]
    files = []
    for method, hist in [("qat", history), ("fp32", [{"epoch": 1, "val_top1": 50.0}])]:
        path = tmp_path / method / "metrics.json"
        path.parent.mkdir()
        path.write_text(
            json.dumps(
                {"model": "m", "family": "cnn", "method": method, "w_bits": 4, "a_bits": 4, "seed": 0, "history": hist}
            )
        )
        files.append(str(path))
    table = oscillation_table(files)
    assert len(table) == 2 * 3  # (all) + two layers, per epoch; the FP32 run has none
    overall = table[table.layer == "(all)"]
    assert overall.oscillating_share.tolist() == pytest.approx([0.1, 0.2])
    assert table[(table.layer == "conv1") & (table.epoch == 2)].oscillating_share.item() == pytest.approx(0.4)


# ---------------------------------------------------------------------------------------------
# 6. LaTeX tables


def _unescaped(line: str, char: str) -> int:
    return len(re.findall(rf"(?<!\\){re.escape(char)}", line))


def _braces_balanced(text: str) -> bool:
    depth = 0
    for token in re.findall(r"\\[{}]|[{}]", text):
        if token in "{}":
            depth += 1 if token == "{" else -1
            if depth < 0:
                return False
    return depth == 0


def test_latex_tables_well_formed(tables):
    acc, b = tables
    for name, table in summary_tables(acc, b, qat_bits=4).items():
        tex = latex_table(table, label=name)
        lines = tex.splitlines()
        environments = re.findall(r"\\(begin|end)\{(\w+)\}", tex)
        assert environments == [("begin", "table"), ("begin", "tabular"), ("end", "tabular"), ("end", "table")]
        assert rf"\label{{tab:{name}}}" in tex and _braces_balanced(tex)
        spec = re.search(r"\\begin\{tabular\}\{([lcr]+)\}", tex).group(1)
        assert len(spec) == len(table.columns)
        body = lines[lines.index(r"\toprule") + 1 : lines.index(r"\bottomrule")]
        assert body[1] == r"\midrule" and len(body) == len(table.rows) + 2
        for line in [body[0]] + body[2:]:
            assert line.endswith(r" \\") and _unescaped(line, "&") == len(table.columns) - 1, line
        for line in (line for line in lines if not line.startswith(r"\label")):  # a label may hold "_"
            for char in "_%#":
                assert _unescaped(line, char) == 0, line
            assert line.count("$") % 2 == 0 and "±" not in line and "–" not in line, line


def test_latex_table_cells(tables):
    acc, b = tables
    tex = latex_table(summary_tables(acc, b, qat_bits=4)["models"], label="models")
    assert r"resnet\_t & cnn & 1,234,567 & 91.00 $\pm$ 12.71 (n=2) & 89.00 $\pm$ 12.71 (n=2) &" in tex
    assert r"FP32 top-1 (\%)" in tex and r"\caption{Models: FP32 against W4A4 QAT. Top-1 on the full test split" in tex
    empty = latex_table(summary_tables(acc, b.iloc[0:0], qat_bits=4)["deployment"], label="deployment")
    assert r"\midrule" + "\n" + r"\bottomrule" in empty  # nothing benchmarked: the header alone
