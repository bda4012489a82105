"""Fixed, documented splits.

Where a dataset has no val split (ShanghaiTech B, the CIFAR-10 image folders) val is carved out of
train: the train file names are sorted, permuted with `numpy.random.default_rng(split_seed)`, and
the first `round(val_fraction * n)` (at least 1 when val_fraction > 0) become val; the rest stay
train. `carve_val_stratified` does this per class (seed `split_seed + class index`) so val keeps the
class balance. The same config therefore always gives the same split, on every machine.

Every split list is then put in a seeded order (`ordered`) and `max_images` keeps its first N,
so a capped quick run uses a deterministic, representative subset rather than the first N files.
"""
from __future__ import annotations

from typing import Hashable, Sequence, TypeVar

import numpy as np

T = TypeVar("T")


def _val_count(n: int, val_fraction: float) -> int:
    if val_fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(val_fraction * n)))


def carve_val(names: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, val) name lists carved from sorted `names` with a seeded permutation."""
    ordered_names = sorted(names)
    perm = np.random.default_rng(seed).permutation(len(ordered_names))
    k = _val_count(len(ordered_names), val_fraction)
    val = sorted(ordered_names[i] for i in perm[:k])
    train = sorted(ordered_names[i] for i in perm[k:])
    return train, val


def carve_val_stratified(items: Sequence[tuple[str, int]], val_fraction: float, seed: int):
    """(train, val) lists of (name, class) carved per class, each class with seed `seed + class`."""
    by_class: dict[int, list[str]] = {}
    for name, label in items:
        by_class.setdefault(label, []).append(name)
    train, val = [], []
    for label in sorted(by_class):
        tr, va = carve_val(by_class[label], val_fraction, seed + label)
        train += [(n, label) for n in tr]
        val += [(n, label) for n in va]
    return train, val


def ordered(items: Sequence[T], seed: int, max_images: int | None = None) -> list[T]:
    """Items in a seeded order (sorted first, so file-system order never matters), capped at max_images."""
    items = sorted(items, key=_sort_key)
    perm = np.random.default_rng([int(seed), 7919]).permutation(len(items))
    out = [items[i] for i in perm]
    return out[:max_images] if max_images else out


def _sort_key(item: Hashable):
    return item if isinstance(item, (str, tuple)) else str(item)


def describe_carve(dataset: str, val_fraction: float, seed: int, n_train: int, n_val: int) -> str:
    return (f"{dataset}: val carved from train (val_fraction={val_fraction}, split_seed={seed}: sorted names, "
            f"seeded permutation, first {n_val} -> val, {n_train} stay train)")
