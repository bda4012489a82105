"""`acsl data check`: validate a dataset folder and gather its statistics.

Checks, per split: every image opens (a header check, or a full decode with `full=True`), every
image has a label, and every label is in range. Segmentation labels are always decoded in full
(range checking needs the pixels and is cheap), so class pixel frequencies cover every label of the
split; counting statistics come from the point annotations; classification counts images per class.
The first problem raises a one-line ToolchainError naming the file.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
from tqdm import tqdm

from toolchain.data import build_dataset, describe_source, uses_synthetic
from toolchain.data.base import SPLITS
from toolchain.data.transforms import load_label, verify_image


def check_dataset(cfg, full: bool = False) -> dict:
    """Validate every split (image headers, or full decodes with `full`); a JSON-able dict of statistics."""
    report: dict = {
        "source": describe_source(cfg),
        "kind": "synthetic" if uses_synthetic(cfg) else cfg.data.kind,
        "task": cfg.task,
        "root": None if uses_synthetic(cfg) else str(cfg.data_root()),
        "full_decode": bool(full),
        "splits": {},
    }
    for split in SPLITS:
        dataset = build_dataset(cfg, split, train=False)
        report["splits"][split] = _check_split(cfg, dataset, full)
    train_ds = build_dataset(cfg, "train", train=False)
    carve = getattr(train_ds, "carve_description", None)
    report["val_split"] = carve() if carve else f"{split_origin(cfg)}"
    if cfg.task == "segmentation":
        names = list(cfg.data.class_names) or [str(i) for i in range(cfg.data.num_classes)]
        report["class_names"] = names
    return report


def split_origin(cfg) -> str:
    return f"{cfg.data.kind}: val read from the dataset's own val split"


def _check_split(cfg, dataset, full: bool) -> dict:
    sizes: Counter = Counter()
    stats: dict = {"images": len(dataset)}
    synthetic = not hasattr(dataset, "image_path")
    pixel_counts = np.zeros(cfg.data.num_classes + 1, dtype=np.int64)  # last bin: ignored pixels
    head_counts: list[int] = []
    per_class: Counter = Counter()
    for i in tqdm(range(len(dataset)), desc=f"check {dataset.split}", disable=None, leave=False):
        if synthetic:
            image, target = dataset.load_raw(i)
            sizes[image.shape[:2]] += 1
        else:
            sizes[tuple(verify_image(dataset.image_path(i), full=full))] += 1
            target = None
        if cfg.task == "segmentation":
            label = target if synthetic else _checked_label(cfg, dataset, i)
            _count_pixels(label, cfg, pixel_counts)
        elif cfg.task == "counting":
            if not synthetic and full:
                dataset.load_raw(i)  # decodes and checks points lie inside the image
            head_counts.append(len(target) if synthetic else dataset.count(i))
        else:
            per_class[int(target) if synthetic else dataset.label(i)] += 1
    stats["image_sizes"] = {f"{h}x{w}": n for (h, w), n in sorted(sizes.items())}
    if cfg.task == "segmentation":
        total = max(int(pixel_counts.sum()), 1)
        stats["class_pixel_fraction"] = [round(float(c) / total, 5) for c in pixel_counts[:-1]]
        stats["ignored_pixel_fraction"] = round(float(pixel_counts[-1]) / total, 5)
    elif cfg.task == "counting":
        counts = np.asarray(head_counts or [0])
        stats["heads"] = {"total": int(counts.sum()), "mean": round(float(counts.mean()), 2),
                          "min": int(counts.min()), "max": int(counts.max())}
    else:
        names = getattr(dataset, "class_names", None) or [str(k) for k in range(cfg.data.num_classes)]
        stats["images_per_class"] = {names[k]: per_class.get(k, 0) for k in range(cfg.data.num_classes)}
    return stats


def _checked_label(cfg, dataset, index: int) -> np.ndarray:
    from toolchain.data.camvid import check_label_values

    path = dataset.label_path(index)
    return check_label_values(load_label(path), path, cfg.data.num_classes, cfg.data.ignore_index)


def _count_pixels(label: np.ndarray, cfg, counts: np.ndarray) -> None:
    k = cfg.data.num_classes
    valid = label[(label >= 0) & (label < k)]
    counts[:k] += np.bincount(valid.ravel(), minlength=k)[:k]
    counts[k] += int(label.size - valid.size)


def format_report(report: dict) -> str:
    """Human-readable summary printed by `acsl data check`."""
    lines = [f"source: {report['source']}", f"task: {report['task']}",
             f"checked: {'full decode' if report['full_decode'] else 'image headers'}; labels/points all validated",
             f"val split: {report['val_split']}"]
    for split, stats in report["splits"].items():
        sizes = ", ".join(f"{k} ({v})" for k, v in stats["image_sizes"].items())
        lines.append(f"{split}: {stats['images']} images, sizes {sizes}")
        if "class_pixel_fraction" in stats:
            names = report.get("class_names") or [str(i) for i in range(len(stats["class_pixel_fraction"]))]
            freq = ", ".join(f"{n} {100 * f:.1f}%" for n, f in zip(names, stats["class_pixel_fraction"]))
            lines.append(f"  class pixels: {freq}; ignored {100 * stats['ignored_pixel_fraction']:.1f}%")
        if "heads" in stats:
            h = stats["heads"]
            lines.append(f"  heads: total {h['total']}, mean {h['mean']}, min {h['min']}, max {h['max']}")
        if "images_per_class" in stats:
            lines.append("  per class: " + ", ".join(f"{k} {v}" for k, v in stats["images_per_class"].items()))
    return "\n".join(lines)
