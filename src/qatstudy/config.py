"""The study config, read for the workflow: each stage's merged settings and config digest, bit-width tags, seeds,
per-model and per-ablation-arm configs, and the study's name. The rules (rules/*.smk) take their params from here,
so a function's output must stay the same for the same config, or Snakemake reruns finished jobs."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import jsonschema
import yaml

from .labels import bit_tag
from .stage_settings import TRAIN_SETTINGS_DEFINITION, QATSettings, TrainSettings, config_values

_SETTING_KEYS = set(TrainSettings.__dataclass_fields__)
# The repository checkout (the package is installed editable from its src/), whose files the commands outside the
# workflow (qatstudy.cli) read: the default config, its schema and the Snakefile.
REPO = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO / "schemas" / "config.schema.yaml"


def load_config(path) -> dict:
    """A study config file, validated against the schema, which also fills in its defaults (as the Snakefile does)."""
    from snakemake.utils import validate  # only here: every job imports this package, and few load a config

    config = yaml.safe_load(Path(path).read_text())
    validate(config, str(SCHEMA_PATH))
    return config


# The config sections an ablation arm may override: everything that shapes a QAT run except its
# training settings, which stay the study's so that arms differ only in what they ablate.
ARM_SECTIONS = ("distillation", "regularizer", "quant", "oscillation")
# The config sections a model may override (models.<name>.<section>): its training protocols, quant and oscillation.
# Not distillation or the regularizer: the ablation arms switch those on from the study's "off", and a model's own
# value would carry into the arms that leave them alone (the baseline).
MODEL_SECTIONS = ("train", "qat", "quant", "oscillation")
# The config's quant options that apply to the sensitivity analysis; first/last and attention bits do not, since
# each group is measured at the sensitivity bit-width.
SENSITIVITY_QUANT_OPTIONS = ("weight_per_channel", "act_asymmetric")
# The config sections that decide a result of each training stage, its upstream stages' included (QAT fine-tunes
# the FP32 model), each with the model's own overrides applied (config_digest). Grid axes are left out (models,
# bits, seeds, ablation arms: adding one leaves the digests of existing results alone), and so are settings that
# change no result (threads, figures, trt.transport).
_FP32_SECTIONS = ("dataset", "train")
STAGE_SECTIONS = {
    "fp32": _FP32_SECTIONS,
    "ptq": _FP32_SECTIONS + ("quant", "calibration"),
    "qat": _FP32_SECTIONS + ("qat", "quant", "calibration", "distillation", "regularizer", "oscillation"),
}
_UNHASHED_DATASET_KEYS = ("mirrors", "urls")  # where the files come from does not change them: their MD5 is checked


def canonical(value):
    """`value` with every mapping's keys sorted, recursively.

    Snakemake compares rule params by their text, so the same settings written in another key
    order would otherwise count as changed and rerun every job that uses them.
    """
    if isinstance(value, dict):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def merged_settings(config: dict, stage: str, model: str) -> dict:
    """Global `train` / `qat` settings with the model's own overrides applied."""
    settings = model_config(config, model)[stage]
    return canonical({k: v for k, v in settings.items() if k in _SETTING_KEYS})


def qat_objective(config: dict) -> dict:
    """QATSettings fields from the config's distillation, regularizer and oscillation sections (the key each field is
    read from is declared on QATSettings)."""
    return canonical(config_values(QATSettings, config))


def config_digest(config: dict, stage: str, model: str | None = None, arm: str | None = None, **settings) -> dict:
    """What decides a result of `stage` (fp32, ptq or qat) and of the rule that makes it: the stage's config
    sections (STAGE_SECTIONS) as `model`'s runs (in ablation arm `arm`) see them, its own overrides and the arm's
    applied (model_config, arm_config), plus the rule's own `settings` (a benchmark's, an analysis's), as a scope
    (which sections, e.g. "qat+bench") and a hash of their values (16 hex digits of SHA-256, key order ignored).
    Without `model`, the study-wide sections. A model without overrides hashes the same as the study, so finished
    results keep their digests.

    Rules pass it as a param, so a result is rebuilt exactly when its digest changes: results of one scope and
    model made by the workflow share a hash, and the tables refuse to mix hashes within a scope, model and ablation
    arm (qatstudy.provenance).
    """
    if arm is not None:
        config = arm_config(config, arm, model)
    elif model is not None:
        config = model_config(config, model)
    hashed = {section: config[section] for section in STAGE_SECTIONS[stage]}
    hashed["dataset"] = {k: v for k, v in hashed["dataset"].items() if k not in _UNHASHED_DATASET_KEYS}
    text = json.dumps(canonical({**hashed, **settings}), sort_keys=True)
    return {"scope": "+".join([stage, *sorted(settings)]), "hash": hashlib.sha256(text.encode()).hexdigest()[:16]}


