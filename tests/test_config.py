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


# -- absurd or unreadable values: one line at load time, before anything is allocated (issue 9) ------
ABSURD = [  # --set override -> key and words the one line must name
    ("model.width=1e9", r"'model\.width' .*less than or equal to 16"),
    ("model.width=0", r"'model\.width' .*greater than 0"),
    ("train.lr=.inf", r"'train\.lr' .*finite number"),
    ("train.lr=.nan", r"'train\.lr' .*finite number"),
    ("train.lr=-.inf", r"'train\.lr' .*finite number"),
    ("prune.sparsity.lr=.inf", r"'prune\.sparsity\.lr' .*finite number"),
    ("prune.recover.lr=.nan", r"'prune\.recover\.lr' .*finite number"),
    ("data.input_size=[0, 64]", r"'data\.input_size\.0' .*greater than or equal to 1"),
    ("data.input_size=[64, 1000000]", r"'data\.input_size\.1' .*less than or equal to 8192"),
]


@pytest.mark.parametrize("override,message", ABSURD, ids=[a[0] for a in ABSURD])
def test_absurd_values_are_one_line_errors(tmp_path, override, message):
    with pytest.raises(ToolchainError, match=message) as err:
        load_config(write(tmp_path, BASE), overrides=parse_dotted_overrides([override]))
    assert "\n" not in str(err.value)


def test_absurd_width_fails_in_the_cli_before_allocating(tmp_path, capsys):
    from toolchain.cli import main

    raw = dict(BASE, out_dir=str(tmp_path / "runs"))
    assert main(["train", str(write(tmp_path, raw)), "--set", "model.width=1e9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.width" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing built, nothing written


def test_non_utf8_config_is_one_line(tmp_path, capsys):
    from toolchain.cli import main

    p = tmp_path / "latin1.yaml"
    p.write_bytes(yaml.safe_dump(BASE).replace("name: t", "name: caf\xe9").encode("latin-1"))
    with pytest.raises(ToolchainError, match=r"latin1\.yaml: not UTF-8 text \(byte 0xe9 at offset \d+\)"):
        load_config(p)
    assert main(["train", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "UnicodeDecodeError" not in err
