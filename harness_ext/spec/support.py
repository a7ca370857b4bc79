"""What a device can run: a resolved scheme against a device type and generation modes, by the kernel
table of :mod:`harness_ext.formats`, and whether its library is installed. Torch-free (libraries are
looked up, not imported), so ``validate`` refuses in one line what would otherwise fail mid-run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from harness_ext.errors import UnsupportedSchemeError
from harness_ext.formats import KERNELS, LIBRARIES, default_kernel
from harness_ext.spec.schemes import Scheme


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def refusal(scheme: Scheme, device: str | None, modes: Iterable[str] = ()) -> str | None:
    """Why ``scheme`` (resolved) cannot run on ``device`` (``cpu``/``cuda``; None: not known yet) in
    ``modes``, in one line naming the fix; None when it can."""
    backend = scheme.library
    if backend == "none":
        return None
    name = f"scheme {scheme.name!r}"
    library = LIBRARIES[backend]
    if not _installed(library.module):
        return f"{name} needs {backend}: {library.install}"
    kernel_name = scheme.kernel or default_kernel(backend, scheme.quant) or backend
    kernel = KERNELS[(backend, scheme.quant)][kernel_name]
    what = f"{backend} {scheme.quant} kernel {kernel_name}" if backend != "bitsandbytes" else backend
    if kernel.needs and not _installed(kernel.needs):
        return f"{name}: {what} needs {kernel.needs}: pip install {kernel.needs}"
    if device is not None and device not in kernel.devices:
        hint = f"; {kernel.instead}" if kernel.instead else ""
        return f"{name}: {what} runs on {' and '.join(kernel.devices)} only, not {device}{hint}"
    if device is not None and "compiled" in modes and device not in kernel.compiles_on:
        return f"{name}: " + (kernel.no_compile or f"{what} does not compile on {device}; use mode eager")
    if kernel.dtype and scheme.dtype and scheme.dtype != kernel.dtype:
        return f"{name}: {what} computes in {kernel.dtype}, not {scheme.dtype}; set dtype: {kernel.dtype}"
    if kernel.axis is not None and scheme.axis is not None and scheme.axis != kernel.axis:
        return f"{name}: {what} needs axis: {kernel.axis}, not {scheme.axis}"
    return None


def check_schemes(schemes: Iterable[Scheme], device: str | None, modes: Iterable[str] = ()) -> None:
    """Raise :class:`UnsupportedSchemeError` for the first scheme (resolved) that cannot run."""
    modes = tuple(modes)
    for scheme in schemes:
        why = refusal(scheme, device, modes)
        if why:
            raise UnsupportedSchemeError(why)
