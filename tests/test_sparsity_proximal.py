"""The decoupled proximal sparsity step (issue 12, docs/SPARSITY.md) and the prune diagnostic."""
import json

import pytest
import torch
import torch.nn as nn

from conftest import REPO
from prune_nets import TinyResCat
from toolchain.config import SparsityConfig, load_config, validate_config
from toolchain.errors import ToolchainError
from toolchain.prune.diagnostics import dead_channels, gamma_stats, prunable_gammas, slim_diagnostic, write_gamma_histogram
from toolchain.prune.groups import build_pruning_graph
from toolchain.prune.sparsity import SlimmingRegulariser, make_regulariser, soft_threshold


def test_soft_threshold_is_the_l1_proximal_operator():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.5])
    out = soft_threshold(x, 0.5)
    assert torch.equal(out, torch.tensor([-1.5, 0.0, 0.0, 0.0, 1.0]))
    per_channel = soft_threshold(x, torch.tensor([3.0, 0.1, 0.1, 0.1, 0.5]))
    assert torch.allclose(per_channel, torch.tensor([0.0, -0.4, 0.0, 0.2, 1.0]))


def test_mode_is_validated():
    with pytest.raises(Exception, match="mode"):
        SparsityConfig(mode="prox")
    model = TinyResCat(8)
    graph = build_pruning_graph(model, (16, 16))
    with pytest.raises(ToolchainError, match="prune.sparsity.mode"):
        SlimmingRegulariser(graph, 1.0, mode="prox")
    assert SparsityConfig().mode == "proximal"
    assert make_regulariser("acsl", graph, SparsityConfig()).mode == "proximal"
    assert make_regulariser("depgraph", graph, SparsityConfig()).mode == "group-norm"


class GradedSlimming(SlimmingRegulariser):
    """Slimming with per-channel strengths graded over each layer: lam x linspace(lo, hi, C)."""

    def __init__(self, graph, lam, mode, lo, hi):
        super().__init__(graph, lam, mode=mode)
        self.graded = {n: lam * torch.linspace(lo, hi, bn.weight.numel()) for n, bn in self.bns.items()}

    def strengths(self):
        return self.graded


def _setup(mode, lo=1.5, hi=6.0):
    torch.manual_seed(0)
    model = TinyResCat(8)
    graph = build_pruning_graph(model, (16, 16))
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            nn.init.ones_(bn.weight)
    return model, GradedSlimming(graph, 1.0, mode, lo, hi)


def _optimizer(name, model):
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=0.01)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=1e-4)
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_larger_strength_reaches_zero_first(optimizer):
    """Real task loss + proximal step: in every layer the channel with the largest lambda_c hits exactly 0 first
    (strictly before the smallest), and zero-times fall as lambda_c grows."""
    model, reg = _setup("proximal")
    opt = _optimizer(optimizer, model)
    torch.manual_seed(1)
    x = torch.randn(8, 3, 16, 16)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    steps = 50
    first_zero = {n: torch.full((bn.weight.numel(),), float(steps + 1)) for n, bn in reg.bns.items()}
    model.train()
    for step in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        reg.after_backward(model, step)
        opt.step()
        reg.after_step(model, step, opt.param_groups[0]["lr"])
        for n, bn in reg.bns.items():
            hit = (bn.weight.detach() == 0) & (first_zero[n] > steps)
            first_zero[n][hit] = step
    times, strengths = [], []
    for n, t in first_zero.items():
        assert t[-1] <= steps, f"{n}: the strongest channel never reached zero"
        assert t[-1] < t[0], f"{n}: strongest channel at {t[-1]}, weakest at {t[0]}"
        times.append(t)
        strengths.append(reg.graded[n])
    t, s = torch.cat(times), torch.cat(strengths)
    rank = lambda v: v.argsort().argsort().float()  # noqa: E731
    spearman = torch.corrcoef(torch.stack([rank(t), rank(s)]))[0, 1]
    assert spearman < -0.7, f"zero-time should fall with lambda_c (Spearman {spearman:.2f})"
    assert reg.steps == steps and reg.lr_sum == pytest.approx(steps * opt.param_groups[0]["lr"])


