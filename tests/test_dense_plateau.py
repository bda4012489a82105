"""benchmarks/dense.py plateau rule of the comparison protocol: best val gain over the last 20% of the epochs < 0.3,
in the metric's direction, shown in the curve PNG and the results table."""
import pytest
from conftest import load_benchmark

dense = load_benchmark("dense")


def _hist(values, metric="miou"):
    return [{"epoch": i + 1, "loss": 1.0, "val": {metric: v}} for i, v in enumerate(values)]


def test_still_rising_curve_is_not_a_plateau():
    p = dense.plateau_check(_hist([10, 20, 30, 35, 38, 40, 41, 42, 43, 45]), "miou", True)
    assert p["window_start_epoch"] == 9 and p["epochs"] == 10
    assert p["best_before"] == 42 and p["best"] == 45
    assert p["gain"] == pytest.approx(3.0) and not p["plateau"]


def test_flat_tail_is_a_plateau_and_a_dip_counts_as_no_gain():
    assert dense.plateau_check(_hist([10, 20, 30, 40, 41, 41.5, 41.6, 41.7, 41.8, 41.9]), "miou", True)["plateau"]
    p = dense.plateau_check(_hist([10, 20, 30, 40, 41, 42, 42.5, 43, 41, 40]), "miou", True)
    assert p["gain"] == 0 and p["plateau"]


def test_lower_is_better_for_mae():
    falling = dense.plateau_check(_hist([90, 60, 40, 30, 28, 27, 26.5, 26.2, 25.0, 24.0], "mae"), "mae", False)
    assert falling["gain"] == pytest.approx(2.2) and not falling["plateau"]
    flat = dense.plateau_check(_hist([90, 60, 40, 30, 28, 27, 26.5, 26.2, 26.1, 26.3], "mae"), "mae", False)
    assert flat["gain"] == pytest.approx(0.1) and flat["plateau"]


def test_window_is_at_least_one_epoch_and_needs_earlier_epochs():
    assert dense.plateau_check(_hist([1, 2, 3]), "miou", True)["window_start_epoch"] == 3
    with pytest.raises(ValueError, match="at least 2 epochs"):
        dense.plateau_check(_hist([1]), "miou", True)


def test_curve_png_shows_the_window(tmp_path):
    hist = _hist([10, 20, 30, 35, 38, 40, 41, 42, 43, 45])
    p = dense.plateau_check(hist, "miou", True)
    dense.plot_curve(hist, "miou", "syn", tmp_path / "c.png", p)
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_redraw_recomputes_every_result(tmp_path, monkeypatch):
    import json

    monkeypatch.setattr(dense, "RESULTS", tmp_path)
    hist = _hist([10, 20, 30, 35, 38, 40, 41, 42, 43, 45])
    rec = {"dataset": "syn", "model": "segnet", "width": 0.25, "input_size": [32, 32], "params": 1000, "macs": 10**9,
           "metric": "miou", "higher_is_better": True, "val": 45.0, "test": 40.0, "epochs": 10,
           "train_images_per_s": 10.0, "wall_s": 60.0, "history": hist}
    (tmp_path / "dense_syn_segnet.json").write_text(json.dumps(rec))
    assert dense.main(["--redraw"]) == 0
    stored = json.loads((tmp_path / "dense_syn_segnet.json").read_text())
    assert stored["plateau"]["gain"] == pytest.approx(3.0) and stored["plateau"]["plateau"] is False
    assert (tmp_path / "dense_syn_segnet.png").stat().st_size > 1000
    assert "| +3.00 (no; val std 1.41) |" in (tmp_path / "README.md").read_text()
    with pytest.raises(SystemExit):
        dense.main([])


def test_table_compares_each_run_with_the_next_shorter_schedule(tmp_path, monkeypatch):
    """A longer schedule that only adds noise shows as no gain (MAE: lower is better, gains are signed so that
    positive means the longer run is better); runs of another model are not compared."""
    import json

    monkeypatch.setattr(dense, "RESULTS", tmp_path)

    def rec(epochs, vals, test, model="csrnet"):
        return {"dataset": "syn", "model": model, "width": 0.125, "input_size": [32, 32], "params": 1000,
                "macs": 10**9, "metric": "mae", "higher_is_better": False, "val": min(vals), "test": test,
                "epochs": epochs, "train_images_per_s": 10.0, "wall_s": 60.0, "history": _hist(vals, "mae")}
    runs = {"a": rec(5, [50, 40, 30, 26, 24], 22.0), "b": rec(10, [50, 40, 30, 26, 24, 25, 23, 26, 27, 25], 23.0),
            "c": rec(20, [50] * 19 + [10], 5.0, model="other")}
    for name, r in runs.items():
        (tmp_path / f"dense_{name}.json").write_text(json.dumps(r))
    assert dense.main(["--redraw"]) == 0
    table = (tmp_path / "README.md").read_text()
    # best val 24 -> 23 (+1.00), last-20% mean 24 -> 26 (-2.00), test 22 -> 23 (-1.00)
    assert "| syn | csrnet (width 0.125) | mae | 5 -> 10 | +1.00 | -2.00 | -1.00 |" in table
    assert "-> 20 |" not in table
    # a second 5-epoch run (a retrain elsewhere): each is compared with the longer run, and the rows say which
    (tmp_path / "dense_syn_csrnet_rerun.json").write_text(json.dumps(rec(5, [50, 40, 30, 26, 23.5], 21.0)))
    assert dense.main(["--redraw"]) == 0
    table = (tmp_path / "README.md").read_text()
    assert "| mae | 5 (dense_a) -> 10 (dense_b) | +1.00 | -2.00 | -1.00 |" in table  # not named dense_syn_csrnet_*
    assert "| mae | 5 (rerun) -> 10 (dense_b) | +0.50 |" in table
    assert "5 -> 10" not in table


def test_dense_result_records_the_checkpoint_sha256_and_a_rerun_reproduces_it(tmp_path, monkeypatch):
    """The dense JSON names its checkpoint by sha256, so a retrain can be checked against the committed result;
    the same command run twice on one machine trains byte-identical checkpoints."""
    import hashlib
    import json

    import yaml

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "tiny_seg", "task": "segmentation", "model": {"name": "segnet", "width": 0.125},
        "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": 3, "max_images": 8},
        "train": {"epochs": 2, "batch_size": 4, "optimizer": "adamw", "lr": 0.01, "seed": 0, "threads": 1},
        "profiles": {"quick": {}}}))
    shas = []
    for name in ("first", "second"):
        monkeypatch.setattr(dense, "REPO", tmp_path / name)
        monkeypatch.setattr(dense, "RESULTS", tmp_path / name / "results")
        assert dense.main([str(cfg), "--label", "t"]) == 0
        result = json.loads((tmp_path / name / "results" / "dense_synthetic_segnet_t.json").read_text())
        checkpoint = tmp_path / name / result["checkpoint"]
        assert result["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
        shas.append(result["checkpoint_sha256"])
    assert shas[0] == shas[1]
