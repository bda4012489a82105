"""Data layer: preprocessing, density maps, loaders, augmentation, synthetic data, bad input, `data check`."""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from toolchain.config import validate_config
from toolchain.data import build_dataset, calibration_arrays, check_dataset, describe_source, preprocess
from toolchain.data.density import density_map
from toolchain.data.splits import carve_val, carve_val_stratified
from toolchain.data.transforms import resize_bilinear, resize_nearest
from toolchain.errors import ToolchainError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_camvid = pytest.mark.skipif(not (SHARED / "camvid").is_dir(), reason=f"real CamVid not found at {SHARED}")
needs_shb = pytest.mark.skipif(not (SHARED / "shanghaitech_b").is_dir(), reason=f"ShanghaiTech B not at {SHARED}")
needs_cifar = pytest.mark.skipif(not (SHARED / "cifar10_subset").is_dir(), reason=f"CIFAR subset not at {SHARED}")

TASK_OF = {"camvid": "segmentation", "shanghaitech": "counting", "image_folder": "classification"}


def make_cfg(kind: str, root=None, task: str | None = None, **data):
    task = task or TASK_OF.get(kind, "segmentation")
    num_classes = {"segmentation": 11, "counting": 1, "classification": 10}[task]
    raw = {"name": "t", "task": task, "model": {"name": "x"},
           "data": {"kind": kind, "root": None if root is None else str(root), "input_size": [64, 64],
                    "num_classes": num_classes, **data}}
    return validate_config(raw)


# ---------------------------------------------------------------------------------------------
# preprocessing and resizing
def test_resize_bilinear_matches_torch_interpolate():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    ref_in = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    for size in [(20, 24), (64, 96), (37, 53)]:
        ref = torch.nn.functional.interpolate(ref_in, size=size, mode="bilinear", align_corners=False)
        ours = resize_bilinear(image, size)
        np.testing.assert_allclose(ours, ref[0].permute(1, 2, 0).numpy(), atol=1e-3)


def test_preprocess_normalises_and_transposes():
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    image[..., 0] = 255
    pp = {"input_size": [4, 6], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.25, 0.5], "scale": 1 / 255}
    out = preprocess(image, pp)
    assert out.shape == (3, 4, 6) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(out[1], -2.0, atol=1e-6)
    with pytest.raises(ToolchainError, match="uint8"):
        preprocess(image.astype(np.float32), pp)


def test_resize_nearest_keeps_label_values():
    label = np.arange(12).reshape(3, 4)
    out = resize_nearest(label, (6, 8))
    assert set(np.unique(out)) == set(range(12))
    np.testing.assert_array_equal(resize_nearest(out, (3, 4)), label)


