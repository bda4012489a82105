"""Config validation: typed objects, profiles, one-line errors for typos and wrong types."""
from pathlib import Path

import pytest
import yaml

from toolchain.config import load_config, parse_dotted_overrides
from toolchain.errors import ToolchainError

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "name": "t", "task": "segmentation",
    "model": {"name": "segnet", "width": 0.25},
    "data": {"kind": "synthetic", "input_size": [64, 64], "num_classes": 4, "ignore_index": 255},
    "train": {"epochs": 2, "batch_size": 4},
    "profiles": {"quick": {"train": {"epochs": 1}}, "full": {"train": {"epochs": 50}}},
}


def write(tmp_path, raw) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_valid_config_and_profiles(tmp_path):
    p = write(tmp_path, BASE)
    cfg = load_config(p)
    assert cfg.train.epochs == 2 and cfg.data.input_size == (64, 64)
    assert load_config(p, profile="quick").train.epochs == 1
    assert load_config(p, profile="full").train.epochs == 50
    assert load_config(p, profile="quick").train.batch_size == 4  # merged, not replaced


def test_typo_names_key_and_nearest(tmp_path):
    raw = dict(BASE, train={"epochz": 3})
    with pytest.raises(ToolchainError) as e:
        load_config(write(tmp_path, raw))
    msg = str(e.value)
    assert "train.epochz" in msg and "train.epochs" in msg and "\n" not in msg


def test_wrong_type_names_key(tmp_path):
    raw = dict(BASE, train={"epochs": "ten"})
    with pytest.raises(ToolchainError) as e:
        load_config(write(tmp_path, raw))
    assert "train.epochs" in str(e.value) and "'ten'" in str(e.value)


def test_unknown_profile_and_missing_file(tmp_path):
    with pytest.raises(ToolchainError, match="no profile .huge."):
        load_config(write(tmp_path, BASE), profile="huge")
    with pytest.raises(ToolchainError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_bad_yaml_is_one_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(ToolchainError, match="not valid YAML"):
        load_config(p)


def test_overrides_parse_values():
    assert parse_dotted_overrides(["train.epochs=3", "data.input_size=[32, 32]"]) == {
        "train": {"epochs": 3}, "data": {"input_size": [32, 32]}}
    with pytest.raises(ToolchainError):
        parse_dotted_overrides(["noequals"])


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    raw = yaml.safe_load(path.read_text())
    load_config(path)
    for profile in (raw.get("profiles") or {}):
        load_config(path, profile=profile)
