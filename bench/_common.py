"""What the benchmark scripts share: the model options, thread pinning and a device sync."""

from __future__ import annotations

import argparse

import torch


def add_model_options(
    ap: argparse.ArgumentParser, quant: str = "fp32", threads: int | None = None, model_group: object = None
) -> None:
    """``--model``, ``--quant``, ``--device``, ``--threads``; ``--model`` goes into ``model_group``
    (e.g. a mutually exclusive group) when one is given."""
    where = model_group or ap
    where.add_argument("--model", default="smollm2-135m", help="pretrained model (hub id, folder, built-in)")
    ap.add_argument("--quant", default=quant, help="scheme (fp32, fp16, bf16, int8, nf4, fp4, ...)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=threads, help="torch threads (default: torch's own)")


def pin_threads(args: argparse.Namespace) -> None:
    """Set torch's thread count from ``--threads`` (the scripts print the count they ran with)."""
    if args.threads:
        torch.set_num_threads(args.threads)


def sync(device: str) -> None:
    """Wait for queued CUDA work before reading a clock; nothing to wait for on the CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
