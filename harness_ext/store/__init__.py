"""The run directory and its records: the contract between running and reporting (docs/RECORDS.md).

- :mod:`~harness_ext.store.record`: :class:`Record` (format version 1) and its JSON form;
- :mod:`~harness_ext.store.parts`: the record's typed parts (metric value, generation row, ...);
- :mod:`~harness_ext.store.files`: :class:`RunStore` (atomic writes, the writer lock, artifacts),
  :class:`MemoryStore` (a remote worker's) and the :class:`Store` protocol both satisfy;
- :mod:`~harness_ext.store.tables`: the ONE schema of each tidy table, its rows and files;
- :mod:`~harness_ext.store.reading`: bounded reads (regular files only, size and depth limits);
- :mod:`~harness_ext.store.run_info`: the types a reader may rely on in run.json and invocations.

Importing the store imports neither torch nor the backend: a run directory is read without a model.
"""

from harness_ext.store.files import HOLDER_FILE, LOCK_FILE, MemoryStore, RunStore, Store, atomic_write
from harness_ext.store.parts import (
    MEASUREMENTS,
    EvalMeasurements,
    EvaluationCall,
    Generation,
    GridPoint,
    Load,
    Measurements,
    MetricValue,
    Part,
    PointMetricValue,
    PointResult,
    ProbeMeasurements,
    ReferenceMetrics,
    SampleMetrics,
    SpeedMeasurements,
    SpeedSummary,
)
from harness_ext.store.reading import UnreadableFile, read_json, read_regular
from harness_ext.store.record import RECORD_VERSION, Record, definition_hash, dumps, now, record_dict, timing_family

__all__ = [
    "HOLDER_FILE",
    "LOCK_FILE",
    "MEASUREMENTS",
    "RECORD_VERSION",
    "EvalMeasurements",
    "EvaluationCall",
    "Generation",
    "GridPoint",
    "Load",
    "Measurements",
    "MemoryStore",
    "MetricValue",
    "Part",
    "PointMetricValue",
    "PointResult",
    "ProbeMeasurements",
    "Record",
    "ReferenceMetrics",
    "RunStore",
    "SampleMetrics",
    "SpeedMeasurements",
    "SpeedSummary",
    "Store",
    "UnreadableFile",
    "atomic_write",
    "definition_hash",
    "dumps",
    "now",
    "read_json",
    "read_regular",
    "record_dict",
    "timing_family",
]
