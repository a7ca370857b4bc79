"""Imported by the forkserver of CPU speed rounds (:mod:`harness_ext.run.isolated`): bitsandbytes,
with what its CPU backend logs on import (a hub kernel that failed to load) kept for the machine
fingerprint instead of printed into the runner's progress bar. Not preloaded on CUDA: importing
bitsandbytes there initialises CUDA, which a forked process could not use again."""

from harness_ext import fingerprint

fingerprint.import_bitsandbytes()