@pytest.mark.parametrize("mode", ["subgradient", "proximal"])
def test_adam_normalises_the_subgradient_but_not_the_proximal_step(mode):
    """With only the penalty acting, Adam moves every gamma by lr per step under the subgradient whatever its
    lambda_c (4x apart here), never to an exact zero; the proximal step moves each by lr x lambda_c."""
    model, reg = _setup(mode, lo=0.5, hi=2.0)
    opt = torch.optim.Adam([bn.weight for bn in reg.bns.values()], lr=0.01)
    for step in range(30):
        opt.zero_grad()
        for bn in reg.bns.values():
            bn.weight.grad = torch.zeros_like(bn.weight)
        reg.after_backward(model, step)
        opt.step()
        reg.after_step(model, step, 0.01)
    for n, bn in reg.bns.items():
        moved = 1 - bn.weight.detach()
        if mode == "subgradient":
            assert torch.allclose(moved, torch.full_like(moved, 0.3), atol=1e-3)  # 30 x lr, lambda_c washed out
        else:
            assert torch.allclose(moved, 30 * 0.01 * reg.graded[n], atol=1e-4)


def _lr_sum(cfg, steps_per_epoch: int) -> float:
    """sum of lr_t over cfg's sparsity phase (fit()'s warm-up + schedule)."""
    from toolchain.train.trainer import make_schedule

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.prune.sparsity.lr or cfg.train.lr)
    total = cfg.prune.sparsity.epochs * steps_per_epoch
    schedule, out = make_schedule(opt, cfg, total, steps_per_epoch), 0.0
    for _ in range(total):
        out += opt.param_groups[0]["lr"]
        opt.step()
        schedule.step()
    return out


def _quick_profile_config(tmp_path, mode):
    """CamVid's quick-profile sparsity schedule (optimizer, lr, warm-up, schedule, epochs, steps per epoch) on a
    tiny synthetic SegNet at 32x32 (two images per step instead of eight), lam sized so that lam x sum(lr_t) = 1.2:
    enough to zero the fresh gammas (1.0) of channels the loss does not hold."""
    quick = load_config(REPO / "configs" / "camvid_segnet.yaml", profile="quick")
    steps_per_epoch = -(-367 // quick.train.batch_size)  # CamVid's 367 training images
    t, s = quick.train, quick.prune.sparsity
    lam = 1.2 / _lr_sum(quick, steps_per_epoch)
    return validate_config({
        "name": "tiny_quick", "task": "segmentation", "model": {"name": "segnet", "width": 0.125},
        "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": 3, "max_images": 2 * steps_per_epoch},
        "train": {"batch_size": 2, "optimizer": t.optimizer, "lr": t.lr, "weight_decay": t.weight_decay,
                  "warmup_epochs": t.warmup_epochs, "schedule": t.schedule, "seed": 0, "eval_every": s.epochs},
        "prune": {"sparsity": {**s.model_dump(), "mode": mode, "lam": lam}},
        "out_dir": str(tmp_path / "runs")}), steps_per_epoch * s.epochs


@pytest.mark.slow
def test_quick_profile_schedule_reaches_exact_zeros_only_with_the_proximal_step(tmp_path):
    """ACSL through fit()'s hooks (toolchain.prune.pipeline.sparsity_stage) for the length of CamVid's quick
    profile: the proximal step leaves exact zeros (gamma and beta), the subgradient at the same lam none."""
    from toolchain.models import build_from_config
    from toolchain.prune.methods import get_method
    from toolchain.prune.pipeline import sparsity_stage

    fractions = {}
    for mode in ("proximal", "subgradient"):
        cfg, steps = _quick_profile_config(tmp_path / mode, mode)
        torch.manual_seed(0)
        model, record = sparsity_stage(cfg, build_from_config(cfg), get_method("acsl"), "0" * 64)
        assert record["strengths"]["steps"] == steps and record["strengths"]["mode"] == mode
        fractions[mode] = gamma_stats(prunable_gammas(model, cfg.data.input_size))["frac_exact_zero"]
        if mode == "proximal":  # a zeroed channel outputs exactly 0: its beta is zero too
            bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
            assert all(torch.all(bn.bias[bn.weight == 0] == 0) for bn in bns)
    assert fractions["proximal"] >= 0.05, fractions
    assert fractions["subgradient"] == 0.0, fractions


