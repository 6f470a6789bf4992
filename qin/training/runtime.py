"""How training and scoring run: precision, the optimizer's implementation, compilation, threads, processes.

Nothing here changes what is computed, only how fast: bf16 autocast (the one exception: it rounds the
matmuls' inputs), a foreach (CPU) or fused (CUDA) Adam, optional `torch.compile`, and one process per device
under `torchrun` (DistributedDataParallel: gloo on CPU, nccl on CUDA); on CPU, memory freed by a training step
is kept for the next one (`reuse_freed_memory`).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import logging
import os
import platform
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")

# glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_MMAP_MAX, _DEFAULT_TRIM_THRESHOLD = 65536, 128 * 1024
_reuse_depth = 0


def _glibc() -> ctypes.CDLL | None:
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Keep memory freed by one training step for the next (glibc; elsewhere a no-op).

    glibc serves every allocation above 32 MB with its own mmap and returns it on free, so each step's
    activations (GBs at batch 8192) page-fault and are zeroed again: measured 10x slower elementwise ops on
    fresh memory and a third of a paper-size CPU step in the kernel. Inside this block large blocks come
    from the heap and freed ones stay there; the price is the heap's fragmentation, which raises the peak
    RSS (at batch 8192 it grows for tens of steps, to about 1.6x). Afterwards the defaults are restored and
    the heap is trimmed. Re-entrant: an inner block does nothing.
    """
    global _reuse_depth
    libc = _glibc()
    if libc is None or _reuse_depth:  # not glibc, or already inside such a block
        yield
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    _reuse_depth += 1
    try:
        yield
    finally:
        _reuse_depth -= 1
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run at several times the float32 rate (4x on the bench machine's
    AMD EPYC); other CPUs emulate them, slower than float32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for plain float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {list(PRECISIONS)}, found {precision!r}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        # native bf16 only (Ampere and later): a V100 or T4 emulates it, slower than fp32
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else None
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None


def precision_name(dtype: torch.dtype | None) -> str:
    return "fp32" if dtype is None else str(dtype).removeprefix("torch.").replace("bfloat16", "bf16")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision for a forward pass (a no-op for float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def adam(params: list[nn.Parameter], lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam as torch.optim.Adam computes it, with multi-tensor kernels: fused on CUDA, foreach on CPU."""
    if device.type == "cuda":
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr, foreach=True)


class ResourceMeter:
    """This process's resource use since it was made: CPU (100 = one core busy), peak RSS, peak GPU memory."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> dict[str, float]:
        wall = time.perf_counter() - self.wall0
        used = {
            "cpu_percent": 100.0 * (time.process_time() - self.cpu0) / wall if wall > 0 else 0.0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        }
        if self.device.type == "cuda":
            used["gpu_peak_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return used


def set_threads(threads: int) -> None:
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


class SyncDebug:
    """torch.cuda.set_sync_debug_mode(`mode`) inside the block, on CUDA (elsewhere nothing happens): "error"
    raises at any operation that makes the host wait for the GPU (`.item()`, `nonzero`, a blocking copy),
    "warn" warns, "off" does nothing. `lifted()` restores the mode found on entry for a while: a checkpoint
    reads values on purpose."""

    def __init__(self, mode: str, device: torch.device) -> None:
        self.mode = mode if device.type == "cuda" and mode != "off" else None
        self.found: int = 0

    def __enter__(self) -> SyncDebug:
        if self.mode:
            self.found = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode(self.mode)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.mode:
            torch.cuda.set_sync_debug_mode(self.found)

    @contextlib.contextmanager
    def lifted(self) -> Iterator[None]:
        if not self.mode:
            yield
            return
        torch.cuda.set_sync_debug_mode(self.found)
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(self.mode)


class CompileError(RuntimeError):
    pass


def compiled(module: nn.Module) -> nn.Module:
    """`torch.compile(module)`; compilation happens at the first call, see `first_call`."""
    if not hasattr(torch, "compile"):
        raise CompileError("train.compile: this PyTorch has no torch.compile; set compile: false")
    return torch.compile(module)  # type: ignore[return-value]


@contextlib.contextmanager
def compile_errors(enabled: bool) -> Iterator[None]:
    """Turn a failed compilation (no C++ compiler, an unsupported op) into one clear error."""
    if not enabled:
        yield
        return
    try:
        yield
    except Exception as exc:
        if type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
            text = str(exc).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            raise CompileError(
                f"train.compile: torch.compile failed on this machine ({type(exc).__name__}: {first}); "
                "set compile: false in params.yaml (train) to train without it"
            ) from exc
        raise


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes (one when not started by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    started_group: bool = False  # this module initialised the process group (and tears it down)

    @property
    def main(self) -> bool:
        return self.rank == 0


def start_processes(device_name: str) -> tuple[Processes, str]:
    """Join the torchrun process group when there is one; return it and the device name to use.

    torchrun sets WORLD_SIZE, RANK and LOCAL_RANK (and MASTER_ADDR/PORT). On CUDA each process takes the
    GPU of its local rank and the backend is nccl; on CPU it is gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes(), device_name
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
    started = not dist.is_initialized()
    if started:
        backend = "nccl" if cuda else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    procs = Processes(rank=rank, world=world, local_rank=local_rank, started_group=started)
    return procs, (f"cuda:{local_rank}" if cuda else "cpu")


def stop_processes(procs: Processes, failed: bool = False) -> None:
    """Leave the process group this module started. After a success every process waits for the others
    (a barrier) and tears the group down. After a failure it does neither: its peers may be inside a
    collective (an all-reduce of the gradients) that a barrier would never meet, so it leaves at once and
    exits non-zero, and torchrun, seeing a worker fail, stops the other workers and fails the job."""
    if procs.started_group and not failed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
