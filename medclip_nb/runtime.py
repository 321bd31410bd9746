"""Where the code runs: the device, the distributed world, backend flags and the autocast dtype.

Training, evaluation, inference and the benchmark all ask this module, so a GPU run, a CPU run
and a torchrun run make the same choices everywhere.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from medclip_nb.config_checks import DEVICE_PATTERN
from medclip_nb.errors import ConfigError


def pick_device(gpu_id: str | int | None = None, *, log: Callable[[str], Any] = print,
                what: str = "config key 'gpu_id'") -> torch.device:
    """cuda:<gpu_id> when CUDA is available, else the CPU (saying so once through `log`).

    `gpu_id` is the config key's value ("0", "cuda:1", 1); None or "" means the first GPU and
    "cpu" the CPU. One that names no device here is a one-line ConfigError naming `what`.
    """
    text = "" if gpu_id is None else str(gpu_id).strip()
    if not DEVICE_PATTERN.fullmatch(text):
        raise ConfigError(f"{what}: {gpu_id!r} is not a device (a CUDA index such as 0, cuda:1, or cpu)")
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        log("CUDA not available: running on CPU")
        return torch.device("cpu")
    index = text.removeprefix("cuda").removeprefix(":") or "0"
    if int(index) >= torch.cuda.device_count():
        raise ConfigError(f"{what}: {gpu_id!r} is not a CUDA device index "
                          f"(0..{torch.cuda.device_count() - 1}, or 'cpu')")
    return torch.device(f"cuda:{index}")


def set_backend_flags(device: torch.device, *, deterministic_cpu: bool = False) -> None:
    """TF32 matmuls and cuDNN autotuning on the GPU; on the CPU, optionally, deterministic
    kernels ("same seed, same config on CPU: the same losses, to the last digit")."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    elif deterministic_cpu:
        torch.use_deterministic_algorithms(True)


def amp_dtype(device: torch.device, use_amp: bool) -> torch.dtype | None:
    """The autocast dtype: bf16 where the GPU has it, else fp16; None (fp32) on the CPU or
    when AMP is off."""
    if device.type != "cuda" or not use_amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(dtype: torch.dtype | None):
    """A CUDA autocast context for `dtype` (from amp_dtype), or a no-op for fp32."""
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def precision_name(dtype: torch.dtype | None) -> str:
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Eval mode without gradients; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


# ---- distributed --------------------------------------------------------------------------------
@dataclass
class World:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor, op=None) -> torch.Tensor:
        """Sum (or `op`) over ranks in place; the tensor itself when not distributed."""
        if self.distributed:
            dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
        return tensor


def start_distributed(gpu_id: str | int | None, log: Callable[[str], Any] = print) -> tuple[World, torch.device]:
    """torchrun sets WORLD_SIZE / RANK / LOCAL_RANK: one process per GPU (NCCL), gloo on the
    CPU. Outside torchrun: World() and pick_device(gpu_id)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return World(), pick_device(gpu_id, log=log)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        if rank == 0:
            log("CUDA not available: training on CPU")
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return World(rank, world_size), device


def stop_distributed(world: World, *, finished: bool) -> None:
    """Tear the process group down. A rank that `finished` first waits at a barrier: without it
    a fast rank's gloo teardown raced a slow one's last collective (SIGABRT, 'terminate called
    without an active exception'). A failing rank skips the barrier, which would hang."""
    if world.distributed and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()
