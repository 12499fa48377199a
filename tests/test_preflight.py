"""Config errors the workflow catches while it loads: short schema messages, models timm cannot build, and the hint
after a killed run."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import SCHEMA_PATH
from qatstudy import preflight
from qatstudy.preflight import ConfigError, check_model, check_models, interrupted_run_hint, validate_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"


def _tiny(**changes) -> dict:
    config = yaml.safe_load(TINY.read_text())
    config.update(copy.deepcopy(changes))
    return config


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"typo_section": 1}, ["config key (top level)", "'typo_section' was unexpected", "allowed keys: dataset"]),
        (
            {"models": {"m": {"arch": "resnet18", "family": "cnn", "typo": 1}}},
            ["config key models.m:", "'typo' was unexpected", "allowed keys: arch, family"],
        ),
        ({"bits": [8, "x9"]}, ["config key bits.1:", '"pattern": "^w[2-8]a[2-8]$"']),
        ({"dataset": {"name": "svhn"}}, ["config key dataset.name:", "allowed values: fashion_mnist, mnist, cifar10"]),
    ],
)
def test_schema_errors_name_the_key_and_the_allowed_values_in_a_few_lines(changes, expected):
    with pytest.raises(ConfigError) as err:
        validate_config(_tiny(**changes), SCHEMA_PATH)
    message = str(err.value)
    for text in expected:
        assert text in message
    assert len(message.splitlines()) <= 4 and len(message) < 600


def test_a_valid_config_gets_its_defaults():
    config = _tiny()
    validate_config(config, SCHEMA_PATH)
    assert config["models"]["cnn"]["pretrained"] is False


@pytest.mark.parametrize(
    "arch, kwargs, expected",
    [
        ("resnet_18", {}, ["models.m.arch:", "'resnet_18' is not a timm architecture", "did you mean resnet18"]),
        ("resnet18", {"nonsense": 3}, ["models.m.kwargs:", "resnet18", "unexpected keyword argument 'nonsense'"]),
        ("vit_convstem_tiny", {"img_size": 32}, ["models.m.kwargs:", "does not run on 1x28x28 images", "(32)"]),
        ("convnext_atto", {}, ["models.m.kwargs:", "convnext_atto", "does not run on 1x28x28 images"]),
    ],
)
def test_a_model_timm_cannot_build_names_its_key_the_architecture_and_the_reason(arch, kwargs, expected):
    with pytest.raises(ConfigError) as err:
        check_model("m", arch, kwargs, in_chans=1, num_classes=10, img_size=28)
    for text in expected:
        assert text in str(err.value)


def test_the_default_and_tiny_models_pass_and_are_cached(tmp_path, monkeypatch):
    cache = tmp_path / "cache.json"
    for path in (REPO / "config.yaml", TINY):
        check_models(yaml.safe_load(path.read_text()), cache_path=cache)
    assert cache.exists()

    def fail(*args, **kwargs):
        raise AssertionError("a cached model was checked again")

    monkeypatch.setattr(preflight, "check_model", fail)
    check_models(yaml.safe_load((REPO / "config.yaml").read_text()), cache_path=cache)
    changed = _tiny()
    changed["models"]["cnn"]["kwargs"] = {"nonsense": 1}  # another key: checked (and refused) again
    with pytest.raises(AssertionError, match="checked again"):
        check_models(changed, cache_path=cache)


def test_the_unlock_hint_appears_only_with_a_lock(tmp_path):
    assert interrupted_run_hint(tmp_path) is None
    (tmp_path / "locks").mkdir()
    assert interrupted_run_hint(tmp_path) is None
    (tmp_path / "locks" / "0.input.lock").write_text("")
    assert "snakemake --unlock" in interrupted_run_hint(tmp_path)


def test_a_dry_run_with_a_bad_model_stops_at_load_naming_the_key(tmp_path):
    config = _tiny()
    config["models"]["cnn"]["kwargs"] = {"nonsense": 3}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path)]
        + ["--configfile", str(path), "--cores", "1", "all", "--dry-run"],
        capture_output=True,
        text=True,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "models.cnn.kwargs: resnet10t with kwargs {'nonsense': 3} does not build" in output
    assert "preflight.py" not in output  # no traceback
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()
