"""The report's JSON schema ("acsl-report/1").

A report is one dict:

    schema, created, experiment {name, task, model, width, config_sha256}, target {name, description, backend},
    machine (where this run measured), on_target_device (bool), provenance {git_commit, versions},
    metric {name, higher_is_better}, variants [row...], layers_before_after [...], notes [...]

A variant row (one per dense/slim x fp32/fp16/int8) always has every key of `VARIANT_FIELDS`:
numbers are None when not measured, `status` is "ok" | "failed" | "skipped" with `reason`, and
`measured_on` names the machine behind the latency / accuracy / memory numbers. Estimates live under
`estimate` with `kind: "estimate"`. Bump SCHEMA_VERSION whenever a field changes meaning.
"""
from __future__ import annotations

import datetime as _dt
from typing import Any, Optional

from toolchain.errors import ToolchainError

SCHEMA_VERSION = "acsl-report/1"

REPORT_FIELDS = ("schema", "created", "experiment", "target", "machine", "on_target_device", "provenance",
                 "metric", "variants", "layers_before_after", "notes")
VARIANT_FIELDS = ("variant", "model", "precision", "status", "reason", "backend", "file", "size_bytes",
                  "accuracy", "accuracy_metric", "latency_median_ms", "latency_p99_ms", "throughput_ips",
                  "memory_bytes", "measured_on", "estimate", "profile")


def new_report(*, experiment: dict, target: dict, machine: str, on_target_device: bool, provenance: dict,
               metric: dict, notes: Optional[list[str]] = None) -> dict:
    return {"schema": SCHEMA_VERSION, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "experiment": experiment, "target": target, "machine": machine, "on_target_device": on_target_device,
            "provenance": provenance, "metric": metric, "variants": [], "layers_before_after": [],
            "notes": list(notes or [])}


def variant_row(variant: str, model: str, precision: str, *, profile: dict, file: str, size_bytes: Optional[int],
                accuracy: Optional[float], accuracy_metric: str) -> dict:
    """A measured variant, summarised from a `toolchain.profile.profiler.profile_engine` record."""
    latency = _first_batch_stats(profile.get("latency", {}))
    memory = profile.get("memory", {})
    roof = profile.get("roofline")
    return {
        "variant": variant, "model": model, "precision": precision, "status": "ok", "reason": None,
        "backend": profile.get("backend"), "file": file, "size_bytes": size_bytes,
        "accuracy": accuracy, "accuracy_metric": accuracy_metric,
        "latency_median_ms": latency.get("median_ms"), "latency_p99_ms": latency.get("p99_ms"),
        "throughput_ips": latency.get("throughput_ips"),
        "memory_bytes": memory.get("host_peak_rss_delta_bytes"),
        "measured_on": profile.get("measured_on"),
        "estimate": roof,
        "profile": profile,
    }


def failed_row(variant: str, model: str, precision: str, reason: str, status: str = "failed",
               file: Optional[str] = None, size_bytes: Optional[int] = None) -> dict:
    """A variant whose stage failed or was skipped: a row with its reason, never a crash."""
    row: dict[str, Any] = {k: None for k in VARIANT_FIELDS}
    row.update({"variant": variant, "model": model, "precision": precision, "status": status,
                "reason": reason, "file": file, "size_bytes": size_bytes})
    return row


def _first_batch_stats(latency: dict) -> dict:
    for batch in sorted(latency, key=lambda b: int(b)):
        if "error" not in latency[batch]:
            return latency[batch]
    return {}


def validate_report(report: Any, where: str = "report") -> dict:
    """Check the schema version and that every field is present; returns the report."""
    if not isinstance(report, dict) or "schema" not in report:
        raise ToolchainError(f"{where}: not an acsl report (no 'schema' field); pass JSON written by `acsl deploy`")
    if report["schema"] != SCHEMA_VERSION:
        raise ToolchainError(f"{where}: schema '{report['schema']}' is not supported (this toolchain reads "
                             f"'{SCHEMA_VERSION}'); regenerate it with this version of `acsl deploy`")
    missing = [f for f in REPORT_FIELDS if f not in report]
    if missing:
        raise ToolchainError(f"{where}: missing report fields {', '.join(missing)}; the file is incomplete or edited")
    for i, row in enumerate(report["variants"]):
        gaps = [f for f in VARIANT_FIELDS if f not in row]
        if gaps:
            raise ToolchainError(f"{where}: variant {i} misses {', '.join(gaps)}; the file is incomplete or edited")
        if row["status"] == "ok" and not row.get("measured_on"):
            raise ToolchainError(f"{where}: variant {row['variant']} has numbers but no 'measured_on'")
    return report
