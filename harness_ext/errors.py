"""Errors a user can cause. The CLI catches these once and prints one line; anything else is a bug."""

from __future__ import annotations


class HarnessExtError(Exception):
    """Base of every error a user can cause; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class SpecError(HarnessExtError):
    """The study spec (or a command-line argument) is invalid: a usage error."""

    exit_code = 2


class UnsupportedSchemeError(HarnessExtError):
    """A quantization scheme cannot run on the requested device or with this installation."""

    exit_code = 2


class ModelLoadError(HarnessExtError):
    """A model or tokenizer could not be found or loaded."""


class DataError(HarnessExtError):
    """A task's data file is missing, empty or malformed."""

    exit_code = 2


class StoreError(HarnessExtError):
    """The run directory cannot be read or written (permissions, disk full, newer format)."""
