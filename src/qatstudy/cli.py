"""`qatstudy`: the measurements made outside the workflow, one subcommand each.

    uv run qatstudy bench-qat-step [--config config.yaml] [--bits w4a4] [--steps 20] [--models …]
    uv run qatstudy bench-planning [--models 6] [--bits 8 6 5 4 3 2] [--seeds 0 1 2] [--repeats 3]
    uv run qatstudy bench-ort-int8 --runs runs/<study> --data runs/<study>/splits.npz [--models …] [--bits …]

Each subcommand's code is the module of its name (qatstudy.bench_qat_step, …), imported only when it runs, so that
`--help` does not wait for torch.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import sys
from pathlib import Path

from .config import REPO

DEFAULT_CONFIG = str(REPO / "config.yaml")


def _summary(module: str) -> str:
    """The first paragraph of a module's docstring, read from its source without importing it."""
    source = Path(importlib.util.find_spec(module).origin).read_text()
    return ast.get_docstring(ast.parse(source)).split("\n\n")[0]


def _config_option(parser: argparse.ArgumentParser, what: str = "study config") -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"{what} (default: the repository's config.yaml)")


def _bench_qat_step(parser: argparse.ArgumentParser) -> None:
    _config_option(parser)
    parser.add_argument("--models", nargs="+", help="model names from the config (default: all)")
    parser.add_argument("--bits", default="w4a4", help="QAT bit-width tag (default: w4a4)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each kind (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    parser.add_argument("--threads", type=int, help="torch threads (default: the config's threads.train)")


def _bench_planning(parser: argparse.ArgumentParser) -> None:
    _config_option(parser, "base study config")
    parser.add_argument("--models", type=int, default=6, help="models in the grid (default: 6)")
    parser.add_argument("--bits", nargs="+", type=int, default=[8, 6, 5, 4, 3, 2], help="bit-widths (default: 6)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default: 0 1 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed dry runs (default: 3)")
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")


def _bench_ort_int8(parser: argparse.ArgumentParser) -> None:
    _config_option(parser)
    parser.add_argument("--runs", required=True, help="the study's runs folder (<model>/seed<s>/<variant>/model.pt)")
    parser.add_argument("--data", required=True, help="the study's splits.npz (calibration and test images)")
    parser.add_argument("--models", nargs="+", help="model names from the config (default: all)")
    parser.add_argument("--bits", nargs="+", help="QAT tags such as w8a8 (default: the config's bits)")
    parser.add_argument("--seed", type=int, default=0, help="training seed of the runs (default: 0)")
    parser.add_argument("--qat-seed", type=int, help="QAT seed of the runs (default: each tag's first in the config)")
    parser.add_argument("--batches", nargs="+", type=int, help="batch sizes (default: the config's bench.batch_sizes)")
    parser.add_argument("--rounds", type=int, default=10, help="timing rounds, each alternating the models")
    parser.add_argument("--iterations", type=int, default=5, help="runs of each model per round")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the test-split top-1")
    parser.add_argument(
        "--backend",
        choices=["onnxruntime-cpu", "openvino-cpu"],
        default="onnxruntime-cpu",
        help="onnxruntime on model.onnx, or OpenVINO on the TensorRT layout (default: onnxruntime-cpu)",
    )
    parser.add_argument("--out", help="folder for the ONNX files (default: a temporary folder)")


# subcommand: its options; its code is the module qatstudy.<subcommand with underscores>, whose main(args) runs it
SUBCOMMANDS = {"bench-qat-step": _bench_qat_step, "bench-planning": _bench_planning, "bench-ort-int8": _bench_ort_int8}


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(prog="qatstudy", description=_summary(f"{__package__}.cli"))
    subcommands = main_parser.add_subparsers(title="commands", dest="command", required=True, metavar="command")
    for name, add_options in SUBCOMMANDS.items():
        module = f"{__package__}.{name.replace('-', '_')}"
        summary = " ".join(_summary(module).split())
        add_options(subcommands.add_parser(name, help=summary, description=summary))
    return main_parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    module = importlib.import_module(f"{__package__}.{args.command.replace('-', '_')}")
    return module.main(args) or 0


if __name__ == "__main__":
    sys.exit(main())
