"""The default and test configs validate against the schema that the workflow enforces, and the typed settings
records agree with it."""

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from helpers import SCHEMA, SCHEMA_PATH
from qatstudy import stage_settings
from qatstudy.quant import QuantScheme
from qatstudy.stage_settings import TRAIN_SETTINGS_DEFINITION, QATSettings, TrainSettings
from qatstudy.trt import BENCH_SETTINGS, BUILD_SETTINGS

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", ["config.yaml", "tests/configs/tiny.yaml", "config/gpu.yaml"])
def test_config_validates_and_gets_defaults(path):
    config = yaml.safe_load((REPO / path).read_text())
    validate(config, str(SCHEMA_PATH))
    assert config["calibration"]["method"] in {"minmax", "percentile", "mse"}
    assert config["threads"]["train"] >= 1
    for model in config["models"].values():
        assert model["family"] in {"cnn", "vit"}
        assert "kwargs" in model and "pretrained" in model


def test_default_study_has_two_cnns_and_two_vits():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    families = [m["family"] for m in config["models"].values()]
    assert families.count("cnn") >= 2 and families.count("vit") >= 2
    assert config["bits"] == [8, 6, 4, 3, 2]


def test_the_run_part_of_the_default_study_is_the_default_study_at_fewer_bits():
    """config/default-4-3-2.yaml produced the committed default-study tables: its jobs must be config.yaml's own (the
    same study folder and the same hashed sections), only fewer bit-widths."""
    default = yaml.safe_load((REPO / "config.yaml").read_text())
    part = yaml.safe_load((REPO / "config/default-4-3-2.yaml").read_text())
    validate(copy.deepcopy(part), str(SCHEMA_PATH))  # validation fills in defaults; compare the files as written
    assert part["bits"] == [4, 3, 2] and part["seeds"]["qat_by_bits"] == {}
    assert set(part["bits"]) < set(default["bits"])
    for config in (default, part):
        config.pop("bits"), config["seeds"].pop("qat_by_bits")
    assert part == default


def _tiny():
    return yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())


def test_bits_accept_integers_and_weight_activation_tags():
    config = _tiny()
    config["bits"] = [8, "w4a8", "w2a2"]
    validate(config, str(SCHEMA_PATH))
    assert config["quant"] == {
        "weight_per_channel": True,
        "act_asymmetric": False,
        "first_last_bits": 8,
        "quantize_attention": False,
        "attention_bits": None,
        "residual_bits": 8,
    }


@pytest.mark.parametrize(
    "change",
    [
        {"bits": ["w9a2"]},
        {"bits": ["4"]},
        {"quant": {"first_last_bits": 9}},
        {"quant": {"residual_bits": 1}},
        {"quant": {"asymmetric": True}},
    ],
)
def test_bad_quant_settings_are_rejected(change):
    config = {**_tiny(), **change}
    with pytest.raises(Exception, match=r"bits|quant|asymmetric|9"):
        validate(config, str(SCHEMA_PATH))


# The typed settings records against the schema, the one definition of the config's keys, types and defaults
# (docs/configuration.md, "One source"): a key added, renamed or retyped on one side only fails here.
_JSON_TYPES = {"int": {"integer"}, "float": {"number"}, "bool": {"boolean"}, "str": {"string"}, "None": {"null"}}


def _json_types(annotation: str) -> set[str]:
    """`float | None` -> {"number", "null"}: the JSON types a field of that annotation holds."""
    return set().union(*(_JSON_TYPES[part.strip()] for part in annotation.split("|")))


def _schema_types(entry: dict) -> set[str]:
    types = entry["type"]
    return {types} if isinstance(types, str) else set(types)


def test_train_settings_are_the_schemas_train_settings():
    keys = SCHEMA["definitions"][TRAIN_SETTINGS_DEFINITION]["properties"]
    fields = {f.name: f for f in dataclasses.fields(TrainSettings)}
    assert set(fields) == set(keys)
    for name, entry in keys.items():
        assert _json_types(fields[name].type) == _schema_types(entry), name
        # TrainSettings holds these defaults: a schema default would enter every rule's params and config hash
        assert "default" not in entry, name
    without_default = {n for n, f in fields.items() if f.default is dataclasses.MISSING}
    for section in ("train", "qat"):
        assert set(SCHEMA["properties"][section]["allOf"][1]["required"]) == without_default


@pytest.mark.parametrize("record", ["QATSettings", "BatchnormReestimation"])
def test_each_settings_field_reads_a_schema_key_of_its_type_and_default(record):
    for f in dataclasses.fields(getattr(stage_settings, record)):
        section, key = f.metadata["config"]
        entry = SCHEMA["properties"][section]["properties"][key]
        assert _json_types(f.type) == _schema_types(entry), f.name
        assert f.default == entry["default"], f.name


def test_qat_settings_read_every_key_of_their_sections():
    """A key added to distillation, regularizer or oscillation must reach the QAT objective."""
    read = {f.metadata["config"] for f in dataclasses.fields(QATSettings)}
    sections = {section for section, _ in read}
    assert sections == {"distillation", "regularizer", "oscillation"}
    assert read == {(s, key) for s in sections for key in SCHEMA["properties"][s]["properties"]}


def test_quant_options_are_the_quant_schemes_fields():
    """The quant section reaches QuantScheme.from_tag as keyword arguments, one per key; the bit-widths come from the
    bit tag. (The defaults differ on purpose: QuantScheme's are the plain uniform scheme, the config's the study's.)"""
    keys = SCHEMA["properties"]["quant"]["properties"]
    fields = {f.name: f for f in dataclasses.fields(QuantScheme) if f.name not in ("w_bits", "a_bits")}
    assert set(fields) == set(keys)
    for name, entry in keys.items():
        assert _json_types(fields[name].type) == _schema_types(entry), name


def test_trt_settings_are_keys_of_the_trt_section():
    assert set(BUILD_SETTINGS) | set(BENCH_SETTINGS) <= set(SCHEMA["properties"]["trt"]["properties"])
