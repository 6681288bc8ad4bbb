"""torchrun, in one room: joining the process group, running a block on the first process
first, adding up or averaging tensors over the processes, sharing BatchNorm statistics.

    rank, world, device = distributed.setup(device)
    distributed.mean(losses)   # the mean over every process; the tensor itself without torchrun

In a plain `python train.py` run there is no process group and every function here is the
identity or does nothing, so the training loop, validation and the metrics that call them
read as single-process code. docs/multi-gpu.md says how a multi-GPU run is launched.
"""

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn


def launched() -> bool:
    """Whether torchrun started this process (it sets RANK, WORLD_SIZE and LOCAL_RANK)."""
    return "RANK" in os.environ


def first_launched() -> bool:
    """Whether this process is torchrun's rank 0, or the only one; readable before setup."""
    return os.environ.get("RANK", "0") == "0"


def setup(device: torch.device) -> tuple:
    """(rank, world size, device) of this process. Under torchrun each process joins the group
    (NCCL on CUDA, gloo on CPU) and takes GPU LOCAL_RANK; plain python: (0, 1, device)."""
    if not launched():
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """The process that prints, logs and saves: rank 0, or the only one."""
    return not dist.is_initialized() or dist.get_rank() == 0


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on the first process, then on the others, so that a download or a cache
    build happens once, not once per process at the same time. A sync point."""
    waits = dist.is_initialized() and not is_main()
    if waits:
        dist.barrier()
    yield
    if dist.is_initialized() and not waits:
        dist.barrier()


def total(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor summed over every process, in place (and returned). A sync point."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def mean(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor averaged over every process, in place (and returned): what one process
    holding every batch would compute, the batches being the same size. A sync point."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


def share_buffers(module: nn.Module) -> None:
    """Every process takes rank 0's buffers (BatchNorm statistics): each updated its own in
    its last training step, and DDP syncs them only at the start of the next forward."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)
