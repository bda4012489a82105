"""Report plots (matplotlib, Agg backend, PNG bytes): Pareto, latency distribution, per-layer cost.

Each function returns PNG bytes, or None when there is nothing to draw (e.g. no measured variant).
"""
from __future__ import annotations

import io
from typing import Optional

_COLORS = {"fp32": "#1f77b4", "fp16": "#2ca02c", "int8": "#d62728"}


def _figure(width=6.4, height=4.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    return plt, fig, ax


def save_png(fig, path, dpi: int = 120) -> None:
    """Write a matplotlib figure to `path` as PNG atomically (temporary file, then rename) and close it."""
    import matplotlib.pyplot as plt

    from toolchain.utils.io import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[tuple[float, float]]:
    """Points (latency, accuracy) not dominated by a faster-and-at-least-as-accurate one, by latency."""
    front, best = [], None
    for lat, acc in sorted(points, key=lambda p: (p[0], -p[1] if higher_is_better else p[1])):
        if best is None or (acc > best if higher_is_better else acc < best):
            front.append((lat, acc))
            best = acc
    return front


def plot_pareto(rows: list[dict], metric: str, higher_is_better: bool, title: str = "") -> Optional[bytes]:
    pts = [r for r in rows if r["status"] == "ok" and r["accuracy"] is not None and r["latency_median_ms"]]
    if not pts:
        return None
    plt, fig, ax = _figure()
    for r in pts:
        marker = {"dense": "s", "slim": "o"}.get(r["model"], "^")  # ^: slim_latency (deploy.latency_variant)
        ax.scatter(r["latency_median_ms"], r["accuracy"], color=_COLORS.get(r["precision"], "gray"), marker=marker, s=60)
        ax.annotate(r["variant"], (r["latency_median_ms"], r["accuracy"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    front = pareto_front([(r["latency_median_ms"], r["accuracy"]) for r in pts], higher_is_better)
    ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="gray", linewidth=1, label="Pareto front")
    ax.set_xlabel("median latency, batch 1 (ms)")
    ax.set_ylabel(f"{metric} ({'higher' if higher_is_better else 'lower'} is better)")
    ax.set_title(title or "accuracy vs latency")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return _png(plt, fig)


def plot_latency_distribution(rows: list[dict], title: str = "") -> Optional[bytes]:
    series = []
    for r in rows:
        if r["status"] != "ok" or not r.get("profile"):
            continue
        lat = r["profile"].get("latency", {})
        first = next((lat[b] for b in sorted(lat, key=int) if "samples_ms" in lat[b]), None)
        if first:
            series.append((r["variant"], first["samples_ms"]))
    if not series:
        return None
    plt, fig, ax = _figure()
    ax.boxplot([s for _, s in series], orientation="horizontal", showfliers=True)
    ax.set_yticks(range(1, len(series) + 1), [n for n, _ in series], fontsize=8)
    ax.set_xlabel("latency per inference, batch 1 (ms)")
    ax.set_title(title or "latency distribution (timed runs)")
    ax.grid(alpha=0.3, axis="x")
    return _png(plt, fig)


def plot_layers_before_after(layers: list[dict], title: str = "") -> Optional[bytes]:
    rows = [l for l in layers if l.get("macs_before")]
    if not rows:
        return None
    import numpy as np

    plt, fig, axes = _figure(width=9, height=5)
    fig.clear()
    ax_p, ax_m = fig.subplots(2, 1, sharex=True)
    x = np.arange(len(rows))
    for ax, key, label in ((ax_p, "params", "params"), (ax_m, "macs", "MACs")):
        before = [l[f"{key}_before"] or 0 for l in rows]
        after = [l[f"{key}_after"] or 0 for l in rows]
        ax.bar(x - 0.2, before, width=0.4, label="dense", color="#999999")
        ax.bar(x + 0.2, after, width=0.4, label="ACSL slim", color="#1f77b4")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax_m.set_xticks(x, [str(i) for i in range(len(rows))], fontsize=7)
    ax_m.set_xlabel("layer (graph order; names in the JSON report)")
    ax_p.set_title(title or "params and MACs per layer before vs after pruning")
    return _png(plt, fig)


def plot_devices(rows: list[dict]) -> Optional[bytes]:
    """Grouped bars: median latency per variant, one colour per device (combine)."""
    ok = [r for r in rows if r["status"] == "ok" and r["latency_median_ms"]]
    if not ok:
        return None
    import numpy as np

    devices = list(dict.fromkeys(r["device"] for r in ok))
    variants = list(dict.fromkeys(r["variant"] for r in ok))
    plt, fig, ax = _figure(width=8, height=4.5)
    width = 0.8 / len(devices)
    for i, dev in enumerate(devices):
        vals = [next((r["latency_median_ms"] for r in ok if r["device"] == dev and r["variant"] == v), 0) for v in variants]
        ax.bar(np.arange(len(variants)) + i * width - 0.4 + width / 2, vals, width=width, label=dev[:60])
    ax.set_xticks(np.arange(len(variants)), variants, fontsize=8, rotation=20)
    ax.set_ylabel("median latency, batch 1 (ms)")
    ax.set_title("latency per device")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return _png(plt, fig)
