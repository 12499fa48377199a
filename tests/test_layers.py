"""The package's dependencies run one way: every module imports only modules of its own layer or a lower one
(docs/architecture.md). A new module must be given a layer here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "qatstudy"

SHARED, CONFIG, BUILDING_BLOCKS, MODEL_ASSEMBLY, STAGES, DEPLOY, REPORTING, ENTRY = range(8)
LAYERS = {
    # shared: file helpers, record fields, labels, provenance, statistics
    "io": SHARED,
    "records": SHARED,
    "labels": SHARED,
    "provenance": SHARED,
    "stats": SHARED,
    # the study config and the settings read from it
    "stage_settings": CONFIG,
    "config": CONFIG,
    # data, models, quantization
    "data": BUILDING_BLOCKS,
    "batches": BUILDING_BLOCKS,
    "models": BUILDING_BLOCKS,
    "quant": BUILDING_BLOCKS,
    "quant.quantizer": BUILDING_BLOCKS,
    "quant.attention": BUILDING_BLOCKS,
    "quant.modules": BUILDING_BLOCKS,
    "quant.calibrate": BUILDING_BLOCKS,
    "quant.oscillation": BUILDING_BLOCKS,
    # the config checks the Snakefile runs at load (they build each model in timm)
    "preflight": BUILDING_BLOCKS,
    # checkpoints, calibration on the training split, the QAT objective, the training loop
    "checkpoints": MODEL_ASSEMBLY,
    "calibration": MODEL_ASSEMBLY,
    "objectives": MODEL_ASSEMBLY,
    "train": MODEL_ASSEMBLY,
    "divergence": MODEL_ASSEMBLY,
    # what makes a run's results from a checkpoint: training stages, the analysis
    "stages": STAGES,
    "analysis": STAGES,
    # deployment: ONNX export and layouts, onnxruntime, TensorRT
    "ort_sessions": DEPLOY,
    "backends": DEPLOY,
    "qdq": DEPLOY,
    "export": DEPLOY,
    "bench": DEPLOY,
    "trt": DEPLOY,
    "remote": DEPLOY,
    "trt_jobs": DEPLOY,
    # tables and figures from the results
    "tables": REPORTING,
    "aggregate": REPORTING,
    "ablation": REPORTING,
    "findings": REPORTING,
    "charts": REPORTING,
    # Snakemake job glue for workflow_scripts/, and the console script with its benchmark subcommands
    "job_runner": ENTRY,
    "cli": ENTRY,
    "bench_qat_step": ENTRY,
    "bench_ort_int8": ENTRY,
    "bench_planning": ENTRY,
}
# Entry points only: the stage functions run as jobs, so no module below the entry layer builds on them (what two
# stages share lives below them: checkpoints, calibration).
IMPORTED_BY_NO_MODULE = {"stages", "job_runner"}


def module_name(path: Path) -> str:
    """`quant/modules.py` -> `quant.modules`, `quant/__init__.py` -> `quant`, the package's own __init__ -> ''."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path) -> set[str]:
    """The package modules `path` imports (relative or as qatstudy.<module>), function-level imports included."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in package if p]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {
                alias.name.removeprefix("qatstudy.") for alias in node.names if alias.name.startswith("qatstudy.")
            }
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
            elif node.module == "qatstudy" or (node.module or "").startswith("qatstudy."):
                base = []
            else:
                continue
            module = ".".join(base + [part for part in (node.module or "").removeprefix("qatstudy").split(".") if part])
            if node.module is None or node.module == "qatstudy":  # from . import quant, qdq
                found |= {".".join(filter(None, [module, alias.name])) for alias in node.names}
            else:
                found.add(module)
    return found


def test_every_module_has_a_layer():
    modules = set(package_modules()) - {""}
    assert sorted(modules - set(LAYERS)) == [], "new modules: give each a layer in LAYERS (and docs/architecture.md)"
    assert sorted(set(LAYERS) - modules) == [], "LAYERS names modules that no longer exist"


def test_no_module_imports_a_higher_layer():
    upward = []
    for name, path in package_modules().items():
        for imported in sorted(imported_modules(path)):
            assert imported in LAYERS, f"{name} imports {imported}, which has no layer"
            if name and LAYERS[imported] > LAYERS[name]:
                upward.append(f"{name} (layer {LAYERS[name]}) imports {imported} (layer {LAYERS[imported]})")
    assert upward == []


def test_entry_point_modules_are_imported_by_no_module():
    importers = {
        name: sorted(IMPORTED_BY_NO_MODULE & imported_modules(path))
        for name, path in package_modules().items()
        if name and LAYERS[name] < ENTRY
    }
    assert {name: found for name, found in importers.items() if found} == {}


def test_imports_are_read_as_modules():
    """The parser behind these tests, on the forms the package uses."""
    assert {"quant", "checkpoints", "train"} <= imported_modules(PACKAGE / "stages.py")  # from . import quant
    # from ..labels import ..., from .attention import ...
    assert {"labels", "quant.attention", "quant.quantizer"} <= imported_modules(PACKAGE / "quant" / "modules.py")
    assert "quant.modules" in imported_modules(PACKAGE / "quant" / "__init__.py")
    assert "models" in imported_modules(PACKAGE / "job_runner.py")  # imported inside a function
