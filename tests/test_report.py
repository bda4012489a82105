"""Reports: schema validation, Markdown / self-contained HTML, Pareto front, combine across devices."""
from __future__ import annotations

import copy
import json

import pytest

from toolchain.errors import ToolchainError
from toolchain.report.combine import combine_reports
from toolchain.report.plots import pareto_front
from toolchain.report.render import to_markdown, write_report
from toolchain.report.schema import failed_row, new_report, validate_report, variant_row
from toolchain.runtime.stats import latency_stats


def _report(machine="hostA", on_target=True) -> dict:
    rep = new_report(experiment={"name": "demo", "task": "segmentation", "model": "segnet", "width": 0.125},
                     target={"name": "cpu", "description": "ORT CPU", "backend": "onnxruntime"}, machine=machine,
                     on_target_device=on_target, provenance={"git_commit": "abc", "versions": {"toolchain": "0.1.0"}},
                     metric={"name": "miou", "higher_is_better": True})
    lat = {**latency_stats([1.0, 2.0, 3.0]), "samples_ms": [1.0, 2.0, 3.0]}
    profile = {"latency": {"1": lat}, "memory": {"host_peak_rss_delta_bytes": 2**20}, "measured_on": machine,
               "backend": "onnxruntime", "roofline": {"kind": "estimate", "available": False, "reason": "no datasheet"}}
    rep["variants"] = [variant_row("slim-fp32", "slim", "fp32", profile=profile, file="slim-fp32.onnx",
                                   size_bytes=1000, accuracy=0.5, accuracy_metric="miou"),
                       failed_row("slim-int8", "slim", "int8", "INT8 gate failed: miou 0.5 -> 0.2")]
    rep["layers_before_after"] = [{"name": "conv1", "op": "Conv", "params_before": 100, "params_after": 50,
                                   "macs_before": 1000, "macs_after": 500}]
    return rep


def test_failed_stage_is_a_row_and_markdown_says_where_measured():
    rep = validate_report(_report(on_target=False))
    md = to_markdown(rep)
    assert "| slim-int8 | failed: INT8 gate failed: miou 0.5 -> 0.2 |" in md
    assert "| slim-fp32 | ok | onnxruntime |" in md and "2.000" in md  # median of 1, 2, 3
    assert "NOT on the target device" in md and "measured on: hostA" in md


def test_validate_rejects_missing_fields_and_versions():
    rep = _report()
    del rep["variants"][0]["latency_p99_ms"]
    with pytest.raises(ToolchainError, match="misses latency_p99_ms"):
        validate_report(rep)
    with pytest.raises(ToolchainError, match="schema 'acsl-report/0' is not supported"):
        validate_report({**_report(), "schema": "acsl-report/0"})
    with pytest.raises(ToolchainError, match="not an acsl report"):
        validate_report([1, 2])


def test_write_report_self_contained_html(tmp_path):
    paths = write_report(_report(), tmp_path)
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == 3 and "<script" not in html and "src=\"http" not in html
    assert json.loads(paths["json"].read_text())["schema"] == "acsl-report/1"
    assert (tmp_path / "report_pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_pareto_front():
    pts = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (0.5, 0.4), (2.5, 0.7)]
    assert pareto_front(pts, higher_is_better=True) == [(0.5, 0.4), (1.0, 0.5), (2.0, 0.7)]
    assert pareto_front([(1.0, 9.0), (2.0, 5.0), (3.0, 7.0)], higher_is_better=False) == [(1.0, 9.0), (2.0, 5.0)]


def test_combine_two_devices_and_refuse_mixed_schema(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_report("hostA")))
    b.write_text(json.dumps(_report("H100 GPU")))
    out = combine_reports([a, b], tmp_path / "devices.html")
    html = out["html"].read_text()
    assert "hostA" in html and "H100 GPU" in html and "data:image/png;base64," in html
    assert len(json.loads(out["json"].read_text())["rows"]) == 4
    old = copy.deepcopy(_report())
    old["schema"] = "acsl-report/0"
    c = tmp_path / "old.json"
    c.write_text(json.dumps(old))
    with pytest.raises(ToolchainError, match="refusing to combine reports with different schema versions"):
        combine_reports([a, c], tmp_path / "x.html")
    with pytest.raises(ToolchainError, match="report not found"):
        combine_reports([tmp_path / "nope.json"], tmp_path / "x.html")


def test_machine_names_the_cpu_model_and_isa(tmp_path):
    """Results record which CPU ran them (two x86_64 CPUs train one config to different weights), read from
    /proc/cpuinfo; without one, the platform's name."""
    import platform

    from toolchain.utils.provenance import cpu_model, machine

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: fpu sse2 avx avx2 fma\n\n"
                    "processor\t: 1\nmodel name\t: Example CPU 9000\nflags\t\t: fpu sse2 avx avx2 fma avx512f\n")
    assert cpu_model(info) == ("Example CPU 9000", "AVX2")  # the first processor's entry
    unnamed = tmp_path / "cpuinfo-unnamed"  # cpu_model is cached per path
    unnamed.write_text("processor\t: 0\nflags\t\t: fpu avx512f\n")
    assert cpu_model(unnamed) == (platform.processor() or platform.machine(), "AVX-512")
    assert cpu_model(tmp_path / "missing")[1] == "no AVX2"
    name, isa = cpu_model()
    assert f"{name} ({isa})" in machine() and name
