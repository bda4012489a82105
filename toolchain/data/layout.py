"""Recognise a dataset folder's layout, so a config pointed at the wrong folder fails clearly.

    camvid        train.txt + train/images/*.jpg + train/labels/*.png
    shanghaitech  train/images/*.jpg + train/points.json
    image_folder  train/<class>/*.jpg
"""
from __future__ import annotations

from pathlib import Path

from toolchain.data.transforms import IMAGE_SUFFIXES
from toolchain.errors import ToolchainError

EXPECTED = {
    "camvid": "{split}.txt, {split}/images/*.jpg and {split}/labels/*.png (CamVid)",
    "shanghaitech": "{split}/images/*.jpg and {split}/points.json (ShanghaiTech)",
    "image_folder": "{split}/<class>/*.jpg (image folders, e.g. the CIFAR-10 subset)",
}
NAMES = {"camvid": "a CamVid (segmentation) layout", "shanghaitech": "a ShanghaiTech (counting) layout",
         "image_folder": "an image-folder (classification) layout"}


def image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def detect_layout(root: Path) -> str | None:
    """Which known layout `root` has, or None."""
    train = root / "train"
    if (root / "train.txt").is_file() or (train / "labels").is_dir():
        return "camvid"
    if (train / "points.json").is_file() or (root / "test" / "points.json").is_file():
        return "shanghaitech"
    for split in ("train", "test"):
        folder = root / split
        if folder.is_dir() and any(d.is_dir() and image_files(d) for d in folder.iterdir()):
            return "image_folder"
    return None


def require_root(cfg, kind: str) -> Path:
    """The resolved data root; a missing, empty or wrong-task folder is a one-line error."""
    root = cfg.data_root()
    hint = "pass --data PATH or set data.root in the config (the real datasets are in ../shared/data)"
    if root is None:
        raise ToolchainError(f"data.kind is '{kind}' but no data folder is set; {hint}")
    if not root.exists():
        raise ToolchainError(f"data folder not found: {root}; {hint}")
    if not root.is_dir():
        raise ToolchainError(f"data path {root} is a file, not a folder; {hint}")
    if not any(root.iterdir()):
        raise ToolchainError(f"data folder {root} is empty; expected {EXPECTED[kind].format(split='train')}")
    found = detect_layout(root)
    if found != kind:
        what = NAMES[found] if found else "no known dataset layout"
        fix = (f"use a config with data.kind: {found}" if found else "check the path")
        raise ToolchainError(f"data folder {root} does not look like {kind}: expected "
                             f"{EXPECTED[kind].format(split='train')}, found {what}; point --data at a "
                             f"{kind} folder or {fix}")
    return root


TASK_OF_KIND = {"camvid": "segmentation", "shanghaitech": "counting", "image_folder": "classification"}
REFERENCE_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def real_data_overrides(root: Path, task: str) -> dict:
    """The `data:` section for a real folder given to a config written for the built-in demo data.

    `acsl deploy configs/demo.yaml --data ../shared/data/camvid` must run on real CamVid: the layout
    is detected, and the data settings (classes, input size, normalisation, augmentation) come from
    the reference config of that dataset kind in configs/. A folder of another task is a one-line error.
    """
    import yaml

    if not root.is_dir():  # a missing folder or a file: say so, not "no known layout"
        what = "is a file, not a folder" if root.exists() else "not found"
        raise ToolchainError(f"data folder {root} {what}; pass --data PATH to a dataset folder "
                             "(the real datasets are in ../shared/data)")
    kind = detect_layout(root)
    if kind is None:
        raise ToolchainError(f"data folder {root} has no known dataset layout; expected one of: "
                             + "; ".join(EXPECTED[k].format(split="train") for k in EXPECTED))
    if TASK_OF_KIND[kind] != task:
        raise ToolchainError(f"data folder {root} is a {TASK_OF_KIND[kind]} dataset ({kind}) but the config's task "
                             f"is {task}; use a {TASK_OF_KIND[kind]} config or point --data at a {task} dataset")
    for ref in sorted(REFERENCE_CONFIGS.glob("*.yaml")):
        data = (yaml.safe_load(ref.read_text()) or {}).get("data") or {}
        if data.get("kind") == kind:
            print(f"data: {root} is a {kind} folder; using the data settings of configs/{ref.name}")
            return {**data, "root": str(root)}
    raise ToolchainError(f"no reference config in {REFERENCE_CONFIGS} for {kind} data; set data.kind: {kind} "
                         "and its classes in your config")
