"""Data-parallel training under torchrun: one process per rank, each with its shard of every batch.

``torchrun --nproc-per-node N -m rethink run ...`` starts N processes with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT set. Every rank loads and randomizes the data identically
(from the run's seed) and walks the same global batches; each takes every N-th example of a batch
(``batch[rank::N]``) and DistributedDataParallel (gloo on CPU, nccl on GPU) sums the gradients, so a
step is the single-process step on the same global batch up to float rounding. Rank 0 alone
writes the store and checkpoints. Without torchrun (WORLD_SIZE unset or 1) :class:`Shard` is the
identity and single-process runs take exactly the code path they always took.

Batch norm keeps per-rank statistics (plain DDP, as in the paper's multi-replica ImageNet
training); dropout draws its own masks on every rank.
"""

from __future__ import annotations

import atexit
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .errors import UserError


def world_size() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 outside torchrun): rank 0 alone writes the store and checkpoints."""
    return int(os.environ.get("RANK", "0"))


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group (once per process) and return this rank's device: CUDA runs
    use the GPU of their local rank. Outside torchrun, ``device`` as it is."""
    if world_size() == 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy)
    return device


def leave() -> None:
    """After a command succeeded on this rank: wait for every rank, then leave the process group.
    A rank that leaves while a peer is still finishing can abort that peer (gloo's threads see the
    connection close), failing a run that had finished."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _destroy() -> None:  # at exit after an error: no barrier, the other ranks may never reach it
    if dist.is_initialized():
        dist.destroy_process_group()


def check_batches(n: int, batch_size: int) -> None:
    """Under torchrun, every global batch (the last one too) needs one example per rank."""
    smallest = min(batch_size, n % batch_size or batch_size)
    if smallest < world_size():
        raise UserError(
            f"{n} training examples in batches of {batch_size} leave a batch of {smallest} for "
            f"{world_size()} processes; every batch needs one example per process, change "
            "--batch-size or --train-size"
        )


@dataclass(frozen=True)
class Shard:
    """This process's part of data-parallel training (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    world: int = 1

    @staticmethod
    def current() -> Shard:
        if dist.is_available() and dist.is_initialized():
            return Shard(dist.get_rank(), dist.get_world_size())
        return Shard()

    def take(self, batch):
        """This rank's examples of a global batch: every ``world``-th, starting at ``rank``."""
        return batch if self.world == 1 else batch[self.rank :: self.world]

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module to train: DistributedDataParallel around ``model`` under torchrun."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, global_count: int) -> torch.Tensor:
        """The mean cross-entropy over the global batch of ``global_count`` examples, as this rank's
        share: DDP averages gradients over ranks, so each rank's summed loss is scaled by
        world / global_count (exact also when the shards differ in size)."""
        if self.world == 1:
            return F.cross_entropy(logits, y)
        return F.cross_entropy(logits, y, reduction="sum") * (self.world / global_count)

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of ``t`` over ranks (each rank's scaled step losses -> the global batch's loss)."""
        if self.world == 1:
            return t
        t = t.clone()
        dist.all_reduce(t)
        return t / self.world

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over ranks."""
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank (so that all ranks stop together)."""
        return math.isfinite(float(self.mean(loss.detach().reshape(1))))

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (batch-norm statistics), e.g. before a sharded evaluation."""
        for b in model.buffers() if self.world > 1 else ():
            dist.broadcast(b, src=0)
