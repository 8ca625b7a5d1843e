"""Multi-process helpers for runs launched by `torchrun` (one node or many): who am I, and the three
collectives the pipelines need (gather Python objects, sum numbers, wait for each other).

Everything here degrades to a no-op in a single process, so pipelines call these unconditionally. Rank and
world size come from torchrun's environment (RANK / WORLD_SIZE / LOCAL_RANK), which is valid before any
process group exists, so a pipeline can decide what rank 0 alone does before the Trainer sets one up.
"""

from __future__ import annotations

import atexit
import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that need it: the pipelines import this module first thing, and a
# run that fails its preflight (unwritable output, unreachable tracking server) should fail before torch loads.


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    """True when collectives are needed and possible: several processes and a process group."""
    if world_size() <= 1:
        return False
    import torch.distributed as dist

    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def setup(use_cuda: bool, timeout_minutes: int = 60) -> bool:
    """Join the process group torchrun describes (for pipelines without a Trainer, e.g. baseline).

    No-op in a single process or when something (Trainer, DeepSpeed) already joined. NCCL on GPUs, gloo on
    CPU. The group is destroyed at exit (a local operation, no waiting on other ranks). Returns whether this
    call created it.
    """
    import torch
    import torch.distributed as dist

    if world_size() <= 1 or dist.is_initialized():
        return False
    if use_cuda:
        torch.cuda.set_device(local_rank())  # before NCCL's first collective picks a device
    # A long timeout: a rank that finishes its shard early waits at the gather for the slowest one.
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timedelta(minutes=timeout_minutes))
    atexit.register(teardown)
    return True


def teardown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _device() -> torch.device:
    import torch
    import torch.distributed as dist

    # NCCL only moves CUDA tensors; gloo only CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum of `values` over all ranks (every rank gets the sums)."""
    if not active():
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order, on every rank; `[obj]` in a single process."""
    if not active():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(items: list[Any]) -> list[Any]:
    """This rank's share, round robin: shares differ in length by at most one, and rank r's i-th item is
    items[r + i * world], so the gathered rows can be put back in the original order."""
    return items[rank():: world_size()] if world_size() > 1 else list(items)


def single_process_rendezvous() -> None:
    """A single process still needs a rendezvous for DeepSpeed; torchrun sets these when it launches us."""
    if "RANK" in os.environ:
        return
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