def test_gamma_stats_and_histogram(tmp_path):
    gammas = {"a": torch.tensor([0.0, 0.0, 0.005, 1.0]), "b": torch.tensor([2.0, 0.01, 0.0])}
    stats = gamma_stats(gammas)
    assert stats["n"] == 7 and stats["exact_zeros"] == 3 and stats["max_abs"] == 2.0
    assert stats["frac_exact_zero"] == pytest.approx(3 / 7, abs=1e-6)
    assert stats["frac_below_rel"] == pytest.approx(5 / 7, abs=1e-6)  # < 0.02: three zeros, 0.005, 0.01
    assert stats["per_layer"]["a"] == {"n": 4, "exact_zeros": 2, "below_rel": 3, "max_abs": 1.0}
    path = write_gamma_histogram(gammas, tmp_path / "gamma_hist.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    diag = slim_diagnostic(stats, metric="mae", higher_is_better=False, val_dense=20.0, val_after_sparsity=25.0,
                           val_after_slim=30.0, sparsity={"mode": "proximal", "lam": 1.0})
    assert diag["slim"] == {"loss": 5.0, "loss_rel": 0.2}  # lower is better: 25 -> 30 lost 5
    dense_only = slim_diagnostic(stats, metric="miou", higher_is_better=True, val_dense=60.0, val_after_sparsity=None,
                                 val_after_slim=45.0)
    assert dense_only["slim"]["loss"] == 15.0 and dense_only["gammas_after"].startswith("dense")


def test_prune_record_has_the_diagnostic(tiny_seg_config, tmp_path, capsys):
    from toolchain.config import load_config as load
    from toolchain.models import build_from_config
    from toolchain.prune.pipeline import run_prune
    from toolchain.train.checkpoint import save_checkpoint

    cfg = load(tiny_seg_config, overrides={"prune": {"sparsity": {"epochs": 1, "lam": 5.0},
                                                     "recover": {"epochs": 1}, "min_channels": 1}})
    torch.manual_seed(0)
    dense = build_from_config(cfg)
    save_checkpoint(tmp_path / "dense.pt", dense, cfg, stage="dense")
    record = run_prune(cfg, tmp_path / "dense.pt", method="slimming", budget="params=0.5", out=tmp_path / "run",
                       evaluate_test=False)
    d = record["diagnostic"]
    assert d["sparsity_mode"] == "proximal" and d["gammas_after"] == "sparsity"
    assert d["val_after_slim"] == record["stages"]["slim"]["val"]
    assert d["val_after_recovery"] == record["val"]
    assert 0 <= d["gammas"]["frac_exact_zero"] <= d["gammas"]["frac_below_rel"] <= 1
    assert (tmp_path / "run" / d["histogram"]).is_file()
    on_disk = json.loads((tmp_path / "run" / "prune_record.json").read_text())
    assert on_disk["diagnostic"]["val_after_recovery"] == d["val_after_recovery"]
    assert "after slimming, before recovery" in capsys.readouterr().out


def test_dead_channels_a_budget_leaves_in_the_slim_model(tiny_seg_config, tmp_path, capsys):
    """Channels with gamma = beta = 0 output nothing; a budget smaller than the zeroed share keeps some of them, and
    the diagnostic counts them (only gamma and beta both zero is dead: beta alone still feeds a constant forward)."""
    from toolchain.config import load_config as load
    from toolchain.models import build_from_config
    from toolchain.prune.pipeline import run_prune
    from toolchain.train.checkpoint import save_checkpoint

    model = TinyResCat(8)
    graph = build_pruning_graph(model, (16, 16))
    first = graph.module(graph.bn_names()[0])
    with torch.no_grad():
        first.bias.fill_(0.5)
        first.weight[:3] = 0
        first.bias[:2] = 0   # channel 2: gamma 0, beta 0.5: alive
    assert dead_channels(model, (16, 16)) == {"channels": sum(graph.module(n).weight.numel() for n in graph.bn_names()),
                                              "dead": 2}
    cfg = load(tiny_seg_config, overrides={"prune": {"sparsity": {"epochs": 0}, "recover": {"epochs": 0},
                                                     "min_channels": 1}})
    torch.manual_seed(0)
    dense = build_from_config(cfg)
    names = prunable_gammas(dense, cfg.data.input_size)
    graph = build_pruning_graph(dense, tuple(cfg.data.input_size))
    zeroed = 0
    with torch.no_grad():
        for name in names:
            bn = graph.module(name)
            half = bn.weight.numel() // 2
            bn.weight[:half] = 0
            bn.bias[:half] = 0
            zeroed += half
    save_checkpoint(tmp_path / "dense.pt", dense, cfg, stage="dense")
    record = run_prune(cfg, tmp_path / "dense.pt", method="slimming", budget="params=0.1", out=tmp_path / "run",
                       evaluate_test=False)
    dead = record["diagnostic"]["dead_kept"]
    assert 0 < dead["dead"] < zeroed and dead["channels"] < sum(v.numel() for v in names.values())
    assert record["diagnostic"]["slim"]["loss"] == pytest.approx(0, abs=1e-6)  # what slimming removed was dead too
    assert f"{dead['dead']} of the slim model's {dead['channels']} channels are dead" in capsys.readouterr().out


