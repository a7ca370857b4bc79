"""The model backend: ``hf-quant`` for lm-eval (importing this package registers it), model loading,
per-row sampling and generation, the exact next-token probe, the speed benchmark and its clocks.

Importing it imports torch, transformers and lm-eval: only code that runs models imports it (the spec,
the store, the analysis and the report do not). Modules:

- :mod:`~harness_ext.backend.lm` — :class:`HFQuantLM`, the lm-eval adapter and its registration
- :mod:`~harness_ext.backend.loading` — :func:`load_model`, :class:`LoadInfo`
- :mod:`~harness_ext.backend.sources` / :mod:`~harness_ext.backend.shapes` — where weights come from
  (hub, folder, GGUF conversion cache) / shape-only models with random weights
- :mod:`~harness_ext.backend.generation`, :mod:`~harness_ext.backend.kvcache` — row generation
- :mod:`~harness_ext.backend.sampler` — the per-row, batch-invariant sampler
- :mod:`~harness_ext.backend.probe` — the exact next-token probe's maths
- :mod:`~harness_ext.backend.speed`, :mod:`~harness_ext.backend.measure` — the benchmark, clocks and peaks
"""

from harness_ext.backend import probe, speed
from harness_ext.backend.generation import RowResult, RowStops, check_mode
from harness_ext.backend.kvcache import kv_bytes_per_token
from harness_ext.backend.lm import GeneratedText, HFQuantLM
from harness_ext.backend.loading import LoadInfo, load_model, scheme_from_args
from harness_ext.backend.measure import GenerateStats, Summary, measure_copy_bandwidth
from harness_ext.backend.sampler import Row, RowSampler, row_key
from harness_ext.backend.shapes import shape_model_args

__all__ = [
    "GenerateStats",
    "GeneratedText",
    "HFQuantLM",
    "LoadInfo",
    "Row",
    "RowResult",
    "RowSampler",
    "RowStops",
    "Summary",
    "check_mode",
    "kv_bytes_per_token",
    "load_model",
    "measure_copy_bandwidth",
    "probe",
    "row_key",
    "scheme_from_args",
    "shape_model_args",
    "speed",
]
