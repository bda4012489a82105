"""Reports: a versioned JSON record, Markdown, one self-contained HTML page with plots, and a
cross-device combination.

- `schema.py`: `SCHEMA_VERSION`, `variant_row(...)`, `failed_row(...)`, `new_report(...)`, `validate_report(...)`;
- `plots.py`: Pareto (accuracy vs latency), latency distribution, per-layer params/MACs before vs after pruning;
- `render.py`: `to_markdown(report)`, `to_html(report, plots)`, `write_report(report, out_dir)`;
- `combine.py`: `combine_reports(paths, out_html)` (refuses mixed schema versions).
"""
from toolchain.report.render import write_report
from toolchain.report.schema import SCHEMA_VERSION, validate_report

__all__ = ["SCHEMA_VERSION", "validate_report", "write_report"]