def check_trt(trt: dict) -> None:
    """Refuse `trt` settings that do not go together (the schema checks each key alone)."""
    if trt["strongly_typed"] and {trt["float_precision"], *trt["float_baselines"]} != {"fp32"}:
        raise ValueError(
            "trt.strongly_typed takes every type from the ONNX files, whose float layers are FP32: set "
            "trt.float_precision to fp32 and trt.float_baselines to [fp32]"
        )


def bit_tags(bits: list) -> list[str]:
    """Config bit-widths as tags: an integer b is `wbab`, a tag such as `w4a8` stays as it is."""
    return [b if isinstance(b, str) else bit_tag(b, b) for b in bits]


_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def study_name(config: dict, cli_configfiles) -> str:
    """The study's name, which names its folders (runs/<study>, results/<study>, logs/<study>): `study` in the config;
    when --configfile names files none of which sets it, the last file's name (tests/configs/tiny.yaml: tiny), so
    that another study never writes into the default study's folders."""
    files = [Path(f) for f in cli_configfiles or ()]
    if files and not any("study" in (yaml.safe_load(f.read_text()) or {}) for f in files):
        name = files[-1].stem
    else:
        name = config.get("study") or "default"
    if not _STUDY_NAME.match(name):
        raise ValueError(f"study: {name!r} must be letters, digits, '_', '.' and '-' (it names the study's folders)")
    return name


def qat_seeds(config: dict) -> dict[str, list[int]]:
    """Per bit-width tag, the QAT seeds its PTQ and QAT runs use on every FP32 model: `seeds.qat`, or the tag's own
    list in `seeds.qat_by_bits` (keys written as in `bits`). A QAT seed fixes the fine-tune's data order and
    augmentation and the calibration sample."""
    by_bits = {bit_tags([int(k) if str(k).isdigit() else k])[0]: v for k, v in config["seeds"]["qat_by_bits"].items()}
    tags = bit_tags(config["bits"])
    unknown = sorted(set(by_bits) - set(tags))
    if unknown:
        raise ValueError(f"seeds.qat_by_bits: {', '.join(unknown)} not in bits ({', '.join(tags)})")
    return {tag: by_bits.get(tag, config["seeds"]["qat"]) for tag in tags}


def deployed_variants(config: dict, tags: list[str] | None = None, qat_seed: int | None = None) -> list[str]:
    """The run folders that are exported and benchmarked: `fp32` and, per bit-width tag (default: the config's),
    `qat_<tag>_q<seed>` of `qat_seed`, or of the tag's first QAT seed (speed does not depend on the seed)."""
    seeds = qat_seeds(config)
    return ["fp32"] + [
        f"qat_{tag}_q{seeds.get(tag, config['seeds']['qat'])[0] if qat_seed is None else qat_seed}"
        for tag in (bit_tags(config["bits"]) if tags is None else tags)
    ]


def ptq_seeds(config: dict) -> dict[str, list[int]]:
    """Per bit-width tag, the QAT seeds whose calibration sample PTQ runs with: `seeds.ptq` where it is set (each
    must be one of every bit-width's QAT seeds, so PTQ and QAT stay paired), else all of the tag's QAT seeds."""
    by_tag = qat_seeds(config)
    chosen = config["seeds"]["ptq"]
    if chosen is None:
        return by_tag
    for tag, seeds in by_tag.items():
        missing = sorted(set(chosen) - set(seeds))
        if missing:
            raise ValueError(f"seeds.ptq: {missing} not among the QAT seeds of {tag} ({seeds})")
    return {tag: list(chosen) for tag in by_tag}


def ablation_arms(config: dict, schema: dict) -> dict[str, dict]:
    """Each ablation arm's config: the study config with the arm's section overrides applied.

    An arm lists its complete overrides (arms are independent; a cumulative arm repeats the
    earlier arms' overrides). Keys are checked against the schema's sections, and each arm's
    merged config is validated against the whole schema, so a typo or a bad value names the arm.
    """
    return {
        arm: _with_overrides(config, _arm_overrides(config, arm), schema, f"ablation.arms.{arm}")
        for arm in config["ablation"]["arms"]
    }


def _arm_overrides(config: dict, arm: str) -> dict:
    """Ablation arm `arm`'s section overrides, each section checked to be one of ARM_SECTIONS."""
    overrides = {k: v for k, v in config["ablation"]["arms"][arm].items() if k != "models"}
    for section in overrides:
        if section not in ARM_SECTIONS:
            raise ValueError(
                f"ablation.arms.{arm}.{section}: unknown key; an arm overrides {', '.join(ARM_SECTIONS)}"
                " (and may name its models)"
            )
    return overrides


