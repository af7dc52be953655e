"""Which torch device to run on: the one resolver the trainer, evaluation and the worker share."""
from __future__ import annotations

import torch


def resolve_device(name: str | None = "auto") -> torch.device:
    """"auto" (or nothing): CUDA when torch sees a device, else the CPU. Asking for "cuda" on
    a machine without one is an error now, not a crash at the first tensor."""
    if not name or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name} was asked for, but torch sees no CUDA device")
    return torch.device(name)
