"""The default and test configs validate against the schema that the workflow enforces."""

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from helpers import SCHEMA_PATH

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
