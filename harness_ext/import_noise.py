"""Import-time warnings of libraries that transformers imports whenever they are installed — torchao's
CUDA-only kernels failing to load on a CPU build, torch's deprecation notice for the Enum pytree
constants torchao registers — say nothing about a run: they are kept out of the terminal (the CLI
shows them with ``-v``). Imported first by the speed rounds' forkserver, whose imports print before
any logging is configured."""

from __future__ import annotations

import logging

NOISY = ("torchao", "torch.utils._pytree", "hqq")


def quiet() -> None:
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.ERROR)


quiet()
