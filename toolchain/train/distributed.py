"""DistributedDataParallel helpers: `torchrun --nproc_per_node=N acsl train ...` works as is.

gloo on CPU, NCCL on GPU. Ranks read their shard of the data; metrics are reduced by summing
their additive states across ranks; only rank 0 writes files and shows progress.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group torchrun set up (WORLD_SIZE > 1). Returns whether distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if world_size() == 1:
        return t
    dev = device() if dist.get_backend() == "nccl" else torch.device("cpu")
    buf = t.to(dev, dtype=torch.float64)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.cpu()


def reduce_metric(metric) -> None:
    metric.load_state(all_reduce_sum(metric.state()))


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


class EpochSampler(torch.utils.data.Sampler):
    """Deterministic per-epoch shuffle (seed + epoch), sharded over ranks without padding.

    Reproducible across resume: the order of epoch e depends only on (seed, e).
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int = 0):
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        return order[rank()::world_size()]

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        return len(range(rank(), self.n, world_size()))


def shutdown() -> None:
    """Leave the process group (after training, rank 0 carries on alone)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