def test_zeroing_every_gamma_is_a_one_line_error():
    from toolchain.prune.sparsity import SparsityDiverged

    model = TinyResCat(8)
    reg = SlimmingRegulariser(build_pruning_graph(model, (16, 16)), 1e30)
    with pytest.raises(SparsityDiverged, match=r"zeroed every prunable gamma.*lower prune\.sparsity\.lam \(now 1e\+30\)"):
        reg.after_step(model, 3, 0.01)


def test_compression_rows_carry_seed_and_diagnostic(tmp_path):
    """benchmarks/compression.py: seeds key the rows (old rows count as seed 0), folders of seed 0 keep their
    names, and the table shows the gamma and slimming diagnostic."""
    from conftest import load_benchmark

    bench = load_benchmark("compression")
    cfg = validate_config({"name": "x", "task": "segmentation", "model": {"name": "segnet", "width": 0.125},
                           "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": 3}})
    seeded = bench.with_seed(cfg, 2)
    assert (seeded.train.seed, seeded.prune.seed) == (2, 2) and bench.with_seed(cfg, 0) is cfg
    assert bench.seed_suffix(0) == "" and bench.seed_suffix(2) == "_s2"
    dense = {"checkpoint": "d.pt", "params": 100, "macs": 1000, "metric": 50.0}
    row = {"method": "acsl", "budget": {"kind": "params", "value": 0.5}, "params": 50, "macs": 500, "metric": 45.0,
           "metric_val": 46.0, "recover": "finetune", "wall_s": 3.0, "gammas_frac_exact_zero": 0.25,
           "gammas_frac_below_1pct": 0.375, "val_after_slim": 44.5}
    mine = {"model": "segnet", "profile": None, "dense": dense, "runs": [row]}  # a row from before seeds: seed 0
    other = {"model": "segnet", "profile": None, "dense": dense, "runs": [dict(row, seed=0, metric=1.0),
                                                                          dict(row, seed=1, metric=44.0)]}
    bench.merge_results(mine, other, "o.json")
    assert sorted((bench.row_seed(r), r["metric"]) for r in mine["runs"]) == [(0, 45.0), (1, 44.0)]
    result = dict(mine, dataset="x", metric="miou", higher_is_better=True, command="c", machine="m", git_commit="g")
    bench.write_table(result, tmp_path / "t.md")
    table = (tmp_path / "t.md").read_text()
    assert "| acsl | params=0.5 | 1 | 50 |" in table and "25.0% / 37.5% | 44.500 |" in table


