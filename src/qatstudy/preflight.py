"""Checks the Snakefile runs while the workflow loads, so that a bad config stops `snakemake -n` in seconds with one
short message naming its key, instead of failing a job after the data are downloaded and split.

- `validate_config`: the schema check (snakemake.utils.validate, which also fills in defaults), its error cut down to
  the failing key, the reason and the allowed values; Snakemake's own message prints the whole failing sub-schema.
- `check_models`: every `models.<name>` builds in timm for the dataset's images and runs one forward pass, on the
  `meta` device (shapes only: no weights are allocated or initialised), falling back to the CPU where a model does
  not support `meta`. An unknown architecture names `models.<name>.arch`; kwargs timm rejects, or sizes the images
  do not fit, name `models.<name>.kwargs`. A passing model is remembered in a small cache (`default_cache_path`,
  keyed by architecture, kwargs, image shape, classes, timm and torch versions and models.py), so that only the first
  load after a change pays for importing torch and timm (about 10 CPU seconds; a cached load about 0.01).
- `interrupted_run_hint`: after a killed run, what to type (`--unlock`, `--rerun-incomplete`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path

from .data import get_spec

CACHE_VERSION = 1


class ConfigError(ValueError):
    """A config value the workflow refuses; its message is all the user needs (the Snakefile re-raises it as a
    WorkflowError, which Snakemake prints without a traceback)."""


def validate_config(config: dict, schema_path) -> None:
    """snakemake.utils.validate (which fills in the schema's defaults); a failure raises ConfigError naming the key,
    the reason and the allowed values."""
    import jsonschema
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(config, str(schema_path))
    except WorkflowError as err:
        cause = err.__context__  # validate raises its WorkflowError while handling jsonschema's ValidationError
        if not isinstance(cause, jsonschema.exceptions.ValidationError):
            raise
        raise ConfigError(schema_error_message(cause)) from None


def schema_error_message(error) -> str:
    """One line or two for a jsonschema ValidationError: `config key <path>: <reason>`, and the allowed values or
    keys where the schema lists them."""
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    lines = [f"config key {key}: {error.message}"]
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties" and "properties" in schema:
        lines.append(f"allowed keys: {', '.join(schema['properties'])}")
    elif error.validator in ("oneOf", "anyOf"):
        lines.append("allowed: " + " or ".join(_short(alt) for alt in error.validator_value))
    elif error.validator == "enum":
        lines.append(f"allowed values: {', '.join(map(str, error.validator_value))}")
    if "description" in schema and error.validator != "additionalProperties":
        lines.append(f"({schema['description']})")
    lines.append("Every key is in docs/configuration.md.")
    return "\n".join(lines)


def _short(schema: dict, limit: int = 120) -> str:
    text = json.dumps({k: v for k, v in schema.items() if k != "description"})
    return text if len(text) <= limit else text[: limit - 3] + "..."


def default_cache_path() -> Path:
    """$XDG_CACHE_HOME/qatstudy/model-check.json (~/.cache by default): shared by every checkout and work folder,
    since its keys say everything a check depends on."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qatstudy" / "model-check.json"


def check_models(config: dict, cache_path=None) -> None:
    """Every model of the config builds in timm for the dataset's images and runs a forward pass; the first that does
    not raises ConfigError naming `models.<name>.arch` or `models.<name>.kwargs`, the architecture and timm's reason.
    Models that passed before (same architecture, kwargs, image shape, classes and package versions) are skipped by
    way of `cache_path`."""
    spec = get_spec(config["dataset"]["name"])
    cache_path = Path(cache_path) if cache_path is not None else None
    passed = _read_cache(cache_path)
    todo = {}
    for name, model in config["models"].items():
        key = _cache_key(model["arch"], model.get("kwargs") or {}, spec)
        if key not in passed:
            todo[name] = key
    if not todo:
        return
    for name in todo:
        model = config["models"][name]
        check_model(name, model["arch"], model.get("kwargs") or {}, spec.in_chans, spec.num_classes, spec.img_size)
    if cache_path is not None:
        _write_cache(cache_path, passed | set(todo.values()))


def check_model(name: str, arch: str, kwargs: dict, in_chans: int, num_classes: int, img_size: int) -> None:
    """`arch` with `kwargs` builds and runs one `in_chans` x `img_size` x `img_size` image, or ConfigError says why."""
    import timm

    from . import models  # registers the package's own architectures

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `timm.list_models('<pattern>')` lists them"
        raise ConfigError(f"models.{name}.arch: {arch!r} is not a timm architecture{hint}")
    where = f"models.{name}.kwargs: {arch} with kwargs {kwargs}"
    images = f"{in_chans}x{img_size}x{img_size} images"
    try:
        _build_and_run(models, "meta", arch, kwargs, in_chans, num_classes, img_size)
        return
    except Exception:  # noqa: BLE001 - a model that does not support the meta device: the CPU says whether it builds
        pass
    try:
        model = _build(models, "cpu", arch, kwargs, in_chans, num_classes)
    except Exception as err:  # noqa: BLE001 - timm's reasons come in many types; each becomes the message
        raise ConfigError(f"{where} does not build: {_reason(err)}") from None
    try:
        _run(model, "cpu", in_chans, img_size)
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"{where} does not run on {images} (set its sizes in kwargs): {_reason(err)}") from None


def _build(models, device: str, arch: str, kwargs: dict, in_chans: int, num_classes: int):
    import torch

    with torch.device(device):
        return models.create_model(arch, num_classes=num_classes, in_chans=in_chans, kwargs=dict(kwargs))


def _run(model, device: str, in_chans: int, img_size: int) -> None:
    import torch

    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, in_chans, img_size, img_size, device=device))
    if out.ndim != 2:
        raise ValueError(f"output of shape {tuple(out.shape)}, not (batch, classes)")


def _build_and_run(models, device, arch, kwargs, in_chans, num_classes, img_size) -> None:
    _run(_build(models, device, arch, kwargs, in_chans, num_classes), device, in_chans, img_size)


def _reason(err: Exception) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:400]}"


def _cache_key(arch: str, kwargs: dict, spec) -> str:
    from importlib.metadata import version

    models_source = (Path(__file__).parent / "models.py").read_bytes()
    text = json.dumps(
        [
            CACHE_VERSION,
            arch,
            kwargs,
            spec.in_chans,
            spec.num_classes,
            spec.img_size,
            version("timm"),
            version("torch"),
            hashlib.sha256(models_source).hexdigest(),
        ],
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _read_cache(path: Path | None) -> set[str]:
    if path is None or not path.exists():
        return set()
    try:
        return set(json.loads(path.read_text()))
    except (OSError, ValueError):
        return set()


def _write_cache(path: Path, keys: set[str]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(keys)))
        tmp.replace(path)
    except OSError:
        pass  # only a cache: the next load checks again


def interrupted_run_hint(snakemake_dir=".snakemake") -> str | None:
    """What to type when `snakemake_dir` holds a lock left by a killed Snakemake; None when it holds none. A
    Snakemake running in this folder holds one too, so the hint says how to tell them apart. (Incomplete outputs of a
    killed run need nothing: profiles/default sets rerun-incomplete.)"""
    locks = Path(snakemake_dir) / "locks"
    if not (locks.is_dir() and any(locks.iterdir())):
        return None
    return (
        "This folder holds a Snakemake lock: another Snakemake is running here (see `pgrep -af snakemake`), or one "
        "was killed. If none is running, remove the lock with\n    snakemake --unlock\nand rerun the same command "
        "(README.md, Troubleshooting)."
    )
