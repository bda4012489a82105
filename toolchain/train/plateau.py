"""Has a training run reached a plateau? The rule of the compression protocol (docs/SPARSITY.md): the best val
metric gained less than `tol` over the last `fraction` of the epochs (best over the whole run minus best over the
epochs before that window, in the metric's unit, positive = better)."""
from __future__ import annotations

PLATEAU_FRACTION = 0.2  # the last 20% of the epochs
PLATEAU_TOL = 0.3       # points of mIoU / top-1, heads of MAE


def plateau_check(history: list, metric: str, higher_is_better: bool, fraction: float = PLATEAU_FRACTION,
                  tol: float = PLATEAU_TOL) -> dict:
    """How much the last `fraction` of the epochs improved the best val metric, and whether that is < tol.
    `history`: the per-epoch records of fit() ({"epoch": n, "val": {metric: value}, ...})."""
    points = [(h["epoch"], h["val"][metric]) for h in history if h.get("val") and metric in h["val"]]
    if len(points) < 2:
        raise ValueError("the plateau check needs the val metric of at least 2 epochs")
    epochs = max(e for e, _ in points)
    start = epochs - max(1, round(fraction * epochs))  # the window is epochs start+1 .. epochs
    before = [v for e, v in points if e <= start]
    if not before:
        raise ValueError(f"no val metric before the last {fraction:.0%} of the epochs (epoch {start})")
    best = max if higher_is_better else min
    sign = 1.0 if higher_is_better else -1.0
    best_all, best_before = best(v for _, v in points), best(before)
    gain = sign * (best_all - best_before)
    window = [v for e, v in points if e > start]
    mean = sum(window) / len(window)
    spread = (sum((v - mean) ** 2 for v in window) / (len(window) - 1)) ** 0.5 if len(window) > 1 else None
    return {"rule": f"best val gain over the last {fraction:.0%} of the epochs (epochs {start + 1}-{epochs}) < {tol}",
            "window_start_epoch": start + 1, "epochs": epochs, "best_before": best_before,
            "best": best_all, "gain": round(gain, 4), "tol": tol, "plateau": bool(gain < tol),
            "window_val_std": None if spread is None else round(spread, 4)}  # epoch-to-epoch val noise, for scale


def describe(check: dict, metric: str) -> str:
    verdict = "at a plateau" if check["plateau"] else "not at a plateau: more epochs would still help"
    return (f"plateau check: the last {check['epochs'] - check['window_start_epoch'] + 1} epochs gained "
            f"{check['gain']:+.3f} val {metric} (rule < {check['tol']}): {verdict}")
