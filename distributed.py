"""torchrun, in one room: joining the process group, running a block on the first process
first, adding up or averaging tensors over the processes, sharing BatchNorm statistics, and
stopping every process together, with one line, when one of them cannot go on.

    rank, world, device = distributed.setup(device)
    with distributed.together():    # a UserError on any process stops every process
        ...
    distributed.mean(losses)   # the mean over every process; the tensor itself without torchrun

In a plain `python train.py` run there is no process group and every function here is the
identity or does nothing, so the training loop, validation and the metrics that call them
read as single-process code. docs/multi-gpu.md says how a multi-GPU run is launched.
"""

from cli import Stopped, UserError, is_first_process

import contextlib
import datetime
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

# A collective that waits longer than this stops the run: a process that died or stalled
# (PyTorch's default, 30 minutes, looks like a hang).
TIMEOUT = datetime.timedelta(minutes=5)
# What the first process may do while the others wait (main_process_first): a download of the
# weights, a teacher cache built on a CPU.
LONG_WAIT = datetime.timedelta(hours=3)
_long_waits = None  # a gloo group with LONG_WAIT for those waits, made by setup


def launched() -> bool:
    """Whether torchrun started this process (it sets RANK, WORLD_SIZE and LOCAL_RANK)."""
    return "RANK" in os.environ


def setup(device: torch.device) -> tuple:
    """(rank, world size, device) of this process. Under torchrun each process joins the group
    (NCCL on CUDA where PyTorch has it, gloo otherwise: Windows, macOS, the CPU) and takes GPU
    LOCAL_RANK; plain python: (0, 1, device)."""
    global _long_waits
    if not launched():
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    nccl = device.type == "cuda" and dist.is_nccl_available()
    dist.init_process_group("nccl" if nccl else "gloo", timeout=TIMEOUT)
    _long_waits = dist.new_group(backend="gloo", timeout=LONG_WAIT)
    return dist.get_rank(), dist.get_world_size(), device


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """The process that prints, logs and saves: rank 0, or the only one."""
    return not dist.is_initialized() or dist.get_rank() == 0


@contextlib.contextmanager
def together() -> Iterator[None]:
    """Run the block on every process, then stop every process if it raised a UserError on
    any: the first process prints the first error (naming the process it came from), the
    others exit without a line. The block must make no collective call itself: a process that
    failed before it would leave the others waiting in it. A sync point."""
    error = None
    try:
        yield
    except UserError as e:
        if not dist.is_initialized():
            raise
        error = str(e)
    if not dist.is_initialized():
        return
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    failed = [(rank, text) for rank, text in enumerate(errors) if text is not None]
    if failed and is_main():
        rank, text = failed[0]
        raise UserError(text + (f" (process {rank})" if rank else ""))
    if failed:
        raise Stopped


def agree(what: str, value) -> None:
    """A UserError on every process unless every process has the same `value` (a picklable
    summary of what it is about to train on): processes that would take different numbers of
    steps would wait for each other forever. A sync point."""
    if not dist.is_initialized():
        return
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        seen = ", ".join(map(str, values))
        raise UserError(
            f"the processes of this torchrun run see different {what} ({seen}); give them the "
            "same data and flags"
        )


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Under torchrun, a process that fails leaves the others inside a collective call, which
    then fails (the peer is gone) or times out (TIMEOUT): that failure is one line from the
    first process, none from the others, not a traceback from each."""
    try:
        yield
    except (dist.DistError, RuntimeError) as e:
        if not launched() or not isinstance(e, dist.DistError) and not peer_failure(e):
            raise
        if not is_first_process():
            raise Stopped from None
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(
            "another process of this torchrun run stopped (its error is above) or stopped "
            f"answering: {first}"
        ) from None


def peer_failure(error: RuntimeError) -> bool:
    """Whether a RuntimeError is gloo's or NCCL's word that another process is gone or late."""
    text = str(error).lower()
    return any(s in text for s in ("connection closed", "connection reset", "timed out", "nccl"))


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on the first process, then on the others, so that a download or a cache
    build happens once, not once per process at the same time. A sync point, with LONG_WAIT."""
    waits = dist.is_initialized() and not is_main()
    if waits:
        dist.barrier(group=_long_waits)
    yield
    if dist.is_initialized() and not waits:
        dist.barrier(group=_long_waits)


def stop_if_not_finite(value: torch.Tensor, what: str) -> None:
    """A UserError on every process when `value` is NaN or infinite on any of them (they stop
    together, or the others would wait forever). A sync point: it reads the value."""
    if total((~torch.isfinite(value)).float()).item():
        became = "NaN or infinite in another process" if torch.isfinite(value) else value.item()
        raise UserError(
            f"{what} became {became}; stopping without saving this epoch. Try a lower --lr."
        )


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
