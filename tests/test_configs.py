"""configs/: every YAML loads, default.yaml is the schema at its defaults, every key explained."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from geodetect.config import Config, load_config
from geodetect.errors import InputError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
YAMLS = sorted(CONFIGS.glob("*.yaml"))
KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][A-Za-z0-9_]*):")


def _schema() -> dict[str, set[str]]:
    """{section: {key, ...}} straight from geodetect.config."""
    return {name: set(field.annotation.model_fields) for name, field in Config.model_fields.items()}


def test_the_expected_configs_exist():
    names = {p.name for p in YAMLS}
    assert {"default.yaml", "vehicles.yaml", "buildings.yaml", "pointcloud.yaml"} <= names


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_every_config_loads(path):
    config = load_config(path)
    assert isinstance(config, Config)
    # an override still applies on top of a file (what `train --epochs` does)
    assert load_config(path, {"train.epochs": 3}).train.epochs == 3


def test_default_yaml_sets_every_key_of_the_schema():
    raw = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    schema = _schema()
    assert set(raw) == set(schema), "default.yaml sections differ from geodetect.config.Config"
    for section, keys in schema.items():
        missing = keys - set(raw[section] or {})
        assert not missing, f"default.yaml lacks {section}.{sorted(missing)}"


def test_default_yaml_is_the_defaults():
    assert load_config(CONFIGS / "default.yaml").model_dump() == Config().model_dump()


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_every_key_is_explained_by_a_comment(path):
    """Each key line has a comment on it or right above it (blank lines end a comment)."""
    lines = path.read_text().splitlines()
    bare = []
    for i, line in enumerate(lines):
        m = KEY.match(line)
        if not m or not m["indent"]:  # sections are explained by the comment under them
            continue
        above = lines[i - 1].strip() if i else ""
        if "#" not in line and not above.startswith("#"):
            bare.append(f"{path.name}:{i + 1}: {line.strip()}")
    assert not bare, "keys without a comment:\n" + "\n".join(bare)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_no_bare_on_off(path):
    """YAML 1.1 reads bare on/off as booleans; the elevation choice must be quoted."""
    for i, line in enumerate(path.read_text().splitlines()):
        assert not re.match(r"^\s*elevation:\s*(on|off)\b", line), f"{path.name}:{i + 1}: quote it"


# ------------------------------------------------------------------ issue 14: ranges, encodings


@pytest.mark.parametrize(
    "text, key",
    [
        ("data:\n  percentiles: [98, 2]\n", "data.percentiles"),
        ("data:\n  percentiles: [-5, 200]\n", "data.percentiles.0"),
        ("data:\n  percentiles: [2, 2]\n", "data.percentiles"),
        ("data:\n  bands: [0, 1]\n", "data.bands.0"),
        ("data:\n  bands: []\n", "data.bands"),
        ("train:\n  lr: .inf\n", "train.lr"),
        ("train:\n  weight_decay: .nan\n", "train.weight_decay"),
        ("train:\n  negative_fraction: 1.0\n", "train.negative_fraction"),
        ("train:\n  batch_size: 0\n", "train.batch_size"),
        ("infer:\n  threshold: 1.5\n", "infer.threshold"),
    ],
)
def test_out_of_range_values_are_refused(tmp_path, text, key):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=rf"config key '{re.escape(key)}'"):
        load_config(path)


def test_empty_section_takes_defaults_and_overrides_apply(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\ntrain:\n")  # sections left empty, as a user trims a file
    config = load_config(path, {"train.epochs": 3})
    assert config.train.epochs == 3 and config.data == Config().data


def test_config_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes("train:\n  lr: 0.001  # \u00e9t\u00e9\n".encode("latin-1"))
    with pytest.raises(InputError, match="not a UTF-8 text file"):
        load_config(path)
