"""Render a report as Markdown and as one self-contained HTML page (plots inlined as base64 PNG),
and write report.json / report.md / report.html / *.png into a folder atomically."""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Optional

from toolchain.report import plots
from toolchain.report.schema import validate_report
from toolchain.utils.io import atomic_write_bytes, atomic_write_text, write_json

TABLE_COLUMNS = [("variant", "variant"), ("status", "status"), ("backend", "backend"), ("size", "size"),
                 ("accuracy", "accuracy"), ("latency_median_ms", "median ms"), ("latency_p99_ms", "p99 ms"),
                 ("throughput_ips", "images/s"), ("memory", "host RSS +"), ("measured_on", "measured on")]


def _mib(n: Optional[int]) -> str:
    return "-" if n is None else f"{n / 2**20:.2f} MiB"


def _num(v, fmt="{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def table_cells(row: dict, metric: str) -> list[str]:
    status = row["status"] if row["status"] == "ok" else f"{row['status']}: {row.get('reason') or ''}"
    return [row["variant"], status, row.get("backend") or "-", _mib(row.get("size_bytes")),
            "-" if row.get("accuracy") is None else f"{metric} {row['accuracy']:.4f}",
            _num(row.get("latency_median_ms")), _num(row.get("latency_p99_ms")),
            _num(row.get("throughput_ips"), "{:.1f}"), _mib(row.get("memory_bytes")), row.get("measured_on") or "-"]


def _estimate_lines(report: dict) -> list[str]:
    lines = []
    for row in report["variants"]:
        est = row.get("estimate")
        if est and est.get("available"):
            eff = est.get("efficiency")
            eff_s = f", measured efficiency {eff:.1%}" if eff is not None else f" ({est.get('efficiency_note', 'no efficiency')})"
            lines.append(f"{row['variant']}: roofline floor on {est.get('target')} = {est['floor_ms']:.4f} ms "
                         f"({est['bound']}-bound; ESTIMATE from {est.get('source')}){eff_s}")
        elif est:
            lines.append(f"{row['variant']}: no roofline estimate ({est.get('reason')})")
    return lines


def _header_facts(report: dict) -> list[str]:
    exp, tgt = report["experiment"], report["target"]
    where = ("on the target device" if report["on_target_device"]
             else f"NOT on the target device ({tgt['name']}): measured numbers are from this machine; "
                  "numbers for the target are estimates")
    return [f"experiment: {exp.get('name')} ({exp.get('task')}, model {exp.get('model')} width {exp.get('width')})",
            f"target: {tgt['name']} ({tgt.get('description') or ''}), backend {tgt.get('backend')}",
            f"measured on: {report['machine']} - {where}",
            f"accuracy metric: {report['metric']['name']} on the {report['metric'].get('split', 'eval')} split, "
            "through each deployed engine",
            f"created {report['created']}, toolchain {report['provenance'].get('versions', {}).get('toolchain')}, "
            f"commit {report['provenance'].get('git_commit')}"]


def _top_layers(report: dict) -> list[tuple[str, str, list[dict]]]:
    out = []
    for row in report["variants"]:
        top = (row.get("profile") or {}).get("layers_top10")
        if top and top.get("layers"):
            out.append((row["variant"], top["source"], top["layers"]))
    return out


REALISATION_COLUMNS = (
    ("model", lambda r: r.get("model", "slim")), ("precision", lambda r: r["precision"]), ("dense ms", lambda r: f"{r['dense_ms']:.3f}"),
    ("pruned ms", lambda r: f"{r['slim_ms']:.3f}"), ("MACs ratio", lambda r: f"{r['macs_ratio']:.2f}x"),
    ("measured speed-up", lambda r: f"{r['speedup']:.2f}x"), ("realisation", lambda r: f"{r['realisation']:.2f}"))


def _realisation_markdown(report: dict) -> list[str]:
    real = report.get("realisation") or []
    if not real:
        return []
    lines = ["## Latency realisation (pruned vs dense)", "",
             "| " + " | ".join(h for h, _ in REALISATION_COLUMNS) + " |", "|" + " --- |" * len(REALISATION_COLUMNS)]
    lines += ["| " + " | ".join(fmt(r) for _, fmt in REALISATION_COLUMNS) + " |" for r in real]
    return lines + ["", "Realisation = measured speed-up / MACs ratio: 1.0 when every MAC removed became time saved.", ""]


def _latency_variant_lines(report: dict) -> list[str]:
    lv = report.get("latency_variant")
    if not lv:
        return []
    ms = lambda v: "n/a" if v is None else f"{v:.3f} ms"  # noqa: E731
    return [f"budget {lv['budget']} ({lv.get('budget_source') or 'deploy.latency_variant'})",
            f"slim plan (prune.budget) measured {ms(lv.get('slim_plan_measured_ms'))}, predicted "
            f"{ms(lv.get('slim_plan_predicted_ms'))}; slim_latency predicted "
            f"{ms(lv.get('predicted_ms'))}, measured {ms(lv.get('measured_ms'))} while pruning "
            f"(ONNX Runtime CPU, {lv.get('threads')} thread(s), timed against dense and given in the latency table's "
            f"ms; dense {ms(lv.get('dense_measured_ms'))} when the table was measured)",
            "plan measurements (predicted -> measured, refitting the table after each): " + ", ".join(
                f"{ms(c['predicted_ms'])} -> {ms(c['measured_ms'])}" for c in lv.get("calibration") or []),
            "compared here, not shipped in the bundle: set prune.budget to the budget above to ship it"]


def to_markdown(report: dict) -> str:
    metric = report["metric"]["name"]
    lines = [f"# Deploy report: {report['experiment'].get('name')} on {report['target']['name']}", ""]
    lines += [f"- {f}" for f in _header_facts(report)] + [""]
    lines.append("| " + " | ".join(h for _, h in TABLE_COLUMNS) + " |")
    lines.append("|" + " --- |" * len(TABLE_COLUMNS))
    for row in report["variants"]:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in table_cells(row, metric)) + " |")
    lines += ["", "Latency: batch 1, warm-up by time then timed runs; median and p99 per inference. "
              "host RSS +: peak resident memory over the idle process while loading and running.", ""]
    lines += _realisation_markdown(report)
    if report.get("latency_variant"):
        lines += ["## Latency-budget variant (slim_latency)", ""] + [f"- {l}" for l in _latency_variant_lines(report)] + [""]
    est = _estimate_lines(report)
    if est:
        lines += ["## Estimates (not measurements)", ""] + [f"- {l}" for l in est] + [""]
    for variant, source, layers in _top_layers(report):
        lines += [f"## Top layers: {variant} ({source})", "", "| layer | op | mean ms | % |", "| --- | --- | --- | --- |"]
        lines += [f"| {l['name']} | {l['op']} | {l['mean_ms']:.4f} | {l['percent']:.1f} |" for l in layers] + [""]
    if report["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


def make_plots(report: dict) -> dict[str, bytes]:
    metric = report["metric"]
    made = {
        "pareto.png": plots.plot_pareto(report["variants"], metric["name"], metric["higher_is_better"],
                                        f"{metric['name']} vs latency ({report['machine'][:50]})"),
        "latency.png": plots.plot_latency_distribution(report["variants"]),
        "layers.png": plots.plot_layers_before_after(report["layers_before_after"]),
    }
    return {k: v for k, v in made.items() if v is not None}


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;"
        "font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f2f2f2}"
        ".failed,.skipped{color:#a00}.estimate{color:#8a5a00}img{max-width:100%;margin:1em 0}")


