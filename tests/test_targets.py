"""Target files: every listed device validates, the alias resolves, user files work, bad names/files fail in one line."""
import pytest

from toolchain.errors import ToolchainError
from toolchain.targets import list_targets, load_target, target_names

REQUIRED = {"cpu", "desktop-gpu", "jetson-orin-nano-8gb", "jetson-orin-nx-16gb", "jetson-agx-orin-64gb",
            "jetson-xavier-nx", "jetson"}


def test_all_required_targets_exist_and_validate():
    assert REQUIRED <= set(target_names())
    for t in list_targets():
        assert t.default_precision in t.precisions
        if t.backend == "tensorrt":
            assert t.tensorrt.contains(t.tensorrt.min)
            assert t.datasheet.source == "datasheet" and t.datasheet.peak_flops.fp16 > 0
            assert t.datasheet.memory_bandwidth > 0


def test_jetson_alias_names_its_base():
    t = load_target("jetson")
    assert t.name == "jetson" and t.alias_of == "jetson-orin-nano-8gb"
    assert t.compute_capability == "8.7" and t.backend == "tensorrt"


def test_cpu_has_no_fp16_and_says_so():
    with pytest.raises(ToolchainError, match="does not support fp16"):
        load_target("cpu").require_precision("fp16")


def test_unknown_target_lists_valid_names():
    with pytest.raises(ToolchainError) as err:
        load_target("jetson-orin-nanoo")
    msg = str(err.value)
    assert "did you mean 'jetson-orin-nano-8gb'" in msg and "desktop-gpu" in msg and "\n" not in msg


def test_user_target_file_and_bad_field(tmp_path):
    good = tmp_path / "my-board.yaml"
    good.write_text("name: my-board\nbackend: onnxruntime\nprecisions: [fp32]\n")
    assert load_target(str(good)).name == "my-board"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nbackend: tensorrt\nprecisions: [fp16]\ndefault_precision: fp16\n")
    with pytest.raises(ToolchainError, match="tensorrt"):
        load_target(str(bad))
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: typo\nbackend: onnxruntime\nprecisions: [fp32]\nworkspace: 12\n")
    with pytest.raises(ToolchainError, match="workspace"):
        load_target(str(typo))


def test_version_range_with_wildcard():
    t = load_target("desktop-gpu")
    assert t.tensorrt.contains("10.7.0") and t.tensorrt.contains("8.5.2") and not t.tensorrt.contains("8.4.3")
    assert not load_target("jetson-xavier-nx").tensorrt.contains("8.6.1")


def test_cli_lists_targets(capsys):
    from toolchain.cli import main

    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "jetson -> jetson-orin-nano-8gb" in out and "desktop-gpu" in out
    assert main(["targets", "nope"]) == 2


def test_desktop_rtx_target(tmp_path):
    t = load_target("desktop-rtx")
    assert t.backend == "tensorrt" and t.tensorrt_flavour == "tensorrt-rtx" and t.precisions == ["fp32", "fp16", "int8"]
    assert t.compute_capabilities and "7.5" not in t.compute_capabilities  # no FP32 GEMM for Turing in RTX 1.7
    assert load_target("jetson-orin-nx-16gb").tensorrt_flavour == "tensorrt"
    base = "name: x\nbackend: tensorrt\nprecisions: [fp32]\ntensorrt: {min: '1.7', max: '1.x'}\n"
    for extra, message in (("tensorrt_flavour: tensorrt-rtx\ncompute_capabilities: ['sm89']\n", "look like '8.9'"),
                           ("compute_capabilities: ['8.9']\n", "need tensorrt_flavour: tensorrt-rtx"),
                           ("tensorrt_flavour: tensorrt-rtx\ndla_cores: 1\ndla_core: 0\n", "no DLA")):
        path = tmp_path / "x.yaml"
        path.write_text(base + extra)
        with pytest.raises(ToolchainError, match=message):
            load_target(path)


def test_every_target_gives_a_channel_multiple_for_each_precision():
    """prune.round_to: target must mean something on every target (issue 11, hardware-aware widths)."""
    from toolchain.targets import list_targets

    for target in list_targets():
        missing = [p for p in target.precisions if p not in target.channel_multiple]
        assert not missing, f"{target.name}: no channel_multiple for {missing}"
        if target.backend == "tensorrt":
            assert target.channel_multiple.get("int8", 32) == 32 and target.channel_multiple.get("fp16", 8) == 8
