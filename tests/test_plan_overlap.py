"""benchmarks/plan_overlap.py: the overlap of the channels two pruned models keep, against chance and the ceiling
their widths allow."""
import json
import random

import pytest
from conftest import load_benchmark

po = load_benchmark("plan_overlap")


def make_plan(kept: dict[str, list[int]], widths: dict[str, int], omit_whole: bool = False) -> dict:
    """A channel plan over conv layers `widths` keeping `kept`; each pruned layer is its own group's root."""
    layers, steps = {}, []
    for name, n in widths.items():
        keep = kept.get(name, list(range(n)))
        if omit_whole and len(keep) == n:
            continue  # as ModelOpt's plans do: a layer left whole is not named
        layers[name] = {"in": 3, "kept_in": [0, 1, 2], "out": n, "kept_out": sorted(keep)}
        removed = sorted(set(range(n)) - set(keep))
        if removed:
            steps.append({"root": name, "removed": removed})
    return {"format": "acsl-channel-plan/1", "input_size": [8, 8], "layers": layers, "steps": steps}


def test_jaccard_chance_and_ceiling_by_hand():
    roots = ["a", "b"]
    x = {"a": {0, 1, 2, 3}, "b": {0, 1}}
    y = {"a": {2, 3, 4, 5}, "b": {0, 1}}
    assert po.jaccard(x, x, roots) == 1.0
    assert po.jaccard(x, y, roots) == pytest.approx((2 + 2) / (6 + 2))
    assert po.jaccard({"a": {0}, "b": set()}, {"a": {1}, "b": set()}, roots) == 0.0
    # 8 channels, 4 kept by each at random: 2 shared on average, 6 in the union; group b: 2 of 4 each
    assert po.chance_jaccard(x, y, {"a": 8, "b": 4}, roots) == pytest.approx((2 + 1) / (6 + 3))
    # same widths: the widths allow full overlap; the narrower inside the wider reaches the ceiling exactly
    assert po.width_ceiling(x, y, roots) == 1.0
    narrow = {"a": {2, 3}, "b": {0}}
    assert po.width_ceiling(x, narrow, roots) == pytest.approx(3 / 6)
    assert po.jaccard(x, narrow, roots) == po.width_ceiling(x, narrow, roots)


def test_chance_is_what_random_selections_of_those_widths_overlap():
    rng = random.Random(0)
    widths = {"a": 16, "b": 8}
    size_x, size_y = {"a": 10, "b": 3}, {"a": 6, "b": 5}
    inter = union = 0
    for _ in range(4000):
        x = {r: set(rng.sample(range(n), size_x[r])) for r, n in widths.items()}
        y = {r: set(rng.sample(range(n), size_y[r])) for r, n in widths.items()}
        inter += sum(len(x[r] & y[r]) for r in widths)
        union += sum(len(x[r] | y[r]) for r in widths)
    x = {r: set(range(size_x[r])) for r in widths}
    y = {r: set(range(size_y[r])) for r in widths}
    assert po.chance_jaccard(x, y, widths, list(widths)) == pytest.approx(inter / union, abs=0.01)


def write_comparison(tmp_path, runs) -> str:
    records = []
    for method, seed, plan in runs:
        run_dir = tmp_path / "runs" / f"{method}_s{seed}"
        run_dir.mkdir(parents=True)
        if plan is not None:
            (run_dir / "plan.json").write_text(json.dumps(plan))
        records.append({"method": method, "seed": seed, "budget": {"kind": "params", "value": 0.5},
                        "run_dir": str(run_dir)})
    path = tmp_path / "comparison.json"
    path.write_text(json.dumps({"dataset": "toy", "model": "net", "dense": {"checkpoint_sha256": "ab"},
                                "runs": records}))
    return str(path)


def test_overlap_of_a_comparison_end_to_end(tmp_path, capsys):
    widths = {"c1": 8, "c2": 4}
    acsl0 = make_plan({"c1": [0, 1, 2, 3]}, widths)
    acsl1 = make_plan({"c1": [0, 1, 2, 4]}, widths)
    slim0 = make_plan({"c1": [0, 1, 2, 3], "c2": [0, 1]}, widths)
    slim1 = make_plan({"c1": [4, 5, 6, 7]}, widths, omit_whole=True)  # c2 whole: not named
    comparison = write_comparison(tmp_path, [
        ("acsl", 0, acsl0), ("acsl", 1, acsl1), ("slimming", 0, slim0), ("slimming", 1, slim1),
        # not compared: their channel indices do not name the dense model's channels
        ("scratch-plan", 0, None), ("modelopt-fastnas", 0, make_plan({"c1": [0]}, widths))])
    out = tmp_path / "out"
    assert po.main([comparison, "--results", str(out)]) == 0
    result = json.loads((out / "plan_overlap_toy_net.json").read_text())
    stats = result["budgets"]["params=0.5"]
    assert stats["methods"] == ["acsl", "slimming"]
    assert stats["groups"] == 2 and stats["channels"] == 12  # c1 and c2, each pruned by some plan
    pairs = stats["pairs"]
    # acsl seeds: c1 {0,1,2,3} vs {0,1,2,4}: 3 shared of 5; c2 whole in both: 4 of 4
    assert pairs["acsl|acsl"]["jaccard"] == pytest.approx(7 / 9, abs=1e-4)
    # slimming seeds: c1 disjoint, c2 {0,1} vs whole (seed 1's plan does not name it)
    assert pairs["slimming|slimming"]["jaccard"] == pytest.approx((0 + 2) / (8 + 4), abs=1e-4)
    # acsl vs slimming on the same seed: seed 0 (4+2)/(4+4), seed 1 (1+4)/(7+4); the mean
    assert pairs["acsl|slimming"]["n"] == 2
    assert pairs["acsl|slimming"]["jaccard"] == pytest.approx((6 / 8 + 5 / 11) / 2, abs=1e-4)
    assert "\n| acsl | 0.78 (" in (out / "plan_overlap_toy_net.md").read_text()  # acsl's row starts on its diagonal
    assert (out / "plan_overlap_toy_net.png").stat().st_size > 0
    assert result["dense_checkpoint_sha256"] == "ab"


def test_a_run_folder_not_on_this_machine_is_one_line(tmp_path, capsys):
    comparison = write_comparison(tmp_path, [("acsl", 0, None)])
    assert po.main([comparison, "--results", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("plan_overlap: ") and "plan.json is not on this machine" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exc:
        po.main([str(tmp_path / "nope.json")])
    assert exc.value.code == 2
    assert "is not a file" in capsys.readouterr().err
