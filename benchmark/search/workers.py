"""Local `--workers`: what each worker process gets of this machine's cores and GPUs.

Unshared, K workers would each start one compute thread per core, K x cores threads
fighting for the cores, and each would let PyTorch's caching allocator hold whatever GPU
memory it once used, until a worker sharing the GPU runs out. So each worker gets
cores / K threads, and where several share a GPU, an equal part of its memory.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from benchmark.schema import GPU_MEMORY_SHARE_ENV, WORKER_ENV

# Read by OpenMP and MKL as each child starts, before torch's own setting (see apply_share).
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Of a shared GPU, what the workers' allocators may hold together: each process's CUDA
# context (some 500 MiB) lies outside the allocator's limit.
SHARED_GPU_MEMORY = 0.95


@dataclass(frozen=True)
class WorkerShare:
    threads: int
    gpu: str | None  # CUDA_VISIBLE_DEVICES for the worker; None: inherited (one GPU or none)
    memory_fraction: float | None  # of its GPU, for PyTorch's allocator; None: all of it

    def environment(self) -> dict[str, str]:
        env = {name: str(self.threads) for name in THREAD_ENV_VARS}
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        if self.memory_fraction is not None:
            env[GPU_MEMORY_SHARE_ENV] = f"{self.memory_fraction:.4f}"
        return env


def worker_shares(count: int, cores: int, gpus: list[str]) -> list[WorkerShare]:
    """Each of `count` workers' share: cores // count threads (at least one), and round-robin
    one of `gpus` (the visible ones) where there are several; workers that share a GPU split
    SHARED_GPU_MEMORY of it equally. With no GPU listed the fraction goes unused."""
    several = len(gpus) > 1
    assigned = [gpus[index % len(gpus)] if several else None for index in range(count)]
    sharing = Counter(assigned)
    threads = max(1, cores // count)
    return [WorkerShare(threads, gpu, SHARED_GPU_MEMORY / sharing[gpu] if sharing[gpu] > 1 else None)
            for gpu in assigned]


def oversubscription(count: int, cores: int, gpus: list[str]) -> str | None:
    """A line for the user where `count` workers with no GPU outnumber the cores (None
    otherwise): each then gets one thread, and the workers take turns on the cores, with K
    copies of the model and data in memory. Where GPUs train, the cores only feed them."""
    if gpus or count <= cores:
        return None
    return (f"--workers {count}: more workers than the {cores} core(s) this process may use, and no GPU: "
            f"each gets one thread and they take turns on the cores; --workers {cores} makes better use of them "
            "(docs/scaling.md#many-workers-and-machines)")


def usable_cores() -> int:
    """The cores this process may run on (an affinity mask or a container's CPU set), else all."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def apply_share(environ: dict[str, str] | os._Environ = os.environ) -> None:
    """In a worker: take the threads and the GPU memory its parent gave it (a no-op in a
    process started otherwise). Before any CUDA allocation: the limit binds the allocator."""
    import torch

    if WORKER_ENV not in environ:
        return
    threads = environ.get(THREAD_ENV_VARS[0])
    if threads:
        torch.set_num_threads(int(threads))
    fraction = environ.get(GPU_MEMORY_SHARE_ENV)
    if fraction and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(float(fraction))


@contextmanager
def taken(share: WorkerShare) -> Iterator[None]:
    """Within the block, this process trains as a worker of `share`: the first of `--workers`,
    which prepared the run itself. Its threads and GPU memory are restored on leaving (for
    the tables, and for a caller that goes on)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(share.threads)
    on_gpu = share.memory_fraction is not None and torch.cuda.is_available()
    if on_gpu:
        fraction = torch.cuda.get_per_process_memory_fraction()
        torch.cuda.set_per_process_memory_fraction(share.memory_fraction)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if on_gpu:
            torch.cuda.set_per_process_memory_fraction(fraction)
