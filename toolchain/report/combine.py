"""`acsl report combine reports/*.json -o devices.html`: one table and plot across devices.

Every input must carry the same schema version; a mix is refused with a clear error rather than
silently lining up fields that changed meaning.
"""
from __future__ import annotations

import json
from pathlib import Path

from toolchain.errors import ToolchainError
from toolchain.report import plots
from toolchain.report.render import _img, _mib, _num, html_page, html_table
from toolchain.report.schema import SCHEMA_VERSION, validate_report
from toolchain.utils.io import atomic_write_text, write_json

HEADER = ["device (measured on)", "target", "variant", "status", "accuracy", "median ms", "p99 ms", "images/s",
          "size", "host RSS +"]


def load_reports(paths: list) -> list[dict]:
    if not paths:
        raise ToolchainError("no report JSON files given; pass e.g. deploy/*/report.json")
    reports, versions = [], {}
    for p in paths:
        try:
            data = json.loads(Path(p).read_text())
        except FileNotFoundError:
            raise ToolchainError(f"report not found: {p}") from None
        except json.JSONDecodeError as err:
            raise ToolchainError(f"{p} is not valid JSON ({err}); pass report.json files") from None
        versions.setdefault(data.get("schema") if isinstance(data, dict) else None, []).append(str(p))
        reports.append(data)
    if len(versions) > 1:
        parts = "; ".join(f"{v}: {', '.join(ps)}" for v, ps in versions.items())
        raise ToolchainError(f"refusing to combine reports with different schema versions ({parts}); "
                             "regenerate the old ones with this toolchain")
    for p, r in zip(paths, reports):
        validate_report(r, where=str(p))
    return reports


def combined_rows(reports: list[dict]) -> list[dict]:
    rows = []
    for r in reports:
        for v in r["variants"]:
            rows.append({**v, "device": v.get("measured_on") or r["machine"], "target": r["target"]["name"],
                         "metric": r["metric"]["name"]})
    return rows


def combine_reports(paths: list, out_html) -> dict[str, Path]:
    """Write OUT.html (table + plot) and OUT.json (the merged rows) next to it."""
    reports = load_reports(paths)
    rows = combined_rows(reports)
    cells = [[r["device"], r["target"], r["variant"],
              r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason') or ''}",
              "-" if r.get("accuracy") is None else f"{r['metric']} {r['accuracy']:.4f}",
              _num(r.get("latency_median_ms")), _num(r.get("latency_p99_ms")), _num(r.get("throughput_ips"), "{:.1f}"),
              _mib(r.get("size_bytes")), _mib(r.get("memory_bytes"))] for r in rows]
    body = ["<h1>Latency per device</h1>",
            f"<p>{len(reports)} reports, schema {SCHEMA_VERSION}. Every number was measured on the device in "
            "its first column.</p>", html_table(HEADER, cells, [r["status"] for r in rows])]
    png = plots.plot_devices(rows)
    if png:
        body.append(_img(png, "latency per device"))
    out_html = Path(out_html)
    slim_rows = [{k: v for k, v in r.items() if k != "profile"} for r in rows]
    return {"html": atomic_write_text(out_html, html_page("Latency per device", "".join(body))),
            "json": write_json(out_html.with_suffix(".json"), {"schema": SCHEMA_VERSION, "combined_from":
                                                              [str(p) for p in paths], "rows": slim_rows})}
