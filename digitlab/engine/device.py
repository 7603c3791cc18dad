"""Where training runs: device choice, CPU threads, and torch DDP when launched by torchrun."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from digitlab.errors import DigitlabError


@dataclass
class Placement:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str = "auto") -> torch.device:
    """auto: cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DigitlabError("device 'cuda' requested but this torch has no CUDA device",
                            "use device=cpu, or install a CUDA build of torch on a GPU machine")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX512-BF16 or AMX); elsewhere bf16 is emulated, slower."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def setup(device: str = "auto", threads: int = 0) -> Placement:
    """Pick the device; under torchrun (WORLD_SIZE > 1) join the process group:
    nccl on GPUs (one per local rank), gloo on CPU."""
    if threads:
        torch.set_num_threads(threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Placement(pick_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Placement(dev, rank, world)


def teardown(placement: Placement) -> None:
    if placement.distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_float(value: float, placement: Placement) -> float:
    """Rank 0's value on every rank, so all ranks take the same early-stop/schedule decisions."""
    if not placement.distributed:
        return value
    backend_device = placement.device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([value], dtype=torch.float64, device=backend_device)
    dist.broadcast(t, src=0)
    return float(t.item())