def html_table(header: list[str], rows: list[list[str]], row_classes: Optional[list[str]] = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for i, cells in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "".join(out) + "</table>"


def html_page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{body}</body></html>\n")


def to_html(report: dict, pngs: dict[str, bytes]) -> str:
    metric = report["metric"]["name"]
    title = f"Deploy report: {report['experiment'].get('name')} on {report['target']['name']}"
    body = [f"<h1>{html.escape(title)}</h1><ul>"] + [f"<li>{html.escape(f)}</li>" for f in _header_facts(report)] + ["</ul>"]
    body.append(html_table([h for _, h in TABLE_COLUMNS], [table_cells(r, metric) for r in report["variants"]],
                           [r["status"] for r in report["variants"]]))
    real = report.get("realisation") or []
    if real:
        body.append("<h2>Latency realisation (pruned vs dense)</h2>" + html_table(
            [h for h, _ in REALISATION_COLUMNS], [[fmt(r) for _, fmt in REALISATION_COLUMNS] for r in real]))
    if report.get("latency_variant"):
        body.append("<h2>Latency-budget variant (slim_latency)</h2><ul>" +
                    "".join(f"<li>{html.escape(l)}</li>" for l in _latency_variant_lines(report)) + "</ul>")
    est = _estimate_lines(report)
    if est:
        body.append("<h2>Estimates (not measurements)</h2><ul class='estimate'>" +
                    "".join(f"<li>{html.escape(l)}</li>" for l in est) + "</ul>")
    for name, alt in (("pareto.png", "accuracy vs latency"), ("latency.png", "latency distribution"),
                      ("layers.png", "params and MACs per layer before vs after pruning")):
        if name in pngs:
            body.append(f"<h2>{html.escape(alt)}</h2>{_img(pngs[name], alt)}")
    for variant, source, layers in _top_layers(report):
        body.append(f"<h2>Top layers: {html.escape(variant)} ({html.escape(source)})</h2>")
        body.append(html_table(["layer", "op", "mean ms", "%"],
                               [[l["name"], l["op"], f"{l['mean_ms']:.4f}", f"{l['percent']:.1f}"] for l in layers]))
    if report["notes"]:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report["notes"]) + "</ul>")
    return html_page(title, "".join(body))


def write_report(report: dict, out_dir, stem: str = "report") -> dict[str, Path]:
    """Validate, then write STEM.json, STEM.md, STEM.html and the PNGs into out_dir; returns the paths."""
    validate_report(report)
    out_dir = Path(out_dir)
    pngs = make_plots(report)
    paths = {"json": write_json(out_dir / f"{stem}.json", report),
             "md": atomic_write_text(out_dir / f"{stem}.md", to_markdown(report)),
             "html": atomic_write_text(out_dir / f"{stem}.html", to_html(report, pngs))}
    for name, png in pngs.items():
        paths[name] = atomic_write_bytes(out_dir / f"{stem}_{name}", png)
    return paths