def test_keep_floor_spares_the_channels_selection_keeps():
    """keep_floor: the max(min_channels, min_fraction x C) largest gammas of each layer are never shrunk, so even a
    huge lambda cannot zero a layer whole; without it the same step zeroes everything (a one-line error)."""
    from toolchain.config import PruneConfig
    from toolchain.prune.sparsity import SparsityDiverged, selection_floor

    torch.manual_seed(0)
    model = TinyResCat(8)
    graph = build_pruning_graph(model, (16, 16))
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.weight.data = torch.rand(bn.weight.numel()) + 0.1
    prune = PruneConfig(min_channels=2, min_fraction=0.1)
    floor = selection_floor(graph, prune.min_channels, prune.min_fraction)
    assert floor and all(k == 2 for k in floor.values())
    before = {n: graph.module(n).weight.detach().clone() for n in graph.bn_names()}
    reg = make_regulariser("slimming", graph, SparsityConfig(lam=50.0), prune_cfg=prune)
    reg.after_step(model, 0, 0.01)  # threshold 0.5 on gammas in [0.1, 1.1]
    for name, old in before.items():
        new = graph.module(name).weight.detach()
        top = old.abs().topk(2).indices
        rest = torch.ones_like(old, dtype=torch.bool)
        rest[top] = False
        assert torch.equal(new[top], old[top])
        assert torch.allclose(new[rest], (old[rest] - 0.5).clamp(min=0))
    with pytest.raises(SparsityDiverged, match="nothing is left to rank"):
        make_regulariser("slimming", graph, SparsityConfig(lam=1e3), prune_cfg=prune).after_step(model, 1, 0.01)
    off = make_regulariser("slimming", graph, SparsityConfig(lam=1e3, keep_floor=False), prune_cfg=prune)
    with pytest.raises(SparsityDiverged, match="no longer depends on its input"):
        off.after_step(model, 2, 0.01)


def test_pair_step_zeroes_gamma_and_beta_together_so_removal_is_lossless():
    """with_beta: (gamma, beta) scaled by max(1 - t / ||(gamma, beta)||, 0); a channel with gamma 0 but beta 2 is not
    zeroed by a threshold below 2, and a zeroed pair contributes nothing: the layer's output equals the output with
    that channel's weights removed."""
    from toolchain.prune.sparsity import shrink_pair

    gamma = torch.tensor([3.0, 0.0, 0.3, 1.0])
    beta = torch.tensor([4.0, 2.0, 0.4, 0.0])
    shrink_pair(gamma, beta, torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert torch.allclose(gamma, torch.tensor([2.4, 0.0, 0.0, 1.0])) and torch.allclose(beta, torch.tensor([3.2, 1.0, 0.0, 0.0]))
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)).eval()
    with torch.no_grad():
        block[1].weight.copy_(torch.tensor([1.0, 0.0, 1.0, 1.0]))
        block[1].bias.copy_(torch.tensor([0.5, 0.7, -0.2, 0.1]))  # channel 1: gamma 0, beta 0.7
        x = torch.randn(2, 3, 8, 8)
        gamma_only = block(x)
        block[3].weight[:, 1] = 0  # removing channel 1 (its weights in the next conv)
        assert not torch.allclose(block(x), gamma_only)  # gamma 0 alone: the channel still fed beta forward
        block[3].weight.copy_(torch.randn_like(block[3].weight))
        shrink_pair(block[1].weight, block[1].bias, torch.tensor([0.0, 1.0, 0.0, 0.0]))
        kept = block(x)
        block[3].weight[:, 1] = 0
        assert torch.equal(block(x), kept)


def test_proximal_sparsity_table_summarises_seeds(tmp_path):
    from conftest import load_benchmark

    bench = load_benchmark("proximal_sparsity")
    row = {"method": "acsl", "mode": "proximal", "lam": 1.0, "keep_floor": True, "with_beta": True, "shrink_budget": 0.6,
           "frac_exact_zero": 0.1, "frac_below_1pct_of_max": 0.2, "layers_all_zero": 0, "median_abs_gamma": 0.5,
           "val_dense": 60.0, "val_after_sparsity": 80.0, "val_after_slim": 70.0, "slim_loss": 10.0,
           "val_after_recovery": 78.0, "wall_s": 1.0}
    result = {"exp": "t", "profile": None, "budget": "params=0.5", "metric": "miou", "higher_is_better": True,
              "dense_val": 60.0, "machine": "m", "git_commit": "g", "command": "c1", "commands": ["c0", "c1"],
              "runs": [dict(row, seed=0), dict(row, seed=1, val_after_recovery=82.0, frac_exact_zero=0.3)]}
    bench.write_table(result, tmp_path / "t.md")
    text = (tmp_path / "t.md").read_text()
    assert "| acsl | proximal (gamma, beta) | 1 | 2 | 20.0 +- 14.1 | 80.0 +- 0.0 | 70.0 +- 0.0 | 10.0 +- 0.0 | 80.0 +- 2.8 |" in text
    assert "Command: `c0`" in text and "Command: `c1`" in text
