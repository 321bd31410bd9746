"""Where the code runs: the device, the distributed world, backend flags and the autocast dtype.

Training, evaluation, inference and the benchmark all ask this module, so a GPU run, a CPU run
and a torchrun run make the same choices everywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
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


@dataclass
class CpuChoices:
    """How a training step runs on the CPU where the choice changes speed, not what is computed
    (`make bench` measures each; `bench-train`'s 'old' setting puts back the earlier ones).

    `nan_fill`: deterministic mode fills every new tensor with NaN, so that a kernel reading
    memory it never wrote shows it; our kernels read only what they write (the same losses to
    the last digit either way), and the fill cost 3-8 % of a CPU step. `adamw`: 'fused' (one
    kernel over all parameters), 'foreach' or 'for-loop' (torch's default on the CPU).
    `channels_last`: NHWC images and conv weights on the CPU too (config key channels_last),
    which oneDNN's convolutions prefer."""

    nan_fill: bool = False
    adamw: str = "fused"
    channels_last: bool = True


CPU_CHOICES = CpuChoices()


@contextlib.contextmanager
def cpu_choices(**changes):
    """`CPU_CHOICES` with `changes` for the duration (bench-train's 'old' setting)."""
    saved = dataclasses.replace(CPU_CHOICES)
    for key, value in changes.items():
        setattr(CPU_CHOICES, key, value)
    try:
        yield CPU_CHOICES
    finally:
        for f in dataclasses.fields(CPU_CHOICES):
            setattr(CPU_CHOICES, f.name, getattr(saved, f.name))


def adamw_kernel(device: torch.device, sync_free_guard: bool) -> dict[str, bool]:
    """AdamW's implementation flags: fused on the GPU and for the sync-free guard (only the fused
    kernel skips a step on the device), else CPU_CHOICES.adamw."""
    if device.type == "cuda" or sync_free_guard or CPU_CHOICES.adamw == "fused":
        return {"fused": True}
    return {"foreach": True} if CPU_CHOICES.adamw == "foreach" else {"foreach": False}


def uses_channels_last(device: torch.device, enabled: bool) -> bool:
    """Whether the image backbone runs in channels_last (config key channels_last) on `device`."""
    return enabled and (device.type == "cuda" or CPU_CHOICES.channels_last)


def place_model(model: torch.nn.Module, device: torch.device | str, channels_last: bool) -> torch.nn.Module:
    """`model` on `device`, in channels_last where `uses_channels_last` says so: training, evaluation
    and a reloaded checkpoint run the same convolution kernels (and so give the same numbers)."""
    device = torch.device(device)
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if uses_channels_last(device, channels_last) else model


def set_backend_flags(device: torch.device, *, deterministic_cpu: bool = False) -> None:
    """TF32 matmuls and cuDNN autotuning on the GPU; on the CPU, optionally, deterministic
    kernels ("same seed, same config on CPU: the same losses, to the last digit"), without the
    NaN fill of new tensors unless CPU_CHOICES.nan_fill."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    elif deterministic_cpu:
        torch.use_deterministic_algorithms(True)
        torch.utils.deterministic.fill_uninitialized_memory = CPU_CHOICES.nan_fill


@dataclass
class GlobalFlags:
    """The process-wide torch settings a run changes (threads, deterministic mode, its NaN fill,
    anomaly detection), saved by `save()` and put back by `restore()`: train() and evaluation
    leave the caller's settings as they found them."""

    threads: int
    deterministic: bool
    fill_uninitialized: bool
    anomaly: bool

    @classmethod
    def save(cls) -> "GlobalFlags":
        return cls(torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                   torch.utils.deterministic.fill_uninitialized_memory, torch.is_anomaly_enabled())

    def restore(self) -> None:
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(self.deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = self.fill_uninitialized
        torch.autograd.set_detect_anomaly(self.anomaly)


# ---- CPU threads --------------------------------------------------------------------------------
def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_cpu_threads(device: torch.device, cpu_threads: int | None, num_workers: int) -> str:
    """Set the intra-op threads of this process for work on the CPU and say how many and why.

    Loader workers need cores too: OpenMP threads that wait on a descheduled sibling made the
    main process 3-4x slower on a busy 2-core machine. So the default is the cores this process
    has (those of the machine, shared by the processes torchrun starts on it) minus its
    `num_workers`, at least 1; `cpu_threads` (config key) or OMP_NUM_THREADS (read by torch at
    start) say otherwise. On a GPU the setting is left alone. Returns the words for the log."""
    if device.type != "cpu":
        return ""
    if cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
        return f"{cpu_threads} CPU thread(s), config key cpu_threads"
    if os.environ.get("OMP_NUM_THREADS"):
        return f"{torch.get_num_threads()} CPU thread(s), OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    cores = max(1, available_cores() // processes)
    threads = max(1, cores - num_workers)
    torch.set_num_threads(threads)
    return f"{threads} CPU thread(s): {cores} cores - {num_workers} loader workers, at least 1"


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


def start_distributed(gpu_id: str | int | None, log: Callable[[str], Any] = print,
                      backend: str = "auto") -> tuple[World, torch.device]:
    """torchrun sets WORLD_SIZE / RANK / LOCAL_RANK: one process per GPU (NCCL), gloo on the
    CPU. Outside torchrun: World() and pick_device(gpu_id).

    `backend` (config key dist_backend) 'gloo' on GPUs lets processes share them (local rank
    modulo the GPU count), which NCCL refuses ('Duplicate GPU detected'): a DDP check on a
    machine with one GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return World(), pick_device(gpu_id, log=log)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        if backend != "gloo" and local_rank >= gpus:
            raise ConfigError(f"config key 'dist_backend': torchrun started local rank {local_rank} on a machine with "
                              f"{gpus} GPU(s); NCCL needs one GPU per process (gloo lets processes share one)")
        device = torch.device(f"cuda:{local_rank % gpus}")
        torch.cuda.set_device(device)
        if backend == "gloo":
            dist.init_process_group("gloo")
        else:
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