def is_main_protocol_arm(config: dict, arm: str) -> bool:
    """An arm that overrides nothing: its runs are the study's own QAT runs."""
    return not _arm_overrides(config, arm)


def arm_models(config: dict, arm: str) -> list[str]:
    """The ablated models arm `arm` runs on: its `models`, or every ablated model. An arm whose change cannot touch
    some models (depthwise inputs, for models without depthwise convolutions) names the others, rather than rerun
    the main protocol under another name."""
    ablated = ablation_models(config)
    models = config["ablation"]["arms"][arm].get("models", ablated)
    unknown = [m for m in models if m not in ablated]
    if unknown:
        raise ValueError(
            f"ablation.arms.{arm}.models: {', '.join(unknown)} not in ablation.models ({', '.join(ablated)})"
        )
    return list(models)


def model_config(config: dict, model: str, schema: dict | None = None) -> dict:
    """`config` with the model's own overrides of MODEL_SECTIONS applied; with `schema`, checked against it (an error
    naming models.<model>.<section>.<key>; the workflow checks every model's when it loads)."""
    spec = config["models"][model]
    return _with_overrides(config, {s: spec[s] for s in MODEL_SECTIONS if s in spec}, schema, f"models.{model}")


def arm_config(config: dict, arm: str, model: str, schema: dict | None = None) -> dict:
    """The config of `model`'s runs in ablation arm `arm`: the model's own overrides, then the arm's, so that a key
    the arm sets is what the arm ablates, whatever the model sets."""
    return _with_overrides(
        model_config(config, model, schema), _arm_overrides(config, arm), schema, f"ablation.arms.{arm}"
    )


def model_quant(config: dict, model: str, schema: dict) -> dict:
    """The quant section for `model`'s PTQ and QAT runs."""
    return canonical(model_config(config, model, schema)["quant"])


def model_objective(config: dict, model: str, schema: dict) -> dict:
    """The QAT objective (qat_objective) for `model`'s QAT runs."""
    return qat_objective(model_config(config, model, schema))


def _with_overrides(config: dict, overrides: dict, schema: dict | None, where: str) -> dict:
    """`config` with each of `overrides`' sections updated by its values; with `schema`, every key must be one of
    that section's in the schema, and the merged config must validate (errors name `where`)."""
    merged = dict(config)
    for section, values in overrides.items():
        merged[section] = {**config[section], **values}
    if schema is None:
        return merged
    for section, values in overrides.items():
        known = _section_keys(schema, section)
        for key in values:
            if key not in known:
                raise ValueError(f"{where}.{section}.{key}: unknown key; {section} has {', '.join(known)}")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(merged))
    if error is not None:
        path = ".".join(str(p) for p in error.absolute_path)
        raise ValueError(f"{where}.{path}: {error.message}" if path else f"{where}: {error.message}")
    return merged


def _section_keys(schema: dict, section: str) -> dict:
    """The keys the schema allows in `section`; `train` and `qat` are the train_settings definition."""
    entry = schema["properties"][section]
    if "properties" in entry:
        return entry["properties"]
    return schema["definitions"][TRAIN_SETTINGS_DEFINITION]["properties"]


def ablation_models(config: dict) -> list[str]:
    """The models the ablation runs: `ablation.models`, or every model when it is null."""
    models = config["ablation"]["models"]
    if models is None:
        return list(config["models"])
    unknown = [m for m in models if m not in config["models"]]
    if unknown:
        raise ValueError(f"ablation.models: {', '.join(unknown)} not in models ({', '.join(config['models'])})")
    return list(models)


def ablation_seeds(config: dict) -> tuple[list[int], list[int]]:
    """The ablation's FP32 seeds (`ablation.fp32_seeds`, default the study's first) and QAT seeds
    (`ablation.qat_seeds`, default `seeds.qat`)."""
    fp32 = config["ablation"]["fp32_seeds"] or config["seeds"]["fp32"][:1]
    unknown = sorted(set(fp32) - set(config["seeds"]["fp32"]))
    if unknown:
        raise ValueError(f"ablation.fp32_seeds: {unknown} not in seeds.fp32 ({config['seeds']['fp32']})")
    return list(fp32), list(config["ablation"]["qat_seeds"] or config["seeds"]["qat"])


def model_identity(model: str, config: dict) -> dict:
    """What every record of `model`'s runs starts with (the rules' `identity` param): its name, family, timm
    architecture and kwargs."""
    spec = config["models"][model]
    return canonical({"model": model, "family": spec["family"], "arch": spec["arch"], "kwargs": spec.get("kwargs", {})})