# ---------------------------------------------------------------------------------------------
# density maps
def test_density_each_head_sums_to_one_even_at_borders():
    points = np.array([[0.1, 0.2], [63.9, 63.5], [32.0, 10.0], [5.0, 60.0]])
    for stride in (1, 8):
        dmap = density_map(points, (64, 64), sigma=3.0, stride=stride)
        assert dmap.shape == (64 // stride, 64 // stride)
        assert abs(dmap.sum() - 4) < 1e-4
    single = density_map(np.array([[0.0, 0.0]]), (32, 32), sigma=4.0)
    assert abs(single.sum() - 1) < 1e-6 and single[0, 0] == single.max()


def test_density_rejects_size_not_multiple_of_stride():
    with pytest.raises(ToolchainError, match="multiple"):
        density_map(np.zeros((1, 2)), (60, 64), sigma=2.0, stride=8)


# ---------------------------------------------------------------------------------------------
# splits
def test_carve_val_fixed_disjoint_and_stratified():
    names = [f"IMG_{i}" for i in range(50)]
    train, val = carve_val(names, 0.1, seed=0)
    assert len(val) == 5 and not set(train) & set(val) and set(train) | set(val) == set(names)
    assert carve_val(list(reversed(names)), 0.1, seed=0) == (train, val)
    assert carve_val(names, 0.1, seed=1)[1] != val
    items = [(f"{c}/{i}", c) for c in range(3) for i in range(20)]
    tr, va = carve_val_stratified(items, 0.25, seed=0)
    assert [sum(1 for _, c in va if c == k) for k in range(3)] == [5, 5, 5] and len(tr) == 45


# ---------------------------------------------------------------------------------------------
# real datasets
@needs_camvid
def test_camvid_item_shapes_dtypes_and_void_mapping():
    cfg = make_cfg("camvid", SHARED / "camvid", input_size=[120, 160], max_images=3, ignore_index=255)
    ds = build_dataset(cfg, "train", train=False)
    assert len(ds) == 3
    image, label = ds[0]
    assert image.shape == (3, 120, 160) and image.dtype == torch.float32
    assert label.shape == (120, 160) and label.dtype == torch.int64
    raw_label = np.asarray(Image.open(ds.label_path(0)))
    values = set(torch.unique(label).tolist())
    assert values <= set(range(11)) | {255}
    assert (11 in raw_label) == (255 in values) and 11 not in values
    assert "CamVid from" in describe_source(cfg)


@needs_camvid
def test_eval_path_equals_preprocess_exactly():
    cfg = make_cfg("camvid", SHARED / "camvid", input_size=[96, 128], max_images=2, ignore_index=11)
    ds = build_dataset(cfg, "val", train=False)
    decoded = np.asarray(Image.open(ds.image_path(1)).convert("RGB"))
    expected = preprocess(decoded, cfg.preprocessing())
    assert np.array_equal(ds[1][0].numpy(), expected)
    cal = calibration_arrays(cfg, 2, seed=0)
    assert len(cal) == 2 and cal[0].shape == (3, 96, 128) and cal[0].dtype == np.float32


@needs_shb
def test_shanghaitech_density_sum_equals_head_count():
    cfg = make_cfg("shanghaitech", SHARED / "shanghaitech_b", input_size=[192, 256], density_stride=8,
                   density_sigma=2.0, max_images=4)
    ds = build_dataset(cfg, "train", train=False)
    points = json.loads((SHARED / "shanghaitech_b" / "train" / "points.json").read_text())
    for i in range(len(ds)):
        _, dmap = ds[i]
        assert dmap.shape == (1, 24, 32) and dmap.dtype == torch.float32
        assert abs(dmap.sum().item() - len(points[ds.sample_name(i)])) < 1e-3


@needs_shb
def test_shanghaitech_val_is_carved_from_train_and_fixed():
    cfg = make_cfg("shanghaitech", SHARED / "shanghaitech_b", input_size=[64, 64])
    train_ds, val_ds = build_dataset(cfg, "train", False), build_dataset(cfg, "val", False)
    train = {train_ds.sample_name(i) for i in range(len(train_ds))}
    val = {val_ds.sample_name(i) for i in range(len(val_ds))}
    assert len(val) == 40 and len(train) == 360 and not train & val
    assert "carved from train" in val_ds.carve_description()


@needs_shb
def test_counting_flip_mirrors_density_and_scale_keeps_count():
    root = SHARED / "shanghaitech_b"
    flip_cfg = make_cfg("shanghaitech", root, input_size=[96, 128], max_images=2,
                        augment={"hflip": True, "scale": [1.0, 1.0], "crop": True})
    train_ds, eval_ds = build_dataset(flip_cfg, "train", True), build_dataset(flip_cfg, "train", False)
    eval_img, eval_map = eval_ds[0]
    flipped = unflipped = 0
    for epoch in range(8):
        train_ds.set_epoch(epoch)
        img, dmap = train_ds[0]
        if torch.equal(img, eval_img):
            unflipped += 1
            torch.testing.assert_close(dmap, eval_map, atol=1e-6, rtol=0)
        else:
            flipped += 1
            assert torch.equal(img, eval_img.flip(-1))
            torch.testing.assert_close(dmap, eval_map.flip(-1), atol=1e-6, rtol=0)
    assert flipped and unflipped
    shrink_cfg = make_cfg("shanghaitech", root, input_size=[96, 128], max_images=2,
                          augment={"hflip": True, "scale": [0.6, 0.95], "crop": True})
    shrink_ds = build_dataset(shrink_cfg, "train", True)
    for epoch in range(3):  # scaled down and padded: no head is cropped away
        shrink_ds.set_epoch(epoch)
        assert abs(shrink_ds[1][1].sum().item() - eval_ds[1][1].sum().item()) < 1e-3


@needs_cifar
def test_image_folder_items_and_stratified_val():
    cfg = make_cfg("image_folder", SHARED / "cifar10_subset", input_size=[32, 32], max_images=20)
    val = build_dataset(cfg, "val", train=False)
    image, label = val[0]
    assert image.shape == (3, 32, 32) and label.dtype == torch.int64 and label.ndim == 0
    assert val.class_names[0] == "airplane" and len(val) == 20


# ---------------------------------------------------------------------------------------------
# augmentation and synthetic data
def test_augmentation_deterministic_per_epoch_and_differs_across_epochs():
    cfg = make_cfg("synthetic", task="segmentation", num_classes=4, max_images=4,
                   augment={"hflip": True, "scale": [0.7, 1.3], "crop": True})
    a, b = build_dataset(cfg, "train", True), build_dataset(cfg, "train", True)
    a.set_epoch(3), b.set_epoch(3)
    for i in range(2):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
    b.set_epoch(4)
    assert any(not torch.equal(a[i][0], b[i][0]) for i in range(4))
    image, label = a[0]
    assert image.shape == (3, 64, 64) and label.dtype == torch.int64


@pytest.mark.parametrize("task", ["segmentation", "counting", "classification"])
def test_synthetic_builds_fast_deterministic_and_has_signal(task):
    cfg = make_cfg("synthetic", task=task, num_classes={"segmentation": 4, "counting": 1, "classification": 3}[task],
                   input_size=[64, 64], density_stride=8)
    start = time.perf_counter()
    splits = {s: build_dataset(cfg, s, train=False) for s in ("train", "val", "test")}
    assert time.perf_counter() - start < 5
    assert [len(d) for d in splits.values()] == [96, 24, 24]
    assert describe_source(cfg) == "built-in synthetic demo data"
    again = build_dataset(cfg, "val", train=False)
    assert torch.equal(again[5][0], splits["val"][5][0])
    assert not torch.equal(splits["train"][0][0], splits["val"][0][0])
    targets = [splits["train"][i][1] for i in range(24)]
    if task == "segmentation":
        assert len(torch.unique(torch.stack(targets))) == 4
    elif task == "counting":
        counts = [len(splits["train"].load_raw(i)[1]) for i in range(24)]
        np.testing.assert_allclose([t.sum().item() for t in targets], counts, atol=1e-3)
        assert max(counts) > min(counts)
    else:
        assert sorted(set(int(t) for t in targets)) == [0, 1, 2]


# ---------------------------------------------------------------------------------------------
# bad input
def _tiny_camvid(tmp_path: Path, n: int = 2) -> Path:
    root = tmp_path / "camvid"
    for split in ("train", "val", "test"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        stems = []
        for i in range(n):
            stem = f"{split}_{i}"
            Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(root / split / "images" / f"{stem}.jpg")
            label = np.zeros((24, 32), np.uint8)
            label[:, 16:] = 3
            label[0, 0] = 11
            Image.fromarray(label).save(root / split / "labels" / f"{stem}.png")
            stems.append(stem)
        (root / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root


def test_missing_and_empty_data_folder(tmp_path):
    with pytest.raises(ToolchainError, match="not found.*--data"):
        build_dataset(make_cfg("camvid", tmp_path / "nope"), "train", False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ToolchainError, match="empty"):
        build_dataset(make_cfg("camvid", tmp_path / "empty"), "train", False)


def test_image_without_label_is_named(tmp_path):
    root = _tiny_camvid(tmp_path)
    (root / "train" / "labels" / "train_1.png").unlink()
    with pytest.raises(ToolchainError, match=r"train_1\.jpg has no label"):
        build_dataset(make_cfg("camvid", root), "train", False)


def test_label_values_out_of_range_name_file_and_values(tmp_path):
    root = _tiny_camvid(tmp_path)
    bad = np.zeros((24, 32), np.uint8)
    bad[3, 3], bad[4, 4] = 20, 37
    Image.fromarray(bad).save(root / "val" / "labels" / "val_0.png")
    ds = build_dataset(make_cfg("camvid", root, ignore_index=11), "val", False)
    index = [ds.sample_name(i) for i in range(len(ds))].index("val_0")
    with pytest.raises(ToolchainError, match=r"val_0\.png has values \[20, 37\]"):
        ds[index]
    with pytest.raises(ToolchainError, match=r"val_0\.png"):
        check_dataset(make_cfg("camvid", root, ignore_index=11))


def test_corrupt_image_is_named(tmp_path):
    root = _tiny_camvid(tmp_path)
    (root / "test" / "images" / "test_1.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    ds = build_dataset(make_cfg("camvid", root), "test", False)
    index = [ds.sample_name(i) for i in range(len(ds))].index("test_1")
    with pytest.raises(ToolchainError, match=r"corrupt.*test_1\.jpg"):
        ds[index]
    with pytest.raises(ToolchainError, match=r"test_1\.jpg"):
        check_dataset(make_cfg("camvid", root))


def test_folder_of_the_wrong_task(tmp_path):
    root = tmp_path / "shb"
    (root / "train" / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "train" / "images" / "IMG_1.jpg")
    (root / "train" / "points.json").write_text(json.dumps({"IMG_1": [[3, 4]]}))
    with pytest.raises(ToolchainError, match="does not look like camvid.*found a ShanghaiTech"):
        build_dataset(make_cfg("camvid", root), "train", False)
    camvid = _tiny_camvid(tmp_path)
    with pytest.raises(ToolchainError, match="does not look like shanghaitech.*CamVid"):
        build_dataset(make_cfg("shanghaitech", camvid, input_size=[16, 16]), "train", False)


def test_counting_image_without_points_and_stray_classification_files(tmp_path):
    root = tmp_path / "shb"
    (root / "train" / "images").mkdir(parents=True)
    for name in ("IMG_1", "IMG_2"):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "train" / "images" / f"{name}.jpg")
    (root / "train" / "points.json").write_text(json.dumps({"IMG_1": [[3, 4]]}))
    with pytest.raises(ToolchainError, match=r"IMG_2\.jpg has no head points"):
        build_dataset(make_cfg("shanghaitech", root, input_size=[16, 16], val_fraction=0), "train", False)
    cls_root = tmp_path / "cls"
    for name in ("a", "b", "zebra"):
        (cls_root / "train" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(cls_root / "train" / name / "0.jpg")
    cfg = make_cfg("image_folder", cls_root, num_classes=2, class_names=["a", "b"], input_size=[8, 8])
    with pytest.raises(ToolchainError, match="zebra.*out of range"):
        build_dataset(cfg, "train", False)
    shutil.rmtree(cls_root / "train" / "zebra")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(cls_root / "train" / "loose.jpg")
    with pytest.raises(ToolchainError, match=r"loose\.jpg has no label"):
        build_dataset(cfg, "train", False)


# ---------------------------------------------------------------------------------------------
# acsl data check
def test_data_check_cli_reports_statistics_and_errors(tmp_path, capsys):
    from toolchain.cli import main

    root = _tiny_camvid(tmp_path, n=3)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"name": "t", "task": "segmentation", "model": {"name": "segnet"},
                                      "data": {"kind": "camvid", "root": "elsewhere", "input_size": [24, 32],
                                               "num_classes": 11, "ignore_index": 11}}))
    assert main(["data", "check", str(config), "--data", str(root), "--full",
                 "--json", str(tmp_path / "stats.json")]) == 0
    out = capsys.readouterr().out
    assert "train: 3 images, sizes 24x32 (3)" in out and "ok: no problems found" in out
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["splits"]["val"]["class_pixel_fraction"][3] == pytest.approx(0.5, abs=1e-3)
    assert stats["splits"]["val"]["ignored_pixel_fraction"] == pytest.approx(1 / (24 * 32), abs=1e-4)
    assert main(["data", "check", str(config), "--data", str(tmp_path / "missing")]) == 2
    assert "data folder not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# what training would choke on: malformed head points, labels of another size (issue 9)
def _tiny_shb(tmp_path: Path, entries: dict) -> Path:
    root = tmp_path / "shb"
    for split in ("train", "test"):
        (root / split / "images").mkdir(parents=True)
        for i in range(1, 4):
            Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(root / split / "images" / f"IMG_{i}.jpg")
        points = {"IMG_1": [[3, 4], [40.5, 30]], "IMG_2": [], "IMG_3": [[10, 10]]}
        if split == "train":
            points.update(entries)
        (root / split / "points.json").write_text(json.dumps(points))
    return root


BAD_POINTS = [  # entry -> what the one line must say
    ([[10, 20, 30, 40]], r"'IMG_2' point 0 is \[10, 20, 30, 40\] \(4 values\)"),  # not two heads
    (5, r"'IMG_2' is 5, not a list of \[x, y\] points"),
    ([[1, 2, 3]], r"'IMG_2' point 0 is \[1, 2, 3\] \(3 values\)"),
    ([["a", "b"]], r"'IMG_2' point 0 is \[\"a\", \"b\"\]; x and y must be numbers"),
    ([[1.0, float("nan")]], r"'IMG_2' point 0 .*NaN"),
    ([[1, 2], [3]], r"'IMG_2' point 1 is \[3\] \(1 values\)"),
    ([10, 20], r"'IMG_2' point 0 is 10 \(not a list\)"),
    ("IMG_2", r"'IMG_2' is \"IMG_2\", not a list"),
]


@pytest.mark.parametrize("entry,message", BAD_POINTS, ids=[str(e[0])[:20] for e in BAD_POINTS])
def test_malformed_points_rows_are_one_line_errors_in_loader_and_check(tmp_path, entry, message):
    root = _tiny_shb(tmp_path, {"IMG_2": entry})
    cfg = make_cfg("shanghaitech", root, input_size=[32, 48])
    for split in ("train", "val"):
        with pytest.raises(ToolchainError, match=message) as err:
            build_dataset(cfg, split, False)
        assert "\n" not in str(err.value) and "points.json" in str(err.value)
    from toolchain.data.check import DataProblems

    with pytest.raises(DataProblems) as err:
        check_dataset(cfg, full=True)
    assert len(err.value.problems) == 1 and re.search(message, err.value.problems[0])
    build_dataset(cfg, "test", False)  # the other split's annotations are fine


def test_well_formed_points_still_load(tmp_path):
    root = _tiny_shb(tmp_path, {"IMG_2": [[0, 0], [47.9, 31.9]]})
    cfg = make_cfg("shanghaitech", root, input_size=[32, 48], val_fraction=0)
    ds = build_dataset(cfg, "train", False)
    counts = {ds.sample_name(i): ds.count(i) for i in range(len(ds))}
    assert counts == {"IMG_1": 2, "IMG_2": 2, "IMG_3": 1}
    assert check_dataset(cfg)["splits"]["train"]["heads"]["total"] == 5


def test_data_check_lists_every_problem_one_line_each(tmp_path, capsys):
    """Three malformed entries and a point outside its image: four lines, exit 2, no traceback."""
    from toolchain.cli import main

    root = _tiny_shb(tmp_path, {"IMG_1": [[10, 20, 30, 40]], "IMG_2": 5, "IMG_3": [["a", "b"]]})
    pts = json.loads((root / "test" / "points.json").read_text())
    pts["IMG_3"] = [[200, 10]]  # outside the 48x32 image
    (root / "test" / "points.json").write_text(json.dumps(pts))
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"name": "t", "task": "counting", "model": {"name": "csrnet"},
                                      "data": {"kind": "shanghaitech", "root": str(root), "input_size": [32, 48]}}))
    assert main(["data", "check", str(config)]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if ": error: " in line]
    assert len(errors) == 4, captured.err
    assert any("'IMG_1' point 0 is [10, 20, 30, 40]" in e for e in errors)
    assert any("'IMG_2' is 5" in e for e in errors) and any("'IMG_3' point 0" in e for e in errors)
    assert any("IMG_3.jpg: 1 head points lie outside the 48x32 image" in e for e in errors)
    assert "Traceback" not in captured.err and "ok: no problems found" not in captured.out


