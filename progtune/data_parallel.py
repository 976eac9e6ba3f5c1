"""The rank context of a data-parallel run (torch.distributed only, no Ray): shares and DDP.

Every rank builds the whole global micro-batch and trains on its contiguous share of the rows;
DistributedDataParallel averages the gradients. One process (no process group) is rank 0 of 1,
and then nothing here wraps, splits or communicates.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from progtune.errors import ConfigError
from progtune.growth import layer_plan


@dataclass(frozen=True)
class Ranks:
    """This process's rank and the world size of its run."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Ranks:
        """From torch.distributed when a process group is initialised, else (0, 1)."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, batch_size: int) -> slice:
        """This rank's contiguous rows of a global micro-batch of `batch_size` sequences."""
        check_split(batch_size, self.world)
        per = batch_size // self.world
        return slice(self.rank * per, (self.rank + 1) * per)


def check_split(batch_size: int, world: int) -> None:
    """ConfigError unless `world` workers can split a micro-batch of `batch_size` sequences."""
    if batch_size % world:
        raise ConfigError(
            f"budget.batch_size: {batch_size} sequences do not split evenly over {world} "
            f"workers; make budget.batch_size a multiple of {world} or change the worker count"
        )


def local_cuda_index() -> int:
    """The GPU of this rank on its node: LOCAL_RANK (torchrun, Ray Train), else rank modulo."""
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    return Ranks.current().rank % max(1, torch.cuda.device_count())


def wrap_model(model: nn.Module, ranks: Ranks, device: torch.device) -> nn.Module:
    """The module to call for training: DDP around `model` when world > 1, else `model` itself.

    Call again after every growth: DDP registers the parameters it saw at construction.
    find_unused_parameters only where some depth the samplers can draw (k..L) would leave a
    unique block out of a pass: it costs an extra walk over the autograd graph every step, and
    the growth operators' layouts use every block at every such depth.
    No buffer sync before each forward: the models hold no running statistics, and every rank
    builds the same initial weights from the same seed (DDP broadcasts rank 0's at construction).
    """
    if ranks.world == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # torch 2.13 renamed broadcast_buffers (the device machine's 2.11 knows only the old name)
    new_name = "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
    no_buffer_sync = {"forward_sync_buffers" if new_name else "broadcast_buffers": False}
    unused = not _every_depth_uses_every_block(model)
    return ddp(model, device_ids=ids, find_unused_parameters=unused, **no_buffer_sync)


def _every_depth_uses_every_block(model: nn.Module) -> bool:
    """Whether each depth d in k..L lays all k unique blocks out (a ProgressiveLM's layout);
    False for any other module, which then gets DDP's search for unused parameters."""
    operator, k = getattr(model, "operator", None), len(getattr(model, "blocks", ()))
    m = getattr(model, "m", None)
    if operator is None or m is None or k == 0:
        return False
    every = set(range(k))
    return all(set(layer_plan(operator, k, d)) == every for d in range(k, m.n_layers + 1))


def sync_unless_last(trained: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """Gradients are all-reduced only on the last micro-batch of a step (DDP's no_sync)."""
    if last or not isinstance(trained, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return trained.no_sync()


def all_reduce_sum(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The element-wise sum of `tensor` over all ranks (in place; `tensor` itself at world 1)."""
    if ranks.world > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def agreed(decision: bool, ranks: Ranks, device: torch.device) -> bool:
    """Rank 0's `decision`, the same on every rank (the others' own values are ignored)."""
    if ranks.world == 1:
        return decision
    flag = torch.tensor([1 if decision else 0], dtype=torch.int32, device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


@contextlib.contextmanager
def process_group(rank: int, world: int, rendezvous: str, backend: str = "gloo") -> Iterator[Ranks]:
    """A process group of this machine's processes, destroyed on exit.

    `rendezvous`: a file path the ranks meet through (a FileStore: torch's TCP store would listen
    on every interface); gloo's own connections stay on the loopback device.
    """
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        backend, init_method=f"file://{rendezvous}", rank=rank, world_size=world
    )
    try:
        yield Ranks.current()
    finally:
        dist.destroy_process_group()
