"""`acsl data check`: validate a dataset folder and gather its statistics.

Checks, per split: every image opens (a header check, or a full decode with `full=True`), every
image has a label, and every label is in range. Segmentation labels are always decoded in full
(range checking needs the pixels and is cheap), so class pixel frequencies cover every label of the
split; counting statistics come from the point annotations; classification counts images per class.
Every image's label must have the image's size (a label 120x160 for a 240x320 image fails training),
and every points.json entry must be a list of [x, y] pairs inside its image.

Problems are collected, not raised one at a time: each is one line naming the file, and
`check_dataset` raises `DataProblems` (a ToolchainError whose `.problems` lists every line) when
there are any, so `acsl data check` prints one line per problem.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
from tqdm import tqdm

from toolchain.data import build_dataset, describe_source, uses_synthetic
from toolchain.data.base import SPLITS
from toolchain.data.transforms import load_label, verify_image
from toolchain.errors import ToolchainError


class DataProblems(ToolchainError):
    """One or more problems in a data folder; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        super().__init__(self.problems[0] + more)


def check_dataset(cfg, full: bool = False) -> dict:
    """Validate every split (image headers, or full decodes with `full`); a JSON-able dict of statistics.

    Raises DataProblems listing every problem found (one line each).
    """
    problems: list[str] = []
    report: dict = {
        "source": None,  # described once the folder is known to load
        "kind": "synthetic" if uses_synthetic(cfg) else cfg.data.kind,
        "task": cfg.task,
        "root": None if uses_synthetic(cfg) else str(cfg.data_root()),
        "full_decode": bool(full),
        "splits": {},
    }
    bad_annotations = _annotation_problems(cfg)
    for sources in bad_annotations.values():
        problems.extend(sources)
    for split in SPLITS:
        if bad_annotations.get("test" if split == "test" else "train"):
            continue  # its points.json problems are listed above, one per entry
        try:
            dataset = build_dataset(cfg, split, train=False)
        except ToolchainError as err:
            _add(problems, str(err))
            continue
        report["splits"][split] = _check_split(cfg, dataset, full, problems)
    if problems:
        raise DataProblems(problems)
    report["source"] = describe_source(cfg)
    train_ds = build_dataset(cfg, "train", train=False)
    carve = getattr(train_ds, "carve_description", None)
    report["val_split"] = carve() if carve else f"{split_origin(cfg)}"
    if cfg.task == "segmentation":
        names = list(cfg.data.class_names) or [str(i) for i in range(cfg.data.num_classes)]
        report["class_names"] = names
    return report


def split_origin(cfg) -> str:
    return f"{cfg.data.kind}: val read from the dataset's own val split"


def _add(problems: list[str], line: str) -> None:
    if line not in problems:  # e.g. a missing data folder, reported once and not per split
        problems.append(line)


def _annotation_problems(cfg) -> dict[str, list[str]]:
    """Malformed points.json entries per source split (ShanghaiTech), all of them."""
    if uses_synthetic(cfg) or cfg.data.kind != "shanghaitech":
        return {}
    from toolchain.data.shanghaitech import parse_points

    out = {}
    for source in ("train", "test"):
        path = cfg.data_root() / source / "points.json"
        if path.is_file():
            try:
                out[source] = parse_points(path)[1]
            except ToolchainError as err:  # not JSON, not a mapping
                out[source] = [str(err)]
    return out


def _check_split(cfg, dataset, full: bool, problems: list[str]) -> dict:
    sizes: Counter = Counter()
    stats: dict = {"images": len(dataset)}
    synthetic = not hasattr(dataset, "image_path")
    pixel_counts = np.zeros(cfg.data.num_classes + 1, dtype=np.int64)  # last bin: ignored pixels
    head_counts: list[int] = []
    per_class: Counter = Counter()
    for i in tqdm(range(len(dataset)), desc=f"check {dataset.split}", disable=None, leave=False):
        try:
            size, target = _check_sample(cfg, dataset, i, synthetic, full)
        except ToolchainError as err:
            _add(problems, str(err))
            continue
        sizes[size] += 1
        if cfg.task == "segmentation":
            _count_pixels(target, cfg, pixel_counts)
        elif cfg.task == "counting":
            head_counts.append(len(target))
        else:
            per_class[int(target)] += 1
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


def _check_sample(cfg, dataset, i: int, synthetic: bool, full: bool):
    """(image size, raw target) of one sample; a problem raises a one-line ToolchainError."""
    if synthetic:
        image, target = dataset.load_raw(i)
        return tuple(image.shape[:2]), target
    size = tuple(verify_image(dataset.image_path(i), full=full))
    if cfg.task == "segmentation":
        return size, _checked_label(cfg, dataset, i, size)
    if cfg.task == "counting":
        from toolchain.data.shanghaitech import check_points

        points = dataset.samples[i][2]
        check_points(points, size, dataset.image_path(i))
        return size, points
    return size, dataset.label(i)


def _checked_label(cfg, dataset, index: int, image_size: tuple[int, int]) -> np.ndarray:
    from toolchain.data.camvid import check_label_values

    path = dataset.label_path(index)
    label = check_label_values(load_label(path), path, cfg.data.num_classes, cfg.data.ignore_index)
    if tuple(label.shape) != tuple(image_size):
        raise ToolchainError(f"label {path} is {label.shape[0]}x{label.shape[1]} but its image "
                             f"{dataset.image_path(index)} is {image_size[0]}x{image_size[1]}; "
                             "labels must match their images pixel for pixel")
    return label


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