def test_label_of_another_size_fails_check_and_loader(tmp_path, capsys):
    """A 12x16 label for a 24x32 image: `data check` (header mode too) names both files; the loader too."""
    from toolchain.cli import main

    root = _tiny_camvid(tmp_path, n=2)
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(root / "train" / "labels" / "train_1.png")
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(root / "test" / "labels" / "test_0.png")
    cfg = make_cfg("camvid", root, ignore_index=11)
    from toolchain.data.check import DataProblems

    with pytest.raises(DataProblems) as err:
        check_dataset(cfg)
    assert len(err.value.problems) == 2
    assert re.search(r"label .*train_1\.png is 12x16 but its image .*train_1\.jpg is 24x32", err.value.problems[0])
    ds = build_dataset(cfg, "train", False)
    index = [ds.sample_name(i) for i in range(len(ds))].index("train_1")
    with pytest.raises(ToolchainError, match=r"train_1\.png is 12x16 but its image is 24x32"):
        ds[index]
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"name": "t", "task": "segmentation", "model": {"name": "segnet"},
                                      "data": {"kind": "camvid", "root": str(root), "input_size": [24, 32],
                                               "num_classes": 11, "ignore_index": 11}}))
    assert main(["data", "check", str(config)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(errors) == 2 and all("12x16" in e for e in errors)
